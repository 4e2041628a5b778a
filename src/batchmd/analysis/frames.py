"""Frames of one system from a trajectory store, chosen by stage and slice (shared by the observables).

Frames are read with :func:`batchmd.trajectory.read_trajectory`. ``time_fs`` restarts at
every stage (it is ``stage_step * dt``), so observables that need a time axis take the
frames of one stage: ``stage=-1`` (default) is the last stage recorded for the system
(production, in a relax -> equilibrate -> produce run), an int is that stage, ``None``
takes every frame.
"""

from __future__ import annotations

import numpy as np

__all__ = ["select", "load_atoms", "load_arrays"]


def _stage_rows(stages: np.ndarray, stage, system_id: int, store) -> np.ndarray:
    if stage is None:
        return np.arange(len(stages))
    present = np.unique(stages)
    if not isinstance(stage, (int, np.integer)) or isinstance(stage, bool):
        raise ValueError(f"stage must be an int (-1: the last recorded) or None (every frame), got {stage!r}")
    chosen = int(present[-1]) if stage == -1 else int(stage)
    rows = np.nonzero(stages == chosen)[0]
    if not len(rows):
        raise ValueError(f"system {system_id} has no frame of stage {chosen} in {store} "
                         f"(recorded stages: {', '.join(str(int(s)) for s in present)})")
    return rows


def select(stages: np.ndarray, stage, frames, system_id: int, store) -> np.ndarray:
    """Row indices of the frames of ``stage`` (see module docstring), then ``frames`` (a slice or index list)."""
    rows = _stage_rows(np.asarray(stages), stage, system_id, store)
    if frames is None:
        return rows
    if isinstance(frames, slice):
        return rows[frames]
    try:
        return rows[np.asarray(frames, dtype=np.int64)]
    except IndexError:
        raise ValueError(f"frames {frames!r} out of range: system {system_id} has {len(rows)} frames "
                         "in the chosen stage") from None


def load_arrays(store, system_id: int, stage=-1, frames=None) -> dict:
    """``read_trajectory(..., as_arrays=True)`` restricted to the chosen frames (``ValueError`` if none)."""
    from batchmd.trajectory import read_trajectory

    data = read_trajectory(store, system_id, as_arrays=True)
    rows = select(data["stage"], stage, frames, system_id, store)
    if not len(rows):
        raise ValueError(f"no frame of system {system_id} in {store} is selected by frames={frames!r}")
    out = dict(data)
    for key in ("step", "time_fs", "stage", "stage_step", "positions", "cell", "velocities", "forces", "energy",
                "stress"):
        if key in out:
            out[key] = out[key][rows]
    return out


def load_atoms(store, system_id: int, stage=-1, frames=None) -> list:
    """``read_trajectory(store, system_id)`` (list of ase.Atoms) restricted to the chosen frames."""
    from batchmd.trajectory import read_trajectory

    images = read_trajectory(store, system_id)
    rows = select(np.array([a.info["stage"] for a in images]), stage, frames, system_id, store)
    if not len(rows):
        raise ValueError(f"no frame of system {system_id} in {store} is selected by frames={frames!r}")
    return [images[k] for k in rows]
