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
import re
from typing import NamedTuple, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator as _ASECalculator
from ase.calculators.calculator import all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from batchmd.data import AtomicData, Batch

__all__ = ["DERIVED_KEYS", "RESULT_KEYS", "Calculator", "AtomsDataset", "InflightResult", "check_frames", "frame_problems",
           "results_to_atoms", "run_frames", "relax", "default_max_atoms"]

#: ``atoms.info`` keys written on every result frame (plus the per-stage ``stage{k}_*`` keys
#: of :mod:`batchmd.dynamics.stage_results`).
RESULT_KEYS = ("system_id", "input_index", "status", "converged", "n_steps", "fmax")

#: ``atoms.info`` keys computed from the results on the host (see the module docstring).
DERIVED_KEYS = ("fmax_atoms",)

# Fields the dynamics loop owns: dropped from input frames so that a re-run starts fresh.
_LOOP_KEYS = frozenset(RESULT_KEYS) | frozenset(DERIVED_KEYS) | {"stage", "stage_steps", "sample_index",
                                                                  "sample_num_edges", "energy",
                                       "failure"}
_STAGE_KEY = re.compile(r"^stage\d+_(status|steps|fmax|temperature|method)$")


def _loop_keys(info) -> list:
    """Keys of ``info`` owned by the dynamics loop (results of an earlier run)."""
    return [key for key in info if key in _LOOP_KEYS or _STAGE_KEY.match(key)]


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


def frame_problems(frames: Sequence[Atoms], min_distance: float = 0.1,
                   ignore_constraints: bool = False) -> dict[int, str]:
    """``{frame index: phrase}`` for every frame that cannot be run (see :func:`check_frames`)."""
    from batchmd.data.validate import atoms_problem

    problems = {}
    for index, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            problems[index] = f"is a {type(atoms).__name__}, not ase.Atoms"
            continue
        problem = atoms_problem(atoms, min_distance=min_distance, ignore_constraints=ignore_constraints)
        if problem is not None:
            problems[index] = problem
    return problems


def check_frames(frames: Sequence[Atoms], source: str = "input", min_distance: float = 0.1,
                 ignore_constraints: bool = False) -> None:
    """Raise ``ValueError`` naming the first bad frame and atom, in one line.

    The rules of :func:`batchmd.data.validate.atoms_problem` (shared with ``batchmd
    shard``): not Atoms, no atoms, unknown elements, NaN/inf coordinates, cell or momenta,
    bad masses, periodic directions without a lattice vector, zero-volume periodic cells,
    atoms closer than ``min_distance`` (Å; 0 disables), unsupported ASE constraints.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The structures to check.
    source : str
        Name used in the message (e.g. the file name).
    min_distance : float
        Smallest allowed interatomic distance, Å.
    ignore_constraints : bool
        Accept (and later drop) ASE constraints other than ``FixAtoms``.

    Example: ``"input: frame 1 has non-finite (NaN/inf) momenta (atom 5) (and 2 more bad frames)"``.
    """
    if len(frames) == 0:
        raise ValueError(f"{source}: no frames")
    problems = frame_problems(frames, min_distance, ignore_constraints)
    if problems:
        first = min(problems)
        more = f" (and {len(problems) - 1} more bad frames)" if len(problems) > 1 else ""
        raise ValueError(f"{source}: frame {first} {problems[first]}{more}")


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
                 edge_cutoff: float | None = None, ignore_constraints: bool = False, input_indices=None) -> None:
        self.frames = list(frames)
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
        return data, {}


def _scalar(value):
    value = np.asarray(value).reshape(-1)[0]
    if value.dtype == np.bool_:
        return bool(value)
    return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)


def results_to_atoms(result_frames: Sequence[Atoms], inputs: Sequence[Atoms]) -> list[Atoms]:
    """Clean result frames: each is a copy of its input with the new positions and results.

    Parameters
    ----------
    result_frames : sequence of ase.Atoms
        Frames of graduated systems (from ``Batch.to_ase()`` or read back from an
        :class:`~batchmd.dynamics.sinks.ExtXYZSink` file), each with ``input_index`` in
        its info.
    inputs : sequence of ase.Atoms
        The input frames.

    Returns
    -------
    list of ase.Atoms
        Sorted by ``input_index``. Arrays and info of the input are kept; positions, cell,
        momenta come from the result; energy, forces and stress are attached as a
        single-point calculator; ``atoms.info`` gets the :data:`RESULT_KEYS` and, where
        forces are known, ``fmax_atoms`` (eV/Å, see the module docstring). A FAILED
        system (``info["status"] == "failed"``) gets ``info["failure"]`` (why, see
        :func:`batchmd.dynamics.status.failure_text`) and no calculator results; if its
        final positions or momenta are not finite, the input structure is kept.
        Constraints of the input (``FixAtoms``) are kept.
    """
    from batchmd.dynamics.status import SystemStatus, failure_text

    out = []
    for frame in result_frames:
        index = _scalar(frame.info["input_index"])
        atoms = inputs[index].copy()
        status = frame.info.get("status", 0)
        failed = status == "failed" or (not isinstance(status, str) and _scalar(status) == int(SystemStatus.FAILED))
        finite = np.isfinite(frame.positions).all() and (
            not frame.has("momenta") or np.isfinite(frame.get_momenta()).all())
        if finite:
            atoms.positions = frame.positions
            atoms.cell = frame.cell
            if frame.has("momenta"):
                atoms.set_momenta(frame.get_momenta(), apply_constraint=False)
        for key in _loop_keys(atoms.info):
            del atoms.info[key]
        for key in RESULT_KEYS:
            if key in frame.info:
                value = frame.info[key]
                atoms.info[key] = value if isinstance(value, str) else _scalar(value)
        _stage_info(atoms.info, frame.info)
        if failed:
            text = failure_text(_scalar(frame.info.get("failure", 0))) or "failed"
            if not finite:
                text += "; non-finite positions or momenta, input structure written instead"
            atoms.info["failure"] = text
        results = dict(frame.calc.results) if frame.calc is not None else {}
        if results and not failed:
            atoms.calc = SinglePointCalculator(atoms, **results)
            if results.get("forces") is not None and len(atoms):
                atoms.info["fmax_atoms"] = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
        out.append(atoms)
    out.sort(key=lambda a: a.info["input_index"])
    return out


def _stage_info(info: dict, source: dict) -> None:
    """Per-stage keys from ``source`` with statuses as names; overall ``status`` and ``converged``.

    The overall status is that of the last stage the system entered (an MD stage that ran
    its steps is ``completed``, never ``converged``); ``converged`` is True when every
    optimizer stage converged and no later stage failed (False for pure MD runs).
    """
    from batchmd.dynamics.stage_results import status_name

    stages = sorted({int(m.group(0)[5:].split("_")[0]) for key in source if (m := _STAGE_KEY.match(key))})
    for k in stages:
        for suffix in ("status", "steps", "fmax", "temperature"):
            key = f"stage{k}_{suffix}"
            if key in source:
                value = _scalar(source[key]) if not isinstance(source[key], str) else source[key]
                info[key] = status_name(value) if suffix == "status" else value
    names = [info[f"stage{k}_status"] for k in stages if f"stage{k}_status" in info]
    entered = [n for n in names if n != "skipped"]
    if entered:
        info["status"] = entered[-1]
        optimizers = [info[f"stage{k}_status"] for k in stages if f"stage{k}_fmax" in info]
        info["converged"] = bool(optimizers) and all(n == "converged" for n in optimizers) and entered[-1] != "failed"
    else:
        if "status" in info:
            info["status"] = status_name(info["status"])
        info["converged"] = info.get("status") == "converged"


class InflightResult(NamedTuple):
    """What :func:`run_frames` returns: result frames in input order and the run's counters."""

    frames: list
    stats: object


def _check_species_up_front(frames, stages) -> None:
    """Every stage's model covers every element of ``frames``, checked before anything runs.

    Raises :class:`~batchmd.models.base.UnsupportedSpeciesError` naming the elements and the
    first frame holding one (``input_index``), so no result is computed only to be lost.
    """
    import numpy as np

    for stage in stages:
        model = getattr(stage, "model", None)
        if getattr(model, "supported_numbers", None) is None or not hasattr(model, "check_species"):
            continue
        try:
            model.check_species(np.unique(np.concatenate([a.numbers for a in frames])))
        except ValueError as error:
            bad = set(getattr(error, "unsupported", ()))
            first = next((i for i, a in enumerate(frames) if bad & set(a.numbers.tolist())), None)
            if first is not None:
                error.args = (f"{error.args[0]} (frame {first})", *error.args[1:])
            raise


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
) -> InflightResult:
    """Run dynamics stages over ``frames`` with inflight batching.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Input structures (checked with :func:`check_frames`; not modified).
    stages : Dynamics or list of Dynamics
        E.g. ``FIRE(model, convergence_hook=...)`` or ``[fire, nvt]`` (run in order).
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

    Returns
    -------
    InflightResult
        ``frames`` (list of ase.Atoms in input order, see :func:`results_to_atoms`) and
        ``stats`` (:class:`~batchmd.dynamics.RunStats`). A system that failed during the
        run (non-finite energy or forces) is returned like the others, with
        ``info["status"] == "failed"`` and ``info["failure"]`` saying why; it never
        costs the other systems their results.

    Raises
    ------
    ValueError
        Before anything runs, naming the first invalid frame and atom
        (:func:`check_frames`), or (``UnsupportedSpeciesError``) the elements a stage's
        model has no parameters for and the first frame holding one.
    """
    from batchmd.dynamics import FusedStage, SizeAwareSampler
    from batchmd.dynamics.sinks import HostMemory

    check_frames(frames, min_distance=min_distance, ignore_constraints=ignore_constraints)
    stages = list(stages) if isinstance(stages, (list, tuple)) else [stages]
    _check_species_up_front(frames, stages)
    if max_atoms is None:
        max_atoms = default_max_atoms(frames)
    dataset = AtomsDataset(frames, dtype=dtype, ignore_constraints=ignore_constraints, input_indices=input_indices)
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
    )
    leftover = fused.run(batch=None)
    if leftover is not None:  # pragma: no cover - run(n_steps=None) ends only when exhausted
        raise RuntimeError(f"batchmd.ase.run_frames: {leftover.num_graphs} systems did not graduate")
    out = []
    if memory is not None and len(memory):
        out = results_to_atoms(memory.drain().to_ase(), frames)
    return InflightResult(out, fused.stats)


def relax(
    frames: Sequence[Atoms],
    model,
    fmax: float = 0.05,
    max_steps: int = 500,
    **kwargs,
) -> list[Atoms]:
    """Relax every structure with batched FIRE (``ase.optimize.FIRE`` step for step).

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Structures to relax (not modified).
    model : callable
        A batchmd model.
    fmax : float
        Convergence threshold on the largest atomic force, eV/Å.
    max_steps : int
        Step budget per structure; a structure that runs out is returned with
        ``converged=False``.
    **kwargs
        Passed to :func:`run_frames` (``max_atoms``, ``device``, ``dtype``, ``hooks``, ...).

    Returns
    -------
    list of ase.Atoms
        Relaxed copies in input order, with energy/forces and the :data:`RESULT_KEYS` in info.
    """
    from batchmd.dynamics import FIRE, ConvergenceHook

    if not (isinstance(fmax, (int, float)) and math.isfinite(fmax) and fmax > 0):
        raise ValueError(f"batchmd.ase.relax: fmax must be a positive number of eV/Å, got {fmax!r}")
    stage = FIRE(model, convergence_hook=ConvergenceHook.from_forces(fmax), n_steps=max_steps)
    return run_frames(frames, [stage], **kwargs).frames
