"""What the property workflows share: variant copies, one batched run for all of them, result rows.

A property (equation of state, elastic tensor, phonons) evaluates every input structure
at several *variants* (scaled, strained or displaced copies). The pieces here turn that
into one inflight-batched run and back:

- :func:`check_periodic`: refuse structures without a full 3-D periodic cell (one line).
- :func:`check_relax_options`: refuse a bad ``fmax``, ``max_steps`` or ``optimizer`` (one line).
- :func:`optimizer_stage`: the relaxation stage every variant runs (``relax`` mode
  ``"none"``: single points, ``"positions"``: atoms at a fixed cell, ``"shape"``: cell
  shape at constant volume, ASE's ``FrechetCellFilter(constant_volume=True)``).
- :func:`run_variants`: run a list of variant lists (one list per structure) through
  :func:`batchmd.ase.run_frames` as ONE run, and hand back, per structure, the result
  frames in variant order -- as soon as all variants of a structure have graduated (a
  callback), so a caller can write results while the run goes on.
- :func:`evaluate_frames`: single-point energies and forces (and stresses) of many frames
  as one inflight-batched run (a zero-step FIRE stage, :func:`single_point_stage`).
- :func:`relax_inputs`: relax every input structure (one batched run) before its variants
  are made, with the status of each as one line (``relax_input=True`` of the properties).
- :func:`progress_hooks`: the run-level hooks plus a progress line, closed at the end.
- :func:`variant_problem`: the per-variant status check (failed, not converged, non-finite
  energy) as one line naming the variant, or None.
- :func:`write_rows` / :func:`read_rows`: result rows (flat dicts whose column names carry
  the units, ``V0_A3``, ``B0_GPa``, ...) to and from CSV or JSON.

Data flow: properties sit above the engine (they import :mod:`batchmd.ase`,
:mod:`batchmd.dynamics` and models); nothing below imports them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["RELAX_MODES", "check_periodic", "check_relax_options", "evaluate_frames", "optimizer_stage",
           "progress_hooks", "relax_inputs", "run_variants", "single_point_stage", "variant_problem", "write_rows",
           "read_rows"]

#: Relaxation of each variant: ``none`` (single point), ``positions`` (atoms, fixed cell),
#: ``shape`` (atoms and cell shape at constant volume).
RELAX_MODES = ("none", "positions", "shape")


def check_periodic(structures, where: str) -> list:
    """The structures as a list, after checking each is an ``ase.Atoms`` with a 3-D periodic cell.

    Raises
    ------
    ValueError
        One line naming the first structure that is not an ``ase.Atoms``, has no atoms, is
        not periodic in all three directions or has a cell of zero volume.
    """
    from ase import Atoms

    structures = list(structures)
    for i, atoms in enumerate(structures):
        if not isinstance(atoms, Atoms):
            raise ValueError(f"{where}: structure {i} is a {type(atoms).__name__}, not an ase.Atoms")
        if len(atoms) == 0:
            raise ValueError(f"{where}: structure {i} has no atoms")
        if not atoms.pbc.all() or atoms.cell.rank < 3 or abs(atoms.cell.volume) < 1e-9:
            raise ValueError(f"{where}: structure {i} ({atoms.get_chemical_formula()}) has no 3-D periodic cell "
                             f"(pbc={atoms.pbc.tolist()}, volume {abs(atoms.cell.volume):.3g} Å^3); a bulk property "
                             "needs a crystal")
    return structures


def check_relax_options(fmax, max_steps, optimizer: str, *, where: str, min_steps: int = 0) -> None:
    """Refuse a bad relaxation option with one line naming ``where``.

    Raises
    ------
    ValueError
        ``optimizer`` not ``"fire"``/``"lbfgs"``, ``fmax`` not a positive finite number (eV/Å),
        ``max_steps`` not an integer >= ``min_steps``.
    """
    if optimizer not in ("fire", "lbfgs"):
        raise ValueError(f"{where}: optimizer must be 'fire' or 'lbfgs', got {optimizer!r}")
    if not (isinstance(fmax, (int, float)) and not isinstance(fmax, bool) and math.isfinite(fmax) and fmax > 0):
        raise ValueError(f"{where}: fmax must be a positive number of eV/Å, got {fmax!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < min_steps:
        kind = "positive" if min_steps == 1 else "non-negative" if min_steps == 0 else f">= {min_steps}"
        raise ValueError(f"{where}: max_steps must be a {kind} integer, got {max_steps!r}")


def optimizer_stage(model, relax: str, *, fmax: float, max_steps: int, optimizer: str = "fire", where: str):
    """The stage every variant runs: ``(stage, single_point)``.

    ``relax="none"`` is a step-free FIRE stage (energy, forces and stress of the variant as
    given; ``single_point`` True: its status is not checked for convergence).

    Raises
    ------
    ValueError
        An unknown ``relax`` or ``optimizer``, a non-positive ``fmax``, a negative
        ``max_steps``, or ``relax="shape"`` with a model that computes no stress.
    """
    from batchmd.dynamics import FIRE, LBFGS, ConvergenceHook
    from batchmd.dynamics.cell_filter import cell_filter_for

    if relax not in RELAX_MODES:
        raise ValueError(f"{where}: relax must be one of {', '.join(RELAX_MODES)}, got {relax!r}")
    methods = {"fire": FIRE, "lbfgs": LBFGS}
    check_relax_options(fmax, max_steps, optimizer, where=where)
    if relax == "shape" and getattr(model, "computes_stress", None) is False:
        raise ValueError(f"{where}: relax='shape' needs a model that computes the stress (computes_stress=False)")
    single = relax == "none"
    cell_filter = cell_filter_for("volume", 0.0) if relax == "shape" else None
    stage = methods[optimizer](model, convergence_hook=ConvergenceHook.from_forces(fmax),
                               n_steps=0 if single else int(max_steps), cell_filter=cell_filter)
    return stage, single


def single_point_stage(model):
    """A zero-step :class:`~batchmd.dynamics.FIRE` stage: each system is evaluated once (energy, forces,
    stress) at its input positions and graduates at once (status ``completed``)."""
    from batchmd.dynamics import FIRE

    return FIRE(model, n_steps=0)


def evaluate_frames(frames: Sequence, model, *, device="cpu", dtype=None, max_atoms: int | None = None, hooks=(),
                    compute_stress: bool = False) -> list:
    """Single-point energies and forces of many frames in one inflight-batched run.

    A zero-step FIRE stage (:func:`single_point_stage`) through :func:`batchmd.ase.run_frames`:
    every frame is evaluated once at its input positions and graduates at once (no step is
    taken), the live batch is refilled at every evaluation (``refill_frequency=1``).

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Structures (not modified); checked as :func:`batchmd.ase.run_frames` does.
    model : callable
        Any batchmd model.
    device, dtype, max_atoms, hooks, compute_stress
        As :func:`batchmd.ase.run_frames` (``dtype`` default float64).

    Returns
    -------
    list of ase.Atoms
        In input order, the positions unchanged, energy (eV) and forces [N,3] (eV/Å) (stress,
        eV/Å^3, with ``compute_stress``) in a single-point calculator; ``info["status"]`` is
        ``"failed"`` (with ``info["failure"]``) for a non-finite evaluation.
    """
    import torch

    from batchmd.ase import run_frames
    from batchmd.dynamics.stages import NoProgressWarning

    if len(frames) == 0:
        return []
    with warnings.catch_warnings():  # zero steps is the intent here, not a stall
        warnings.simplefilter("ignore", NoProgressWarning)
        return run_frames(frames, [single_point_stage(model)], max_atoms=max_atoms, refill_frequency=1, hooks=hooks,
                          device=device, dtype=torch.float64 if dtype is None else dtype,
                          compute_stress=compute_stress).frames


def relax_inputs(structures: Sequence, model, *, cell: str, fmax: float, max_steps: int, optimizer: str = "fire",
                 device="cpu", dtype=None, max_atoms=None, hooks=()) -> tuple[list, list]:
    """Relax every structure (one batched :func:`batchmd.ase.relax` run) before its variants are made.

    ``cell``: ``"fixed"`` (positions) or ``"full"`` (positions and cell, ASE's
    ``FrechetCellFilter``). Returns ``(frames, problems)``: the relaxed frames in input order
    and, per structure, None or one line (:func:`variant_problem`, labelled ``"input
    relaxation (cell CELL)"``: failed, not converged, no finite energy).
    """
    import torch

    from batchmd.ase import relax

    relaxed = relax(list(structures), model, fmax=fmax, max_steps=max_steps, optimizer=optimizer, cell=cell,
                    device=device, dtype=torch.float64 if dtype is None else dtype, max_atoms=max_atoms, hooks=hooks)
    problems = [variant_problem(atoms, f"input relaxation (cell {cell})") for atoms in relaxed]
    return relaxed, problems


@contextmanager
def progress_hooks(hooks=(), progress: bool = False):
    """The run-level ``hooks`` as a list, plus a live progress line on stderr
    (:class:`~batchmd.progress.ProgressHook`) when ``progress``; the line is closed on exit."""
    hooks = list(hooks)
    progress_hook = None
    if progress:
        from batchmd.progress import ProgressHook

        progress_hook = ProgressHook(enabled=True)
        hooks.append(progress_hook)
    try:
        yield hooks
    finally:
        if progress_hook is not None:
            progress_hook.close()


class _StreamingSink:
    """A sink that turns graduated systems into result frames and reports each finished structure."""

    def __init__(self, inputs: dict, owner: dict, counts: list, stages, on_structure: Callable | None) -> None:
        self.inputs, self.owner, self.stages = inputs, owner, stages
        self.pending = {s: {} for s in range(len(counts))}
        self.counts = counts
        self.done: dict = {}
        self.on_structure = on_structure

    def write(self, batch) -> None:
        from batchmd.ase import results_to_atoms

        if batch.num_graphs == 0:
            return
        for atoms in results_to_atoms(batch.to("cpu").to_ase(), self.inputs, stages=self.stages):
            structure, variant = self.owner[int(atoms.info["input_index"])]
            self.pending[structure][variant] = atoms
            if len(self.pending[structure]) == self.counts[structure]:
                got = self.pending.pop(structure)
                self.done[structure] = [got[v] for v in range(self.counts[structure])]
                if self.on_structure is not None:
                    self.on_structure(structure, self.done[structure])


def run_variants(variants: Sequence[Sequence], stage, *, on_structure: Callable | None = None, device="cpu",
                 dtype=None, max_atoms=None, hooks=(), progress: bool = False, compute_stress: bool = True):
    """Run every variant of every structure as ONE inflight-batched run; result frames per structure.

    Parameters
    ----------
    variants : sequence of sequence of ase.Atoms
        ``variants[s][v]``: variant ``v`` of structure ``s`` (not modified).
    stage : Dynamics
        The stage each variant runs (e.g. from :func:`optimizer_stage`).
    on_structure : callable, optional
        ``on_structure(s, frames)`` is called as soon as every variant of structure ``s`` has
        graduated (``frames`` in variant order), while the run goes on: write results early.
    device, dtype, max_atoms, hooks
        Passed to :func:`batchmd.ase.run_frames` (``dtype`` default float64).
    progress : bool
        Show a live progress line (:class:`~batchmd.progress.ProgressHook`) on stderr.

    Returns
    -------
    list of list of ase.Atoms
        ``out[s][v]``: the result frame of each variant (see :func:`batchmd.ase.results_to_atoms`:
        energy, forces, stress as a single-point calculator; ``status``, ``converged``,
        ``n_steps``, ``fmax`` and ``failure`` in ``info``).

    Notes
    -----
    Variants are numbered 0 .. V-1 over all structures (structure-major) and passed as
    ``input_indices``, which is how graduated systems map back. A KeyboardInterrupt is
    re-raised after ``on_structure`` has been called for every finished structure.
    """
    import torch

    from batchmd.ase import run_frames
    from batchmd.dynamics.stages import NoProgressWarning

    flat, owner, counts = [], {}, []
    for s, group in enumerate(variants):
        group = list(group)
        counts.append(len(group))
        for v, atoms in enumerate(group):
            owner[len(flat)] = (s, v)
            flat.append(atoms)
    if not flat:
        return [[] for _ in counts]
    inputs = dict(enumerate(flat))
    sink = _StreamingSink(inputs, owner, counts, [stage], on_structure)
    with progress_hooks(hooks, progress) as hooks, warnings.catch_warnings():
        warnings.simplefilter("ignore", NoProgressWarning)  # single points take no step by design
        run_frames(flat, [stage], sinks=[sink], hooks=hooks, device=device,
                   dtype=torch.float64 if dtype is None else dtype, max_atoms=max_atoms, collect=False,
                   compute_stress=compute_stress)
    for s, count in enumerate(counts):  # structures without variants
        if count == 0:
            sink.done[s] = []
    return [sink.done[s] for s in range(len(counts))]


def variant_problem(atoms, label: str, *, single_point: bool = False) -> str | None:
    """One line saying why a variant's result cannot be used, or None when it can.

    A variant fails when its system failed (``status == "failed"``: non-finite values, a
    runaway guard, a calculator error), when it did not converge (``converged`` False,
    unless ``single_point``), or when its energy is missing or not finite. ``label`` names
    the variant (e.g. ``"volume -6%"``).
    """
    info = atoms.info
    energy = None
    if atoms.calc is not None:
        energy = atoms.calc.results.get("energy")
    fmax = info.get("fmax", float("nan"))
    if info.get("status") == "failed":
        return f"{label}: failed ({info.get('failure', 'failed')})"
    if not single_point and not info.get("converged", False):
        return f"{label}: not converged in {info.get('n_steps')} steps (fmax {float(fmax):.3g} eV/Å)"
    if energy is None or not np.isfinite(energy):
        return f"{label}: no finite energy"
    return None


# ----------------------------------------------------------------------------- rows
def _plain(value):
    """numpy scalars to Python, non-finite floats to None (JSON null, empty CSV cell)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_rows(rows: Sequence[dict], path, *, atomic: bool = True) -> None:
    """Write result rows to ``path``: ``.csv`` (header = union of the keys, in first-seen order) or ``.json``
    (a list of objects). Non-finite numbers are written as empty cells / null.

    The file is written through a temporary file renamed onto ``path`` (``atomic``), so
    ``path`` always holds a complete table.

    Raises
    ------
    ValueError
        ``path`` ends neither in ``.csv`` nor ``.json``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"{path}: result rows are written as .csv or .json, not {suffix or '(no extension)'!r}")
    rows = [{key: _plain(value) for key, value in row.items()} for row in rows]
    target = path.with_name(f".{path.name}.tmp") if atomic else path
    with open(target, "w", newline="") as handle:
        if suffix == ".json":
            json.dump(rows, handle, indent=1)
        else:
            fields = []
            for row in rows:
                fields += [key for key in row if key not in fields]
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())
    if atomic:
        os.replace(target, path)


def read_rows(path) -> list[dict]:
    """Rows of a table :func:`write_rows` wrote (CSV values come back as strings, empty cells as ``""``)."""
    path = Path(path)
    with open(path, newline="") as handle:
        if path.suffix.lower() == ".json":
            rows = json.load(handle)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError(f"{path}: not a list of result rows")
            return rows
        return list(csv.DictReader(handle))
