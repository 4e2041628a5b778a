"""ASE interoperability: batchmd models as ASE calculators, lists of ``ase.Atoms`` in and out.

- :class:`Calculator`: any batchmd model (``model(batch) -> {"energy", "forces"[, "stress"]}``)
  as an ``ase.calculators.calculator.Calculator``, usable with ASE's optimizers and MD.
- :class:`AtomsDataset`: an in-memory list of ``ase.Atoms`` as a dataset for
  :class:`~batchmd.dynamics.SizeAwareSampler` (inflight batching over your structures).
- :func:`run_frames` / :func:`relax`: run dynamics stages over a list of ``ase.Atoms`` with
  inflight batching and get a list of ``ase.Atoms`` back, in input order, each carrying its
  results: energy (eV), forces (eV/Å), stress (eV/Å^3) as a single-point calculator, and
  ``system_id``, ``input_index``, ``status``, ``converged``, ``n_steps``, ``fmax`` and
  ``fmax_atoms`` (eV/Å) in ``atoms.info``.

``fmax`` is the value the convergence test compares with its threshold, as ASE's optimizers
log it: the largest force-row norm of what is optimised, so with a cell filter
(``FrechetCellFilter``, ``--cell full``) the filter's N + 3 rows, cell rows included.
``fmax_atoms`` is the largest atomic force norm, ``max |atoms.get_forces()|`` (ASE's
constraints applied: fixed atoms count zero); without a cell filter the two are equal.

Files: :func:`read_structures` reads files, folders and globs as the command line does (each
frame with ``source_file``/``source_index``), and :func:`write_frames` writes results as
every batchmd output does (info made portable, so ``ase.io.read`` gives back the same keys
as the CLI's files; plain ``ase.io.write`` fails on, e.g., a multi-line info string).
Both live in :mod:`batchmd.data` (:mod:`~batchmd.data.inputs`, :mod:`~batchmd.data.info_io`).

The reverse direction (an ASE calculator as a batchmd model) is
:class:`batchmd.models.ase_calculator.ASECalculatorModel`.

Example
-------
>>> import torch
>>> from ase.build import bulk
>>> from batchmd.ase import Calculator, relax
>>> from batchmd.models.lj import LennardJones
>>> model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
>>> atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
>>> atoms.calc = Calculator(model)
>>> round(atoms.get_potential_energy(), 4)
-0.3412
>>> frames = [bulk("Ar", "fcc", a=5.3, cubic=True).repeat((1, 1, n)) for n in (1, 2)]
>>> [a.info["converged"] for a in relax(frames, model, fmax=0.01)]
[True, True]
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator as _ASECalculator
from ase.calculators.calculator import all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from batchmd.ase_checks import (_check_species_up_front, _refuse_slot_tensors, check_frames, frame_problems,
                                frame_targets)
from batchmd.ase_results import DERIVED_KEYS, RESULT_KEYS, _loop_keys, results_to_atoms
from batchmd.data import AtomicData, Batch
from batchmd.data.info_io import write_frames
from batchmd.data.inputs import read_structures

__all__ = ["DERIVED_KEYS", "RESULT_KEYS", "Calculator", "AtomsDataset", "InflightResult", "check_frames", "frame_problems",
           "frame_targets", "results_to_atoms", "run_frames", "relax", "default_max_atoms", "read_structures",
           "write_frames"]


class Calculator(_ASECalculator):
    """A batchmd model as an ASE calculator (energy, forces, and stress where the model gives it).

    Parameters
    ----------
    model : callable
        A batchmd model, ``model(batch) -> {"energy" [B,1] eV, "forces" [N,3] eV/Å,
        "stress" [B,3,3] eV/Å^3 (optional)}``.
    dtype : torch.dtype
        Floating dtype of the evaluation (default float64, as ASE computes).
    device : str or torch.device
        Where the model runs ("cpu", "cuda", ...).
    **kwargs
        Passed to ``ase.calculators.calculator.Calculator`` (e.g. ``label``).

    Notes
    -----
    Each evaluation converts one ``Atoms`` to a one-system :class:`~batchmd.data.Batch`
    (neighbor lists are rebuilt every call): convenient for ASE workflows, but for many
    structures run them together with :func:`relax` / :func:`run_frames` instead.
    Stress is reported for cells with non-zero volume when ``model.computes_stress``.

    Example
    -------
    >>> from ase.build import bulk
    >>> from ase.optimize import FIRE
    >>> from batchmd.models.lj import LennardJones
    >>> atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    >>> atoms.calc = Calculator(LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125))
    >>> FIRE(atoms, logfile=None).run(fmax=0.01)
    True
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model, dtype: torch.dtype = torch.float64, device="cpu", **kwargs) -> None:
        super().__init__(**kwargs)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"batchmd.ase.Calculator: dtype must be torch.float32 or torch.float64, got {dtype}")
        self.model = model
        self.dtype = dtype
        self.device = torch.device(device)
        props = ["energy", "free_energy", "forces"]
        if getattr(model, "computes_stress", False):
            props.append("stress")
        self.implemented_properties = props

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        """Evaluate the model on ``atoms`` and store energy, forces and (if available) stress."""
        super().calculate(atoms, properties, system_changes)
        if len(self.atoms) == 0:
            raise ValueError("batchmd.ase.Calculator: the Atoms object has no atoms")
        batch = Batch.from_ase([self.atoms], dtype=self.dtype, device=self.device)
        with torch.no_grad():
            out = self.model(batch)
        energy = float(out["energy"].reshape(-1)[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"].detach().to("cpu", torch.float64).numpy().copy(),
        }
        stress = out.get("stress")
        if stress is not None and self.atoms.cell.rank == 3:
            full = stress.detach().to("cpu", torch.float64).reshape(3, 3).numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(full)


class AtomsDataset:
    """A list of ``ase.Atoms`` as a dataset for :class:`~batchmd.dynamics.SizeAwareSampler`.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The structures (not modified). Info keys owned by the dynamics loop (``status``,
        ``n_steps``, ``converged``, ...) are dropped, so results can be run again.
    dtype : torch.dtype
        Floating dtype of the samples.
    edge_cutoff : float, optional
        Cutoff (Å) of the model's edge list; when given, :meth:`get_metadata` reports a cheap
        estimate of each frame's full-list edge count
        (``batchmd.dynamics.sampler.estimate_num_edges``), so
        ``SizeAwareSampler(max_edges=...)`` can bound MLIP memory. Default: 0 edges.
    ignore_constraints : bool
        Drop ASE constraints other than ``FixAtoms`` instead of refusing the frame
        (``FixAtoms`` is always carried, as the atom field ``fixed``).
    temperature, pressure : sequence of float, optional
        Per-frame targets (K; eV/Å^3), one per frame, NaN for "none": set as the sample's
        system fields ``target_temperature`` / ``target_pressure``, replacing the frame's
        ``info["temperature_K"]`` / ``info["pressure_GPa"]`` (see :func:`frame_targets`).

    Notes
    -----
    Each sample carries an int64 system property ``input_index`` (its position in
    ``frames``, or ``input_indices[i]`` when given: e.g. the frame's position in the
    original file when resuming a run over some of its frames) and, stamped by the
    sampler, ``system_id`` = :meth:`identity`; numeric ``atoms.info`` entries become system properties and other info
    entries travel in ``data.info``.

    Example
    -------
    >>> from ase.build import molecule
    >>> dataset = AtomsDataset([molecule("H2O"), molecule("CH4")])
    >>> len(dataset), dataset.get_metadata(1)
    (2, (5, 0))
    """

    def __init__(self, frames: Sequence[Atoms], dtype: torch.dtype = torch.float64,
                 edge_cutoff: float | None = None, ignore_constraints: bool = False, input_indices=None,
                 temperature=None, pressure=None) -> None:
        self.frames = list(frames)
        self.targets = {}
        for field, values in (("target_temperature", temperature), ("target_pressure", pressure)):
            if values is not None:
                values = np.asarray(values, dtype=np.float64).reshape(-1)
                if values.shape != (len(self.frames),):
                    raise ValueError(f"AtomsDataset: {values.size} values of {field} for {len(self.frames)} frames")
                self.targets[field] = values
        self.dtype = dtype
        self.ignore_constraints = bool(ignore_constraints)
        self.edge_cutoff = None if edge_cutoff is None else float(edge_cutoff)
        self.input_indices = list(range(len(self.frames))) if input_indices is None else [int(i) for i in input_indices]
        if len(self.input_indices) != len(self.frames):
            raise ValueError(f"AtomsDataset: {len(self.input_indices)} input_indices for {len(self.frames)} frames")
        ids = [a.info.get("system_id") for a in self.frames]
        usable = all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids)
        self._ids = [int(i) for i in ids] if usable and len(set(ids)) == len(ids) else None

    def identity(self, index: int) -> int:
        """The frame's stable identity (its ``system_id``, which keys its random streams).

        ``atoms.info["system_id"]`` when every frame carries a distinct integer one (e.g.
        results of an earlier run fed back, or ids the user assigned to keep streams fixed
        when reordering a file); otherwise the frame's input index (``input_indices[index]``,
        by default its index in ``frames``).
        """
        return self._ids[index] if self._ids is not None else self.input_indices[index]

    def __len__(self) -> int:
        return len(self.frames)

    def get_metadata(self, index: int) -> tuple[int, int]:
        """``(num_atoms, num_edges)`` of frame ``index`` (no conversion; edges estimated, see ``edge_cutoff``)."""
        atoms = self.frames[index]
        if self.edge_cutoff is None:
            return len(atoms), 0
        from batchmd.dynamics.sampler import estimate_num_edges

        volume = atoms.get_volume() if atoms.pbc.all() and atoms.cell.rank == 3 else None
        return len(atoms), estimate_num_edges(len(atoms), self.edge_cutoff, volume=volume)

    def __getitem__(self, index: int) -> tuple[AtomicData, dict]:
        atoms = self.frames[index].copy()  # drops any calculator
        for key in _loop_keys(atoms.info):
            del atoms.info[key]
        try:
            data = AtomicData.from_ase(atoms, dtype=self.dtype, ignore_constraints=self.ignore_constraints)
        except ValueError as error:
            raise ValueError(f"frame {self.input_indices[index]}: {error}") from error
        data.add_system_property("input_index", torch.tensor([[self.input_indices[index]]], dtype=torch.int64))
        for field, values in self.targets.items():
            if np.isfinite(values[index]):
                setattr(data, field, torch.tensor(values[index], dtype=self.dtype))
        return data, {}


class InflightResult(NamedTuple):
    """What :func:`run_frames` returns: result frames in input order and the run's counters."""

    frames: list
    stats: object


def default_max_atoms(frames) -> int:
    """The live batch's atom budget :func:`run_frames` uses when none is given: every frame's
    atoms up to 4,096, and at least the largest frame."""
    sizes = [len(a) for a in frames]
    return max(max(sizes), min(sum(sizes), 4096))


def run_frames(
    frames: Sequence[Atoms],
    stages,
    *,
    max_atoms: int | None = None,
    max_batch_size: int | None = None,
    refill_frequency: int = 10,
    sinks=(),
    hooks=(),
    device="cpu",
    dtype: torch.dtype = torch.float64,
    collect: bool = True,
    compute_stress: bool = True,
    prefetch: int = 0,
    refill_in_place: bool = True,
    min_distance: float = 0.1,
    ignore_constraints: bool = False,
    input_indices=None,
    temperature=None,
    pressure=None,
    guards=True,
) -> InflightResult:
    """Run dynamics stages over ``frames`` with inflight batching.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Input structures (checked with :func:`check_frames`; not modified).
    stages : Dynamics or list of Dynamics
        E.g. ``FIRE(model, convergence_hook=...)`` or ``[fire, nvt]`` (run in order), or an MD
        stage wrapped in :class:`~batchmd.dynamics.equilibration.Equilibrate` (each frame runs
        until equilibrated, then a production; its averages are result keys).
    max_atoms : int, optional
        Atom budget of the live batch (default: every atom if <= 4096, else 4096, and at
        least the largest frame).
    max_batch_size : int, optional
        Most systems in the live batch.
    refill_frequency : int
        Steps between refill points (graduation, refills; the loop's host syncs).
    sinks, hooks : sequence
        Extra sinks (e.g. :class:`~batchmd.dynamics.sinks.ExtXYZSink`) and run-level hooks
        (e.g. :class:`~batchmd.progress.ProgressHook`).
    device, dtype
        Where and in what precision the live batch runs.
    collect : bool
        Keep every graduated system in host memory and return them as frames (set False
        when a sink already stores them; ``frames`` is then empty).
    compute_stress : bool
        Evaluate the stress (eV/Å^3) with every force call, so results carry the stress of
        their final positions (costs ~15% with Lennard-Jones).
    prefetch : int
        Frames converted ahead by a background thread (default 0: convert on request;
        converting in Python competes with the loop for the GIL, see
        :class:`~batchmd.dynamics.SizeAwareSampler`).
    input_indices : sequence of int, optional
        The identity of each frame: its ``input_index`` and ``system_id`` (default
        ``0 .. len(frames) - 1``). Pass the original positions when running a subset of
        a file's frames (e.g. resuming): results are then bitwise those of a run over the
        whole file (the Langevin noise of a system depends on its ``system_id``).
    refill_in_place : bool
        Write newcomers into the live batch in place (``FusedStage(refill_in_place=True)``:
        with Lennard-Jones a padded batch where a slot takes any frame that fits its free
        rows, see :mod:`batchmd.dynamics.slot_layout`; with other models frames of a
        graduated slot's atom count). Frames are then served out of input order; the
        results are the same and come back in input order. False: strict input order.
    min_distance : float
        Frames with atoms closer than this (Å) are refused up front (0 disables).
    ignore_constraints : bool
        Drop ASE constraints other than ``FixAtoms`` instead of refusing the frame.
    temperature : sequence of float, optional
        Per-frame thermostat target, K (one per frame, in ``frames`` order; e.g. a list, a
        numpy array or a 1-D tensor of ``len(frames)``; a NaN entry: that frame runs at the
        stage's own temperature). Default: each frame's ``atoms.info["temperature_K"]`` where
        it has one.
    pressure : sequence of float, optional
        Per-frame external pressure, eV/Å^3 (``ase.units.GPa`` per GPa; NaN: the stage's). Default: each
        frame's ``atoms.info["pressure_GPa"]`` (GPa) where it has one.

    guards : Guards, True or False
        Runaway guards (:mod:`batchmd.dynamics.guards`: non-finite values, density in
        atoms/Å^3, MD displacement in Å per step, energy drop in eV/atom). True (default):
        ``Guards()``; False: off (non-finite energy and forces still fail a system).

    Notes
    -----
    **Per-frame temperature and pressure.** A frame's own target (``temperature`` /
    ``pressure`` here, else its info keys; see :func:`frame_targets`) travels with the
    system through refills as the system fields ``target_temperature`` (K) /
    ``target_pressure`` (eV/Å^3) and replaces the temperature of every thermostat stage
    it meets (:class:`~batchmd.dynamics.NVTLangevin`,
    :class:`~batchmd.dynamics.NoseHooverChainNVT`, MTK and C-rescale NPT, and the
    Maxwell-Boltzmann draw of :class:`~batchmd.dynamics.NVE`) and the pressure of every
    barostat and cell filter; frames without one run at the stage's own values. Result
    frames record the values used as ``stage{k}_target_temperature_K`` /
    ``stage{k}_target_pressure_GPa``. Stage parameters given as tensors are refused here:
    they are indexed by live-batch slot, which this function chooses.

    Returns
    -------
    InflightResult
        ``frames`` (list of ase.Atoms in input order, see :func:`results_to_atoms`) and
        ``stats`` (:class:`~batchmd.dynamics.RunStats`). A system that failed during the
        run (non-finite values, or a runaway caught by a guard) is returned like the others,
        with ``info["status"] == "failed"`` and ``info["failure"]`` saying why and at which
        step; it never costs the other systems their results.

    Raises
    ------
    ValueError
        Before anything runs, naming the first invalid frame and atom
        (:func:`check_frames`), or (``UnsupportedSpeciesError``) the elements a stage's
        model has no parameters for and the first frame holding one, or the first frame a
        stage cannot run (:func:`batchmd.dynamics.admission.check_frames_admission`: e.g. a
        cluster, slab or ``FixAtoms`` crystal given a barostat, a non-periodic frame given a
        cell filter), named by its input index: every frame is checked against every stage
        before anything runs; a bad per-frame temperature or pressure, naming the frame
        (:func:`frame_targets`); a stage temperature or pressure given as a (slot-indexed) tensor.

    An empty ``frames`` returns an empty result (no frames, zero counters) without running.
    """
    from batchmd.dynamics import FusedStage, SizeAwareSampler
    from batchmd.dynamics.admission import check_frames_admission
    from batchmd.dynamics.hooks import RunStats
    from batchmd.dynamics.sinks import HostMemory

    stages = list(stages) if isinstance(stages, (list, tuple)) else [stages]
    if len(frames) == 0:
        return InflightResult([], RunStats(systems_total=0))
    check_frames(frames, min_distance=min_distance, ignore_constraints=ignore_constraints)
    _refuse_slot_tensors(stages)
    temperatures, pressures = frame_targets(frames, temperature, pressure)
    _check_species_up_front(frames, stages)
    check_frames_admission(frames, stages, input_indices=input_indices)  # every stage's rules, up front
    if max_atoms is None:
        max_atoms = default_max_atoms(frames)
    given = temperature is not None or pressure is not None
    dataset = AtomsDataset(frames, dtype=dtype, ignore_constraints=ignore_constraints, input_indices=input_indices,
                           temperature=temperatures if given else None, pressure=pressures if given else None)
    sampler = SizeAwareSampler(dataset, max_atoms=max_atoms, max_batch_size=max_batch_size,
                               prefetch=prefetch)
    memory = HostMemory(capacity=len(frames)) if collect else None
    fused = FusedStage(
        sub_stages=list(enumerate(stages)),
        sampler=sampler,
        sinks=([memory] if memory is not None else []) + list(sinks),
        hooks=list(hooks),
        refill_frequency=refill_frequency,
        device=device,
        dtype=dtype,
        compute_stress=compute_stress,
        refill_in_place=refill_in_place,
        guards=guards,
    )
    leftover = fused.run(batch=None)
    if leftover is not None:  # pragma: no cover - run(n_steps=None) ends only when exhausted
        raise RuntimeError(f"batchmd.ase.run_frames: {leftover.num_graphs} systems did not graduate")
    out = []
    if memory is not None and len(memory):
        if ignore_constraints:  # dropped constraints are not written back with the results either
            from batchmd.data.validate import drop_unsupported_constraints

            frames = drop_unsupported_constraints(frames)[0]
        inputs = frames if input_indices is None else dict(zip(dataset.input_indices, frames))
        out = results_to_atoms(memory.drain().to_ase(), inputs, stages=stages)
    return InflightResult(out, fused.stats)


def relax(
    frames: Sequence[Atoms],
    model,
    fmax: float = 0.05,
    max_steps: int = 500,
    *,
    optimizer: str = "fire",
    cell: str = "fixed",
    pressure=0.0,
    **kwargs,
) -> list[Atoms]:
    """Relax every structure with batched FIRE or LBFGS (``ase.optimize.FIRE`` / ``LBFGS`` step for step).

    The Python form of ``batchmd relax`` (same ``optimizer``, ``cell`` and ``pressure``
    options; the pressure here is in eV/Å^3, the CLI's in GPa).

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Structures to relax (not modified). An empty sequence gives ``[]``.
    model : callable
        A batchmd model (one that computes the stress for a variable cell).
    fmax : float
        Convergence threshold, eV/Å: the largest atomic force, or with a variable cell ASE's
        fmax through the filter (atom and cell rows, see
        :class:`~batchmd.dynamics.FrechetCellFilter`).
    max_steps : int
        Step budget per structure; a structure that runs out is returned with
        ``converged=False``.
    optimizer : str
        ``"fire"`` (:class:`~batchmd.dynamics.FIRE`) or ``"lbfgs"`` (:class:`~batchmd.dynamics.LBFGS`).
    cell : str
        ``"fixed"`` (atoms only, default), ``"full"`` (atoms and cell, ASE's
        ``FrechetCellFilter``), ``"hydrostatic"`` (isotropic cell changes only) or
        ``"volume"`` (cell shape at constant volume); see
        :func:`~batchmd.dynamics.cell_filter.cell_filter_for`.
    pressure : float or sequence of float
        External pressure, eV/Å^3 (``ase.units.GPa`` per GPa), with ``cell="full"`` or
        ``"hydrostatic"``: the enthalpy ``E + P V`` is minimised. A sequence gives one
        pressure per frame (as :func:`run_frames`' ``pressure``); a frame's
        ``atoms.info["pressure_GPa"]`` is its own pressure.
    **kwargs
        Passed to :func:`run_frames` (``max_atoms``, ``device``, ``dtype``, ``hooks``, ...).

    Returns
    -------
    list of ase.Atoms
        Relaxed copies in input order, with energy/forces (and stress), the cell, the
        :data:`RESULT_KEYS` and the per-stage ``stage0_*`` keys in info.

    Raises
    ------
    ValueError
        One line: a non-positive ``fmax``, an unknown ``optimizer`` or ``cell``, a pressure
        with ``cell="fixed"``/``"volume"``, a variable cell with a model that computes no
        stress; and the errors of :func:`run_frames`.
    """
    from batchmd.dynamics import FIRE, LBFGS, ConvergenceHook
    from batchmd.dynamics.cell_filter import cell_filter_for

    if not (isinstance(fmax, (int, float)) and math.isfinite(fmax) and fmax > 0):
        raise ValueError(f"batchmd.ase.relax: fmax must be a positive number of eV/Å, got {fmax!r}")
    methods = {"fire": FIRE, "lbfgs": LBFGS}
    if optimizer not in methods:
        raise ValueError(f"batchmd.ase.relax: optimizer must be 'fire' or 'lbfgs', got {optimizer!r}")
    per_frame = pressure is not None and not isinstance(pressure, (int, float, np.number))
    try:
        cell_filter = cell_filter_for(cell, 0.0 if per_frame else pressure)
    except ValueError as error:
        raise ValueError(f"batchmd.ase.relax: {error}") from None
    if per_frame and cell_filter is None or (per_frame and cell == "volume"):
        raise ValueError(f"batchmd.ase.relax: per-frame pressures do nothing with cell={cell!r}: they need a variable "
                         "cell (cell='full' or 'hydrostatic')")
    if cell_filter is not None and getattr(model, "computes_stress", None) is False:
        raise ValueError(f"batchmd.ase.relax: cell={cell!r} needs a model that computes the stress "
                         "(computes_stress=False)")
    if len(frames) == 0:
        return []
    stage = methods[optimizer](model, convergence_hook=ConvergenceHook.from_forces(fmax), n_steps=max_steps,
                               cell_filter=cell_filter)
    if per_frame:
        kwargs["pressure"] = pressure
    return run_frames(frames, [stage], **kwargs).frames
