"""Admission: the checks every system passes before it enters a live batch, however it enters.

Each stage (a :class:`~batchmd.dynamics.Dynamics`) declares what a system needs to run
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
    system field ``fix_com``) may enter. The barostats refuse ``FixAtoms``, as ASE's
    ``MTKNPT`` does (it raises ``NotImplementedError``), and allow ``FixCom``.
``needs_dof``
    The system must have degrees of freedom, ``g = 3N - 3 N_fixed - 3 [FixCom] > 0``
    (:mod:`batchmd.dynamics.constraints`): the barostats, whose equations divide by ``g``
    (MTK's ``1 + 3/g``; refused with the ``CONSTRAINTS`` bit, e.g. a one-atom crystal with
    ``FixCom``). Thermostats and integrators run a system with ``g = 0`` unchanged (it has no
    kinetic energy: temperature 0).

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

__all__ = ["Requirements", "Admission", "AdmissionWarning", "stage_requirements", "system_problem", "atoms_problem_for_stages", "data_problem",
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
    needs_dof : bool
        Systems need ``3N - 3 N_fixed - 3 [FixCom] > 0`` degrees of freedom.
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
    needs_dof: bool = False
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


def _det3(m) -> float:
    """Determinant of a 3x3 (nested sequence or array) in plain floats (numpy's det costs ~20x more)."""
    (a, b, c), (d, e, f), (g, h, i) = (tuple(float(x) for x in row) for row in m)
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


class Admission:
    """The rules of ``stages`` (and the model's elements), prepared once for many systems.

    Parameters
    ----------
    stages : sequence of Dynamics
        Every stage of the loop, in order.
    model : optional
        Whose ``supported_numbers`` / ``check_species`` rule the elements (default: the first
        stage's ``model``).

    Checking a system costs a few microseconds (a table lookup for the elements, plain-float
    arithmetic for the cell); nothing is read for rules no remaining stage declares.
    """

    def __init__(self, stages, model=None) -> None:
        self.stages = list(stages)
        if model is None and self.stages:
            model = getattr(self.stages[0], "model", None)
        self.model = model
        self.rules = [stage_requirements(stage) for stage in self.stages]
        supported = getattr(model, "supported_numbers", None) if hasattr(model, "check_species") else None
        self.table = None
        if supported is not None:
            self.table = np.zeros(256, dtype=bool)
            self.table[[int(z) for z in supported if 0 <= int(z) < 256]] = True
        n = len(self.rules)
        # From stage k on: does any stage need pbc / refuse FixAtoms / refuse FixCom?
        self.pbc_from = [any(r.needs_pbc for r in self.rules[k:]) for k in range(n + 1)]
        self.fixed_from = [any(not r.allows_fixed for r in self.rules[k:]) for k in range(n + 1)]
        self.com_from = [any(not r.allows_fix_com for r in self.rules[k:]) for k in range(n + 1)]
        self.dof_from = [any(r.needs_dof for r in self.rules[k:]) for k in range(n + 1)]

    @property
    def checks_species(self) -> bool:
        """Whether the model restricts the elements."""
        return self.table is not None

    def species_problem(self, numbers) -> str | None:
        """The model's one-line refusal of ``numbers`` (array [N] of int), or None."""
        if self.table is None:
            return None
        numbers = np.asarray(numbers)
        try:  # atomic numbers are 1..118 (AtomicData and the input checks refuse others)
            if self.table[numbers].all():
                return None
        except IndexError:
            pass
        try:
            self.model.check_species(np.unique(numbers))
        except ValueError as error:
            return str(error.args[0]).removeprefix("batchmd: ") if error.args else str(error)
        return None

    def problem(self, numbers, pbc, cell, num_fixed: int, fix_com: bool, first_stage: int = 0,
                n_atoms: int | None = None):
        """``(FailureReason bits, phrase)`` for one system entering at ``first_stage``, or None.

        See :func:`system_problem` (arguments and phrases); ``n_atoms`` defaults to ``len(numbers)``.
        """
        species = self.species_problem(numbers)
        if species is not None:
            return int(FailureReason.SPECIES), species
        first = min(max(int(first_stage), 0), len(self.rules))
        no_dof = False
        if self.dof_from[first]:
            n = len(numbers) if n_atoms is None else int(n_atoms)
            no_dof = 3 * n - 3 * int(num_fixed) - 3 * int(bool(fix_com)) <= 0
        if not (self.pbc_from[first] or (num_fixed and self.fixed_from[first]) or (fix_com and self.com_from[first])
                or no_dof):
            return None
        flags = volume = None
        for k in range(first, len(self.stages)):
            req = self.rules[k]
            if req.needs_pbc:
                if flags is None:
                    flags = [bool(p) for p in (pbc.tolist() if hasattr(pbc, "tolist") else pbc)]
                    volume = abs(_det3(cell.tolist() if hasattr(cell, "tolist") else cell))
                if not all(flags):
                    return int(FailureReason.NOT_PERIODIC), (
                        f"is not periodic in all three directions (pbc {', '.join(map(str, flags))}), "
                        f"which {_stage_name(self.stages[k], k, req)} needs")
                if not volume > MIN_CELL_VOLUME:
                    return int(FailureReason.NOT_PERIODIC), (
                        f"has a cell of zero volume ({volume:.3g} Å^3), which {_stage_name(self.stages[k], k, req)} "
                        "cannot run (it needs a 3-D cell)")
            if (num_fixed and not req.allows_fixed) or (fix_com and not req.allows_fix_com):
                note = f" ({req.constraint_note})" if req.constraint_note else ""
                what = f"has {int(num_fixed)} fixed atoms (FixAtoms)" if num_fixed and not req.allows_fixed \
                    else "has FixCom"
                return int(FailureReason.CONSTRAINTS), (
                    f"{what}, which {_stage_name(self.stages[k], k, req)} does not support{note}")
            if no_dof and req.needs_dof:
                n = len(numbers) if n_atoms is None else int(n_atoms)
                why = "all atoms fixed" if num_fixed >= n else "one free atom under FixCom" if fix_com else "no atoms"
                return int(FailureReason.CONSTRAINTS), (
                    f"has no degrees of freedom ({why}), which {_stage_name(self.stages[k], k, req)} needs")
        return None

    def data_problem(self, data):
        """:meth:`problem` for one :class:`~batchmd.data.AtomicData` (a sampler's sample) entering at stage 0."""
        numbers = data["atomic_numbers"].cpu().numpy() if self.table is not None else None
        if not (self.pbc_from[0] or self.fixed_from[0] or self.com_from[0] or self.dof_from[0]):
            return self.problem(numbers, None, None, 0, False)
        fields = data.fields
        counts = self.fixed_from[0] or self.dof_from[0]
        num_fixed = int(data["fixed"].sum()) if counts and "fixed" in fields else 0
        fix_com = bool(data["fix_com"].reshape(-1)[0]) if (self.com_from[0] or self.dof_from[0]) \
            and "fix_com" in fields else False
        cell = data["cell"].detach().cpu().view(3, 3) if self.pbc_from[0] else None
        pbc = data["pbc"].cpu().view(3) if self.pbc_from[0] else None
        return self.problem(numbers, pbc, cell, num_fixed, fix_com, n_atoms=int(data["positions"].shape[0]))


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
        ASE, which raises NotImplementedError)"``; the elements first, then the first rule
        broken in stage order. For many systems build one :class:`Admission` instead.
    """
    return Admission(stages, model).problem(numbers, pbc, cell, num_fixed, fix_com, first_stage)


def _atoms_constraints(atoms) -> tuple[int, bool]:
    """(fixed atom count, FixCom) of ``atoms`` as batchmd will carry them (``ase_convert``'s reading)."""
    from batchmd.data.ase_convert import _constraints

    mask, fix_com = _constraints(atoms, ignore_constraints=True)
    return (0 if mask is None else int(mask.sum())), bool(fix_com)


def data_problem(data, stages, model=None) -> tuple[int, str] | None:
    """:func:`system_problem` for one :class:`~batchmd.data.AtomicData` (a sampler's sample) entering at stage 0."""
    return Admission(stages, model).data_problem(data)


def atoms_problem_for_stages(atoms, stages, model=None, admission: Admission | None = None):
    """:func:`system_problem` for one ``ase.Atoms`` entering at stage 0 (``(bits, phrase)`` or None)."""
    rules = admission if admission is not None else Admission(stages, model)
    num_fixed, fix_com = _atoms_constraints(atoms) if atoms.constraints or "fix_com" in atoms.info else (0, False)
    return rules.problem(atoms.numbers, atoms.pbc, atoms.cell.array, num_fixed, fix_com)


def frames_problems(frames, stages, model=None) -> dict[int, str]:
    """``{frame index: phrase}`` for every frame of ``frames`` (ase.Atoms) that may not enter ``stages``."""
    problems = {}
    rules = Admission(stages, model)
    for index, atoms in enumerate(frames):
        found = atoms_problem_for_stages(atoms, stages, admission=rules)
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
        fixed = np.zeros(b, dtype=np.int64)
        np.add.at(fixed, batch.batch_idx.cpu().numpy(), batch["fixed"].cpu().numpy().astype(np.int64))
    else:
        fixed = np.zeros(b, dtype=np.int64)
    fix_com = batch["fix_com"].reshape(-1).cpu().numpy() if batch.has_field("fix_com") else np.zeros(b, bool)
    stage = batch["stage"].reshape(-1).cpu().numpy() if batch.has_field("stage") and not everyone else \
        np.zeros(b, np.int64)
    status = batch["status"].reshape(-1).cpu().numpy() if batch.has_field("status") else None
    out = []
    rules = Admission(stages, model)
    for s in range(b):
        if status is not None and int(status[s]) == int(SystemStatus.EMPTY):
            continue
        found = rules.problem(numbers[ptr[s]:ptr[s + 1]], pbc[s], cell[s], int(fixed[s]), bool(fix_com[s]),
                              first_stage=int(stage[s]))
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
