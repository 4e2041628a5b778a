"""Admission: the checks every system passes before it enters a live batch, however it enters.

Each stage (a :class:`~batchmd.dynamics.base.Dynamics`) declares what a system needs to run
in it, in one small declarative object, :class:`Requirements`, returned by
``stage.requirements()``:

``needs_pbc``
    Periodic in all three directions with a 3-D cell (volume > 0): barostats
    (:class:`~batchmd.dynamics.IsotropicMTKNPT`, :class:`~batchmd.dynamics.MTKNPT`,
    :class:`~batchmd.dynamics.CRescaleNPT`) and optimisers with a cell filter.
``needs_stress``
    The model must compute the stress (checked once per loop, against the model).
``allows_fixed`` / ``allows_fix_com``
    Whether systems carrying ``FixAtoms`` (the atom field ``fixed``) or ``FixCom`` (the
    system field ``fix_com``) may enter. The barostats refuse both, as ASE's
    ``MTKNPT`` does (it raises ``NotImplementedError``).

The model adds one rule: every element must be one it has parameters for
(``model.check_species``).

A system is checked against every stage it will meet: a system entering a
:class:`~batchmd.dynamics.FusedStage` at stage ``k`` will meet stages ``k, k + 1, ...``,
so it is checked against all of them when it enters, never later. The checks run on the
host: up front for frames known before a run (:func:`frames_problems`, used by
:func:`batchmd.ase.run_frames`, the CLI and campaigns), and in the loop once per refill
point for the newcomers only (:func:`batch_problems`; a refill point is already a host
synchronisation point, so steady steps stay free of host work).

What the loop does with a system that fails admission (see
:class:`~batchmd.dynamics.FusedStage`):

* A batch handed to ``run(batch)`` / ``step(batch)`` is known up front: ``ValueError``
  (``UnsupportedSpeciesError`` for elements) naming the system (``system_id``, else its
  index in the batch) before anything moves.
* A system the sampler serves (the first live batch, an in-place refill, an appended or
  rebuilt batch) never enters the live batch: it is written to the sinks at once with
  status ``failed`` and a :class:`~batchmd.dynamics.status.FailureReason` bit saying why
  (``NOT_PERIODIC``, ``CONSTRAINTS``, ``SPECIES``), and an :class:`AdmissionWarning`
  names its ``system_id`` and the rule. The others run on, unaffected.

Example
-------
>>> from ase.build import bulk
>>> from ase.cluster import Icosahedron
>>> from batchmd.dynamics.admission import Requirements, atoms_problem_for_stages
>>> class Barostat:
...     def requirements(self):
...         return Requirements(needs_pbc=True, allows_fixed=False, role="a barostat")
>>> atoms_problem_for_stages(bulk("Ar", "fcc", a=5.3, cubic=True), [Barostat()]) is None
True
>>> bits, text = atoms_problem_for_stages(Icosahedron("Ar", 2), [Barostat()])
>>> text
'is not periodic in all three directions (pbc False, False, False), which stage 0 (Barostat, a barostat) needs'
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from batchmd.dynamics.status import FailureReason

__all__ = ["Requirements", "AdmissionWarning", "stage_requirements", "system_problem", "atoms_problem_for_stages", "data_problem",
           "frames_problems", "check_frames_admission", "batch_problems", "check_model_stress",
           "system_label", "warn_refused", "MIN_CELL_VOLUME"]

#: Smallest cell volume (Å^3) a stage with ``needs_pbc`` accepts (``|det(cell)|``).
MIN_CELL_VOLUME = 1e-8


@dataclass(frozen=True)
class Requirements:
    """What a system needs to run in a stage (see the module docstring).

    Attributes
    ----------
    needs_pbc : bool
        Periodic along x, y and z with ``|det(cell)| > MIN_CELL_VOLUME`` Å^3.
    needs_stress : bool
        The model must compute the stress (eV/Å^3).
    allows_fixed : bool
        Systems with fixed atoms (``FixAtoms``) may enter.
    allows_fix_com : bool
        Systems with ``FixCom`` may enter.
    role : str
        What the stage is, for messages (``"a barostat"``, ``"a cell filter"``).
    constraint_note : str
        Appended to a refused constraint's message, e.g. ``"as in ASE, which raises
        NotImplementedError"``.
    """

    needs_pbc: bool = False
    needs_stress: bool = False
    allows_fixed: bool = True
    allows_fix_com: bool = True
    role: str = ""
    constraint_note: str = ""


class AdmissionWarning(UserWarning):
    """A system served during a run failed admission; it is written as ``failed`` and never runs."""


def stage_requirements(stage) -> Requirements:
    """``stage.requirements()``, or what a stage without the method declares (``needs_stress``)."""
    get = getattr(stage, "requirements", None)
    if callable(get):
        return get()
    return Requirements(needs_stress=bool(getattr(stage, "needs_stress", False)))


def _stage_name(stage, index: int, req: Requirements) -> str:
    role = f", {req.role}" if req.role else ""
    return f"stage {index} ({type(stage).__name__}{role})"


def check_model_stress(stages, model) -> None:
    """Raise ``ValueError`` when a stage needs the stress and ``model`` declares ``computes_stress=False``."""
    for k, stage in enumerate(stages):
        if stage_requirements(stage).needs_stress and getattr(model, "computes_stress", None) is False:
            raise ValueError(f"FusedStage: stage {k} ({type(stage).__name__}) needs the stress, but the model "
                             "does not compute it (computes_stress=False)")


def _species_problem(numbers, model) -> str | None:
    if model is None or getattr(model, "supported_numbers", None) is None or not hasattr(model, "check_species"):
        return None
    try:
        model.check_species(np.unique(np.asarray(numbers)))
    except ValueError as error:
        return str(error.args[0]).removeprefix("batchmd: ") if error.args else str(error)
    return None


def system_problem(numbers, pbc, cell, num_fixed: int, fix_com: bool, stages, first_stage: int = 0,
                   model=None) -> tuple[int, str] | None:
    """Why one system may not enter stages ``first_stage, first_stage + 1, ...``, or None.

    Parameters
    ----------
    numbers : array [N] of int
        Atomic numbers.
    pbc : array [3] of bool
        Periodic directions.
    cell : array [3, 3]
        Cell vectors (Å).
    num_fixed : int
        Atoms fixed by ``FixAtoms``.
    fix_com : bool
        Whether the system carries ``FixCom``.
    stages : sequence of Dynamics
        Every stage of the loop, in order.
    first_stage : int
        The stage the system enters at (it meets this one and every later one).
    model : optional
        Whose ``check_species`` rules the elements (default: the first stage's ``model``).

    Returns
    -------
    (int, str) or None
        :class:`~batchmd.dynamics.status.FailureReason` bits and one phrase, e.g. ``"has 18
        fixed atoms (FixAtoms), which stage 0 (MTKNPT, a barostat) does not support (as in
        ASE, which raises NotImplementedError)"``; the first rule broken, in stage order.
    """
    if model is None and len(stages):
        model = getattr(stages[0], "model", None)
    species = _species_problem(numbers, model)
    if species is not None:
        return int(FailureReason.SPECIES), species
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    for k in range(int(first_stage), len(stages)):
        stage = stages[k]
        req = stage_requirements(stage)
        name = _stage_name(stage, k, req)
        if req.needs_pbc:
            if not pbc.all():
                flags = ", ".join(str(bool(p)) for p in pbc)
                return int(FailureReason.NOT_PERIODIC), (
                    f"is not periodic in all three directions (pbc {flags}), which {name} needs")
            volume = abs(float(np.linalg.det(np.asarray(cell, dtype=np.float64).reshape(3, 3))))
            if not volume > MIN_CELL_VOLUME:
                return int(FailureReason.NOT_PERIODIC), (
                    f"has a cell of zero volume ({volume:.3g} Å^3), which {name} cannot run (it needs a 3-D cell)")
        note = f" ({req.constraint_note})" if req.constraint_note else ""
        if num_fixed and not req.allows_fixed:
            return int(FailureReason.CONSTRAINTS), (
                f"has {int(num_fixed)} fixed atoms (FixAtoms), which {name} does not support{note}")
        if fix_com and not req.allows_fix_com:
            return int(FailureReason.CONSTRAINTS), f"has FixCom, which {name} does not support{note}"
    return None


def _atoms_constraints(atoms) -> tuple[int, bool]:
    """(fixed atom count, FixCom) of ``atoms`` as batchmd will carry them (``ase_convert``'s reading)."""
    from batchmd.data.ase_convert import _constraints

    mask, fix_com = _constraints(atoms, ignore_constraints=True)
    return (0 if mask is None else int(mask.sum())), bool(fix_com)


def data_problem(data, stages, model=None) -> tuple[int, str] | None:
    """:func:`system_problem` for one :class:`~batchmd.data.AtomicData` (a sampler's sample) entering at stage 0."""
    fields = data.fields
    num_fixed = int(data["fixed"].sum()) if "fixed" in fields else 0
    fix_com = bool(data["fix_com"].reshape(-1)[0]) if "fix_com" in fields else False
    return system_problem(data["atomic_numbers"].cpu().numpy(), data["pbc"].reshape(3).cpu().numpy(),
                          data["cell"].reshape(3, 3).detach().cpu().double().numpy(), num_fixed, fix_com, stages,
                          model=model)


def atoms_problem_for_stages(atoms, stages, model=None) -> tuple[int, str] | None:
    """:func:`system_problem` for one ``ase.Atoms`` entering at stage 0."""
    num_fixed, fix_com = _atoms_constraints(atoms)
    return system_problem(atoms.numbers, atoms.pbc, atoms.cell.array, num_fixed, fix_com, stages, model=model)


def frames_problems(frames, stages, model=None) -> dict[int, str]:
    """``{frame index: phrase}`` for every frame of ``frames`` (ase.Atoms) that may not enter ``stages``."""
    problems = {}
    for index, atoms in enumerate(frames):
        found = atoms_problem_for_stages(atoms, stages, model=model)
        if found is not None:
            problems[index] = found[1]
    return problems


def check_frames_admission(frames, stages, source: str = "input", input_indices=None, model=None) -> None:
    """Raise ``ValueError`` naming the first frame that may not enter ``stages`` (one line).

    Parameters
    ----------
    frames : sequence of ase.Atoms
    stages : sequence of Dynamics
    source : str
        Name used in the message (a file name).
    input_indices : sequence of int, optional
        The input index of each frame (default its position), used in the message.
    model : optional
        Whose elements rule applies (default: the first stage's model).

    Raises
    ------
    ValueError
        ``"input: frame 1 is not periodic in all three directions (pbc False, False, False),
        which stage 0 (IsotropicMTKNPT, a barostat) needs (and 2 more frames)"``.
    """
    problems = frames_problems(frames, stages, model=model)
    if problems:
        first = min(problems)
        index = int(input_indices[first]) if input_indices is not None else first
        more = f" (and {len(problems) - 1} more frames)" if len(problems) > 1 else ""
        raise ValueError(f"{source}: frame {index} {problems[first]}{more}")


def batch_problems(batch, stages, model=None, everyone: bool = False) -> list[tuple[int, int, str]]:
    """``[(system, failure bits, phrase)]`` for the systems of ``batch`` that may not run their remaining stages.

    Host-side (reads ``pbc``, ``cell``, ``fixed``, ``fix_com``, ``atomic_numbers`` and ``stage``
    once): call it on newcomers at a refill point or on a batch at a run's start, never per step.
    Each system is checked from its ``stage`` field on (stage 0 when ``everyone`` or without it);
    EMPTY padding rows are skipped.
    """
    from batchmd.dynamics.status import SystemStatus

    b = batch.num_graphs
    if b == 0:
        return []
    ptr = batch.ptr.cpu().numpy()
    numbers = batch.atomic_numbers.cpu().numpy()
    pbc = batch.pbc.reshape(-1, 3).cpu().numpy() if batch.pbc is not None else np.zeros((b, 3), dtype=bool)
    cell = batch.cell.reshape(-1, 3, 3).detach().cpu().double().numpy() if batch.cell is not None \
        else np.zeros((b, 3, 3))
    if batch.has_field("fixed"):
        fixed = np.add.reduceat(batch["fixed"].cpu().numpy().astype(np.int64), ptr[:-1]) if batch.num_nodes else \
            np.zeros(b, np.int64)
        fixed = np.where(ptr[1:] > ptr[:-1], fixed, 0)
    else:
        fixed = np.zeros(b, dtype=np.int64)
    fix_com = batch["fix_com"].reshape(-1).cpu().numpy() if batch.has_field("fix_com") else np.zeros(b, bool)
    stage = batch["stage"].reshape(-1).cpu().numpy() if batch.has_field("stage") and not everyone else \
        np.zeros(b, np.int64)
    status = batch["status"].reshape(-1).cpu().numpy() if batch.has_field("status") else None
    out = []
    for s in range(b):
        if status is not None and int(status[s]) == int(SystemStatus.EMPTY):
            continue
        found = system_problem(numbers[ptr[s]:ptr[s + 1]], pbc[s], cell[s], int(fixed[s]), bool(fix_com[s]),
                               stages, first_stage=int(stage[s]), model=model)
        if found is not None:
            out.append((s, *found))
    return out


def system_label(batch, s: int) -> str:
    """``"system_id 7"`` (or ``"system 2"`` for a batch without ``system_id``): how messages name a system."""
    if batch.has_field("system_id"):
        return f"system_id {int(batch['system_id'].reshape(-1)[s])}"
    return f"system {s}"


def warn_refused(labels_and_phrases) -> None:
    """One :class:`AdmissionWarning` per refused system: ``"... system_id 3 refused: <phrase>; ..."``."""
    for label, phrase in labels_and_phrases:
        warnings.warn(AdmissionWarning(f"FusedStage: {label} refused at admission: it {phrase}; it is written "
                                       "as failed and does not run"), stacklevel=3)
