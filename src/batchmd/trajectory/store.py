"""The trajectory store: frames of every system in one HDF5 file, a ragged layout.

Layout (``FORMAT`` version 1; every segment and the merged file alike; F frames, A atom rows)::

    /                       attrs: batchmd_trajectory = 1, units (JSON), fields
    /frames/system_id       int64 [F]     the system (CLI: its input index)
    /frames/step            int64 [F]     the system's steps taken in total (over all stages)
    /frames/stage           int32 [F]     stage index; /frames/stage_step int64 [F] steps in that stage
    /frames/time_fs         float64 [F]   stage_step * dt of the stage (fs; NaN in optimizer stages)
    /frames/n_atoms         int64 [F]     atoms of the frame
    /frames/atom_start      int64 [F]     first row of the frame in /atoms/*
    /frames/cell            float [F,3,3] Å;  /frames/pbc bool [F,3]
    /frames/energy          float [F]     eV            (field "energy")
    /frames/stress          float [F,3,3] eV/Å^3        (field "stress"; NaN where not computed)
    /atoms/positions        float [A,3]   Å
    /atoms/numbers          uint8 [A]
    /atoms/velocities       float [A,3]   Å/fs          (field "velocities")
    /atoms/forces           float [A,3]   eV/Å          (field "forces")
    /done/system_id         int64 [D]     systems whose every frame is in this file (they graduated)
    /index/systems, /index/start, /index/count [S], /index/order [F]   (merged file only: frames of
                            system s are order[start:start+count], sorted by step)

Floats keep the run's dtype (float32 or float64), so float64 runs are stored bit for bit.
Frames are appended in the order the run produced them (systems interleaved); the
per-system index makes reading one system's frames one lookup. See docs/trajectories.rst.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from batchmd.trajectory.capture import FileRecorder
from batchmd.trajectory.segments import (atomic_write, discard_parts, next_segment, parts_dir, reopen_merged,
                                         segment_paths)
from batchmd.trajectory.writer import BackgroundWriter

__all__ = ["TrajectoryWriter", "FIELDS", "FORMAT", "finalize_store", "store_done_ids", "prepare_resume",
           "stage_timesteps"]

log = logging.getLogger("batchmd")

FORMAT = 1
#: Optional per-frame fields (positions, cell, pbc and numbers are always recorded).
FIELDS = ("velocities", "forces", "energy", "stress")
UNITS = {"positions": "Å", "cell": "Å", "velocities": "Å/fs", "forces": "eV/Å", "energy": "eV",
         "stress": "eV/Å^3", "time_fs": "fs"}


def stage_timesteps(stages) -> list:
    """Per stage: the MD time step in fs (stages with a velocity policy and a ``dt``), else None."""
    out = []
    for stage in stages or []:
        dt = getattr(stage, "dt", None)
        md = getattr(stage, "velocity_policy", None) is not None
        out.append(float(dt) if md and isinstance(dt, (int, float)) else None)
    return out


def check_fields(fields) -> tuple:
    """``fields`` as a tuple of known names (``ValueError`` naming an unknown one)."""
    if isinstance(fields, str):
        fields = [f for f in fields.split(",") if f.strip()]
    fields = tuple(dict.fromkeys(str(f).strip() for f in fields))
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise ValueError(f"unknown trajectory field {unknown[0]!r}: choose from {', '.join(FIELDS)} "
                         "(positions and cell are always recorded)")
    return fields


class _H5Target:
    """Gathers host rows and writes HDF5 segments (runs in the writer thread)."""

    def __init__(self, path: Path, fields: tuple, dt_table: list) -> None:
        self.path, self.fields, self.dt_table = Path(path), fields, dt_table
        self._rows, self._done = [], []
        self._float = np.float64
        self.pending_bytes = 0
        self.segments = 0
        self.frames = 0

    def add(self, arrays: dict) -> None:
        self._float = arrays["sys_float"].dtype  # the run's dtype, also for segments holding only marks
        self._rows.append(arrays)
        self.pending_bytes += sum(a.nbytes for a in arrays.values())

    def mark_done(self, ids) -> None:
        self._done.extend(int(i) for i in ids)

    def committed_text(self) -> str:
        return f"the {self.segments} segments ({self.frames} frames) committed before in {parts_dir(self.path)}"

    def commit(self) -> None:
        if not self._rows and not self._done:
            return
        f = self.fields
        width_s = 9 + ("energy" in f) + 9 * ("stress" in f)
        width_a = 3 + 3 * ("velocities" in f) + 3 * ("forces" in f)
        sys_f = np.concatenate([r["sys_float"] for r in self._rows]) if self._rows else np.zeros((0, width_s), self._float)
        sys_i = np.concatenate([r["sys_int"] for r in self._rows]) if self._rows else np.zeros((0, 8), np.int64)
        atom_f = np.concatenate([r["atom_float"] for r in self._rows]) if self._rows else np.zeros((0, width_a), self._float)
        atom_i = np.concatenate([r["atom_int"] for r in self._rows]) if self._rows else np.zeros(0, np.int64)
        done = np.asarray(self._done, dtype=np.int64)
        data = self._datasets(sys_f, sys_i, atom_f, atom_i)
        data["done/system_id"] = done
        atomic_write(next_segment(self.path, "h5"), lambda tmp: write_h5(tmp, data, self.fields))
        self.segments += 1
        self.frames += len(sys_i)
        self._rows, self._done, self.pending_bytes = [], [], 0

    def _datasets(self, sys_f, sys_i, atom_f, atom_i) -> dict:
        import ase.units

        n_atoms = sys_i[:, 4]
        stage = sys_i[:, 2].astype(np.int32)
        dt = np.array([np.nan if d is None else d for d in self.dt_table] or [np.nan], dtype=np.float64)
        dt_of = dt[np.clip(stage, 0, len(dt) - 1)] if len(dt) else np.full(len(stage), np.nan)
        data = {
            "frames/system_id": sys_i[:, 0], "frames/step": sys_i[:, 1], "frames/stage": stage,
            "frames/stage_step": sys_i[:, 3], "frames/time_fs": sys_i[:, 3].astype(np.float64) * dt_of,
            "frames/n_atoms": n_atoms, "frames/atom_start": np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(
                np.int64) if len(n_atoms) else np.zeros(0, np.int64),
            "frames/cell": sys_f[:, :9].reshape(-1, 3, 3), "frames/pbc": sys_i[:, 5:8].astype(bool),
            "atoms/positions": atom_f[:, :3], "atoms/numbers": atom_i.astype(np.uint8),
        }
        col = 9
        if "energy" in self.fields:
            data["frames/energy"] = sys_f[:, col]
            col += 1
        if "stress" in self.fields:
            data["frames/stress"] = sys_f[:, col:col + 9].reshape(-1, 3, 3)
        col = 3
        if "velocities" in self.fields:
            data["atoms/velocities"] = atom_f[:, col:col + 3] * ase.units.fs  # Å / ASE time -> Å/fs
            col += 3
        if "forces" in self.fields:
            data["atoms/forces"] = atom_f[:, col:col + 3]
        return data


def write_h5(path, data: dict, fields, index: dict | None = None) -> None:
    """Write one segment (or the merged file) with the layout of the module docstring."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["batchmd_trajectory"] = FORMAT
        f.attrs["units"] = json.dumps(UNITS)
        f.attrs["fields"] = json.dumps(list(fields))
        for name, array in {**data, **{f"index/{k}": v for k, v in (index or {}).items()}}.items():
            f.create_dataset(name, data=np.ascontiguousarray(array))


class TrajectoryWriter(FileRecorder):
    """Write every system's frames every ``every`` of its steps to one store (a hook).

    Give it to a run as a hook (``run_frames(..., hooks=[traj])``, ``FusedStage(hooks=[traj])``)
    and close it after the run (or use it as a context manager: a run that raises leaves
    the committed segments, resumable; one that returns is merged into ``path``).

    Parameters
    ----------
    path : path
        The store (``.h5``); refused if it or ``path.parts`` exists, unless ``overwrite`` or ``resume``.
    every : int
        Frames at each system's own stage steps 0, every, 2 every, ... (>= 1).
    fields : sequence of str or str
        Optional fields among ``velocities`` (Å/fs), ``forces`` (eV/Å), ``energy`` (eV),
        ``stress`` (eV/Å^3); positions (Å), cell, pbc and numbers are always recorded.
    dt_fs : float, sequence or None
        MD time step per stage (fs) for ``time_fs``; or pass ``stages`` instead.
    stages : list of Dynamics, optional
        The run's stages (their MD time steps give ``time_fs``).
    flush_every : int
        Steps between device-to-host flushes (the loop's refill frequency; default 10).
    overwrite, resume : bool
        Replace an existing store / append to the segments of an interrupted run (see
        :func:`prepare_resume`).
    max_queue, commit_bytes, commit_seconds
        See :class:`~batchmd.trajectory.writer.BackgroundWriter`.

    Raises
    ------
    ValueError
        Bad ``every`` / ``fields``, or the store exists (neither ``overwrite`` nor ``resume``).
    TrajectoryWriteError
        From the run or :meth:`close`, when writing fails (e.g. disk full); committed
        segments stay readable.
    """

    has_atoms = True

    def __init__(self, path, every: int = 10, fields=(), *, dt_fs=None, stages=None, flush_every: int = 10,
                 overwrite: bool = False, resume: bool = False, max_queue: int = 8, commit_bytes: int = 64 << 20,
                 commit_seconds: float | None = None) -> None:
        self.check_intervals(every, flush_every)
        self.fields = check_fields(fields)
        if stages is not None:
            dt_table = stage_timesteps(stages)
        elif dt_fs is None or isinstance(dt_fs, (int, float)):
            dt_table = [dt_fs]
        else:
            dt_table = list(dt_fs)
        self.path = self.open_path(path, "trajectory store", "h5", overwrite, resume)
        self._target = _H5Target(self.path, self.fields, dt_table)
        self.n_stages = len(stages) if stages is not None else None
        super().__init__(every, BackgroundWriter(self._target, max_queue, commit_bytes, commit_seconds), flush_every)

    def system_float(self, batch) -> torch.Tensor:
        b = batch.num_graphs
        cols = [batch.cell.reshape(b, 9)]
        if "energy" in self.fields:
            cols.append(batch.energies.reshape(b, 1) if batch.energies is not None
                        else torch.full((b, 1), float("nan"), dtype=batch.dtype, device=batch.device))
        if "stress" in self.fields:
            stress = batch["stress"] if batch.has_field("stress") else None
            cols.append(stress.reshape(b, 9) if stress is not None
                        else torch.full((b, 9), float("nan"), dtype=batch.dtype, device=batch.device))
        return torch.cat(cols, dim=1) if len(cols) > 1 else cols[0]

    def atom_float(self, batch) -> torch.Tensor:
        cols = [batch.positions]
        if "velocities" in self.fields:
            cols.append(batch.velocities if batch.velocities is not None else torch.zeros_like(batch.positions))
        if "forces" in self.fields:
            cols.append(batch.forces if batch.forces is not None else torch.zeros_like(batch.positions))
        return torch.cat(cols, dim=1) if len(cols) > 1 else cols[0]

    def atom_int(self, batch) -> torch.Tensor:
        return batch.atomic_numbers.reshape(-1).long()

    def finalize(self) -> Path:
        """Merge the committed segments into ``path`` (after :meth:`close`); returns ``path``."""
        return finalize_store(self.path)


# --------------------------------------------------------------------- whole-store operations
def _read_h5(path) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        fields = json.loads(f.attrs.get("fields", "[]"))
        for group in ("frames", "atoms", "done"):
            if group in f:
                for name, ds in f[group].items():
                    out[f"{group}/{name}"] = ds[()]
    return out, fields


def store_done_ids(path) -> set:
    """System ids marked complete in the store (its segments, or the merged file)."""
    import h5py

    done = set()
    files = segment_paths(path) or ([Path(path)] if Path(path).is_file() else [])
    for file in files:
        with h5py.File(file, "r") as f:
            if "done/system_id" in f:
                done.update(int(i) for i in f["done/system_id"][()])
    return done


def _filter(data: dict, keep_frames: np.ndarray, keep_done: np.ndarray) -> dict:
    starts, counts = data["frames/atom_start"][keep_frames], data["frames/n_atoms"][keep_frames]
    rows = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts)]) if len(starts) else \
        np.zeros(0, np.int64)
    out = {}
    for name, array in data.items():
        if name.startswith("frames/"):
            out[name] = array[keep_frames]
        elif name.startswith("atoms/"):
            out[name] = array[rows]
        elif name.startswith("done/"):
            out[name] = array[keep_done]
    out["frames/atom_start"] = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else \
        np.zeros(0, np.int64)
    return out


def prepare_resume(path, keep) -> None:
    """Before resuming a run: keep only the frames and marks of systems in ``keep``.

    The systems not kept rerun from their input frame, and write their frames again. A
    merged store (``path`` itself) becomes segment 0 again. Each segment is rewritten in
    place (atomically) or removed: a crash here leaves a store this function can prepare again.
    """
    path = Path(path)
    keep = np.asarray(sorted(int(i) for i in keep), dtype=np.int64)
    reopen_merged(path, "h5")
    for segment in segment_paths(path):
        data, fields = _read_h5(segment)
        frames = np.isin(data["frames/system_id"], keep)
        done = np.isin(data.get("done/system_id", np.zeros(0, np.int64)), keep)
        if frames.all() and done.all():
            continue
        if not frames.any() and not done.any():
            segment.unlink()
            continue
        data.setdefault("done/system_id", np.zeros(0, np.int64))
        atomic_write(segment, lambda tmp, d=_filter(data, frames, done), fl=fields: write_h5(tmp, d, fl))


def finalize_store(path) -> Path:
    """Merge the segments of ``path`` into the single file ``path`` with its per-system index.

    Frames are concatenated in segment order; ``/index`` lists each system's frames sorted
    by (step, stage). Written aside and renamed into place, then the segment folder is
    removed. A store that is already merged is left as it is.
    """
    path = Path(path)
    segments = segment_paths(path)
    if not segments:
        if not path.exists():  # a run that recorded nothing: an empty, valid store
            atomic_write(path, lambda tmp: write_h5(tmp, _empty(), (), index=_index({})))
        discard_parts(path)
        return path
    import h5py

    tables, atom_shapes, fields = [], {}, []
    for segment in segments:  # pass 1: the small per-frame tables; atom datasets' shapes
        with h5py.File(segment, "r") as f:
            fields = json.loads(f.attrs.get("fields", "[]"))
            table = {f"{g}/{n}": ds[()] for g in ("frames", "done") if g in f for n, ds in f[g].items()}
            tables.append(table)
            for name, ds in f["atoms"].items():
                rows, kind = atom_shapes.get(name, (0, None))
                if kind is None or ds.shape[0]:  # the dtype of segments with rows
                    kind = (ds.shape[1:], ds.dtype)
                atom_shapes[name] = (rows + ds.shape[0], kind)
    merged, offset = {}, 0
    for table in tables:
        table["frames/atom_start"] = table["frames/atom_start"] + offset
        offset += int(table["frames/n_atoms"].sum())
    for name in sorted({n for t in tables for n in t}):
        merged[name] = np.concatenate([t[name] for t in tables if name in t])

    def write(tmp):
        write_h5(tmp, merged, fields, index=_index(merged))
        with h5py.File(tmp, "a") as out:  # pass 2: atom rows, one segment at a time (bounded memory)
            targets = {name: out.create_dataset(f"atoms/{name}", shape=(rows, *shape), dtype=dtype)
                       for name, (rows, (shape, dtype)) in atom_shapes.items()}
            at = 0
            for segment in segments:
                with h5py.File(segment, "r") as f:
                    n = 0
                    for name, ds in f["atoms"].items():
                        n = ds.shape[0]
                        if n:
                            targets[name][at:at + n] = ds[()]
                    at += n

    atomic_write(path, write)
    discard_parts(path)
    return path


def _empty() -> dict:
    return {"frames/system_id": np.zeros(0, np.int64), "frames/step": np.zeros(0, np.int64),
            "frames/stage": np.zeros(0, np.int32), "frames/stage_step": np.zeros(0, np.int64),
            "frames/time_fs": np.zeros(0), "frames/n_atoms": np.zeros(0, np.int64),
            "frames/atom_start": np.zeros(0, np.int64), "frames/cell": np.zeros((0, 3, 3)),
            "frames/pbc": np.zeros((0, 3), bool), "atoms/positions": np.zeros((0, 3)),
            "atoms/numbers": np.zeros(0, np.uint8), "done/system_id": np.zeros(0, np.int64)}


def _index(data: dict) -> dict:
    sid = data.get("frames/system_id", np.zeros(0, np.int64))
    if not len(sid):
        z = np.zeros(0, np.int64)
        return {"systems": z, "start": z, "count": z, "order": z}
    order = np.lexsort((data["frames/stage"], data["frames/step"], sid))
    systems, start, count = np.unique(sid[order], return_index=True, return_counts=True)
    return {"systems": systems, "start": start.astype(np.int64), "count": count.astype(np.int64),
            "order": order.astype(np.int64)}
