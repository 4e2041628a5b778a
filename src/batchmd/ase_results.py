"""Result frames of :func:`batchmd.ase.run_frames` and the CLI: the input structure with its results.

:func:`results_to_atoms` turns graduated systems (``Batch.to_ase()`` frames or frames read
back from an :class:`~batchmd.dynamics.sinks.ExtXYZSink` file) into copies of the input
frames carrying the final geometry, a single-point calculator and the info keys
:data:`RESULT_KEYS` plus the per-stage ``stage{k}_*`` keys (``stage{k}_method``,
``stage{k}_status``, ``stage{k}_steps``, ``stage{k}_fmax``, ``stage{k}_temperature``,
``stage{k}_target_temperature_K``, ``stage{k}_target_pressure_GPa``). Imported by
:mod:`batchmd.ase`, which re-exports the public names.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from batchmd.dynamics.base import stage_method

__all__ = ["RESULT_KEYS", "record_stage_targets", "results_to_atoms", "stage_targets"]

#: ``atoms.info`` keys written on every result frame (plus the per-stage ``stage{k}_*`` keys
#: of :mod:`batchmd.dynamics.stage_results`).
RESULT_KEYS = ("system_id", "input_index", "status", "converged", "n_steps", "fmax")

# Fields the dynamics loop owns: dropped from input frames so that a re-run starts fresh.
#: ``atoms.info`` keys computed from the results on the host: ``fmax_atoms`` (eV/Å), the largest
#: atomic force of ``atoms.get_forces()`` (constraints applied; with a cell filter ``fmax`` is the
#: filter's, cell rows included, as ASE's optimizers log it).
DERIVED_KEYS = ("fmax_atoms",)

_LOOP_KEYS = frozenset(RESULT_KEYS) | frozenset(DERIVED_KEYS) | {"stage", "stage_steps", "sample_index", "sample_num_edges", "energy",
                                       "failure", "dof"}
_STAGE_KEY = re.compile(r"^stage\d+_(status|steps|fmax|temperature|method|target_temperature_K|target_pressure_GPa)$")
#: Result keys of an equilibration stage (:mod:`batchmd.dynamics.equilibration`), copied as they are
#: (``equilibration_status`` as its text).
_EQUILIBRATION_KEY = re.compile(r"^(equilibration_status|equilibrated_at_step|equilibration_detected_at_step|"
                                r"equilibration_steps|production_(steps_run|samples|(mean|sem|g)_\w+))$")


def _loop_keys(info) -> list:
    """Keys of ``info`` owned by the dynamics loop (results of an earlier run)."""
    return [key for key in info if key in _LOOP_KEYS or _STAGE_KEY.match(key) or _EQUILIBRATION_KEY.match(key)]


def _scalar(value):
    value = np.asarray(value).reshape(-1)[0]
    if value.dtype == np.bool_:
        return bool(value)
    return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)


def _stage_targets(stage):
    """``(temperature, pressure)`` attributes of a stage that uses them (None where it does not)."""
    temperature = getattr(stage, "temperature", None) if not getattr(stage, "is_optimizer", False) else None
    pressure = getattr(stage, "pressure", None)
    cell_filter = getattr(stage, "cell_filter", None)
    if cell_filter is not None and not isinstance(cell_filter.scalar_pressure, str):
        pressure = cell_filter.scalar_pressure
    elif getattr(stage, "is_optimizer", False):
        pressure = None
    return temperature, pressure


def stage_targets(stages) -> list[dict]:
    """Per stage, what :func:`record_stage_targets` needs, as JSON-serialisable dicts.

    ``method`` (:func:`stage_method`), ``temperature_K`` / ``pressure_GPa`` (the stage's own
    scalar targets, K / GPa, None without one) and ``takes_temperature`` / ``takes_pressure``
    (whether a frame's own target replaces them). A campaign keeps this list in its contract
    so its exported frames carry the same ``stage{k}_target_*`` keys as the CLI's.
    """
    from ase.units import GPa

    out = []
    for stage in stages:
        temperature, pressure = _stage_targets(stage)
        numeric = (int, float, np.floating, np.integer)
        out.append({
            "method": stage_method(stage),
            "temperature_K": float(temperature) if isinstance(temperature, numeric) else None,
            "takes_temperature": temperature is not None or bool(getattr(stage, "velocity_policy", None)),
            "pressure_GPa": float(pressure / GPa) if isinstance(pressure, (int, float)) else None,
            "takes_pressure": pressure is not None,
        })
    return out


def record_stage_targets(info: dict, frame_info: dict, targets: Sequence[dict]) -> None:
    """``stage{k}_target_temperature_K`` / ``stage{k}_target_pressure_GPa`` into ``info``.

    ``targets`` from :func:`stage_targets`; ``frame_info`` holds the frame's own
    ``temperature_K`` / ``pressure_GPa`` (they replace the stage's). Stages the system
    skipped (``info["stage{k}_status"] == "skipped"``) get none.
    """
    own_t, own_p = frame_info.get("temperature_K"), frame_info.get("pressure_GPa")
    for k, target in enumerate(targets):
        if info.get(f"stage{k}_status") == "skipped":
            continue  # the system never entered this stage: it ran at nothing
        if target["takes_temperature"]:
            value = own_t if own_t is not None else target["temperature_K"]
            if isinstance(value, (int, float, np.floating, np.integer)):
                info[f"stage{k}_target_temperature_K"] = float(value)
        if target["takes_pressure"]:
            value = own_p if own_p is not None else target["pressure_GPa"]
            if value is not None:
                info[f"stage{k}_target_pressure_GPa"] = float(value)


def _record_stage_info(atoms, frame_info: dict, stages) -> None:
    """``stage{k}_method`` and the targets each stage used for this frame (see :func:`results_to_atoms`)."""
    targets = stage_targets(stages)
    for k, target in enumerate(targets):
        atoms.info[f"stage{k}_method"] = target["method"]
    record_stage_targets(atoms.info, frame_info, targets)


def results_to_atoms(result_frames: Sequence[Atoms], inputs: Sequence[Atoms], stages=None) -> list[Atoms]:
    """Clean result frames: each is a copy of its input with the new positions and results.

    Parameters
    ----------
    result_frames : sequence of ase.Atoms
        Frames of graduated systems (from ``Batch.to_ase()`` or read back from an
        :class:`~batchmd.dynamics.sinks.ExtXYZSink` file), each with ``input_index`` in
        its info.
    inputs : sequence of ase.Atoms
        The input frames, indexed by ``input_index`` (a dict ``{input_index: atoms}`` for a
        subset of a file's frames).
    stages : sequence of Dynamics, optional
        The stages that ran: each frame then gets ``stage{k}_method`` (:func:`stage_method`)
        and, for stages with a temperature or pressure, the targets it ran at:
        ``stage{k}_target_temperature_K`` (K) and ``stage{k}_target_pressure_GPa`` (GPa;
        barostats and cell filters): the frame's own (``target_temperature`` /
        ``target_pressure``, see :func:`~batchmd.ase.frame_targets`) or the stage's.

    Returns
    -------
    list of ase.Atoms
        Sorted by ``input_index``. Arrays and info of the input are kept; positions, cell,
        momenta come from the result; energy, forces and stress are attached as a
        single-point calculator; ``atoms.info`` gets the :data:`RESULT_KEYS` and, where
        forces are known, ``fmax_atoms`` (eV/Å, :data:`DERIVED_KEYS`). A FAILED
        system (``info["status"] == "failed"``) gets ``info["failure"]`` (why and at which
        step, e.g. ``"non-finite cell at step 4"``, see
        :func:`batchmd.dynamics.status.failure_text`) and the geometry of that step, with
        its energy, forces and stress only when its energy is finite (they then belong to
        that geometry; see :mod:`batchmd.dynamics.guards`). If the final positions, cell or
        momenta are not finite, the input structure is kept, without results: an energy is
        never paired with another geometry (and ``fmax`` is NaN when no forces of that geometry
        are known).
        Constraints of the input (``FixAtoms``) are kept.
    """
    from batchmd.dynamics.status import SystemStatus, failure_text

    out = []
    for frame in result_frames:
        index = _scalar(frame.info["input_index"])
        atoms = inputs[index].copy()
        status = frame.info.get("status", 0)
        failed = status == "failed" or (not isinstance(status, str) and _scalar(status) == int(SystemStatus.FAILED))
        finite = np.isfinite(frame.positions).all() and np.isfinite(frame.cell.array).all() and (
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
        _equilibration_info(atoms.info, frame.info)
        if stages:
            _record_stage_info(atoms, frame.info, stages)
        if failed:
            step = frame.info.get("n_steps")
            reason = frame.info.get("failure", 0)  # bits (Batch.to_ase) or text (ExtXYZSink files)
            text = reason if isinstance(reason, str) else failure_text(
                _scalar(reason), None if step is None else _scalar(step))
            text = text or "failed"
            if not finite:
                text += "; non-finite positions, cell or momenta, input structure written instead"
            atoms.info["failure"] = text
        results = dict(frame.calc.results) if frame.calc is not None else {}
        energy = results.get("energy", results.get("free_energy"))
        consistent = finite and energy is not None and np.isfinite(energy).all()
        if failed and not consistent and "fmax" in atoms.info:
            atoms.info["fmax"] = float("nan")  # no forces of this geometry: never a stale or zero fmax
        if results and consistent:
            atoms.calc = SinglePointCalculator(atoms, **results)
            if results.get("forces") is not None and len(atoms):
                atoms.info["fmax_atoms"] = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
        out.append(atoms)
    out.sort(key=lambda a: a.info["input_index"])
    return out


def _stage_info(info: dict, source: dict) -> None:
    """Per-stage keys from ``source`` with statuses as names; overall ``status`` and ``converged``.

    The overall status is that of the last stage the system entered (an MD stage that ran
    its steps, or an optimizer stage without a convergence criterion that ran its
    ``n_steps``, is ``completed``, never ``converged``); ``converged`` is True when every
    optimizer stage converged (met its criterion) and no later stage failed (False for pure
    MD runs and for runs with an optimizer stage without a criterion).
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



def _equilibration_info(info: dict, source: dict) -> None:
    """The keys of an equilibration stage (:mod:`batchmd.dynamics.equilibration`); the status as text."""
    if "equilibration_status" not in source:
        return
    from batchmd.dynamics.equilibration import equilibration_status_text

    for key, value in source.items():
        if _EQUILIBRATION_KEY.match(key):
            info[key] = value if isinstance(value, str) else _scalar(value)
    status = info["equilibration_status"]
    if not isinstance(status, str):
        info["equilibration_status"] = equilibration_status_text(status, info.get("equilibration_steps"))
