"""Read a trajectory store: the systems it holds, one system's frames as ase.Atoms or arrays.

Works on a merged store (one file with a per-system index) and on the segment folder of
a run in progress or interrupted (``PATH.parts/``; only committed segments are read).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from batchmd.trajectory.segments import parts_dir, segment_paths

__all__ = ["read_trajectory", "list_systems", "store_files", "SystemNotRecorded", "store_summary"]


class SystemNotRecorded(KeyError, ValueError):
    """The store holds no frame of the system asked for (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def store_files(path) -> list[Path]:
    """The HDF5 files making up the store ``path`` (``ValueError`` if there is none)."""
    path = Path(path)
    if path.is_file():
        return [path]
    segments = segment_paths(path)
    if segments:
        return segments
    if parts_dir(path).is_dir():
        return []
    raise ValueError(f"{path}: no trajectory store there (neither the file nor {parts_dir(path).name}/)")


def _check(f, file) -> None:
    if "batchmd_trajectory" not in f.attrs:
        raise ValueError(f"{file}: not a batchmd trajectory store (no batchmd_trajectory attribute)")


def list_systems(path) -> list[int]:
    """Sorted ids of the systems with at least one frame in the store ``path``."""
    import h5py

    files = store_files(path)
    ids = []
    for file in files:
        with h5py.File(file, "r") as f:
            _check(f, file)
            if "index" in f and len(files) == 1:  # a merged store: sorted and unique already
                return f["index/systems"][()].tolist()
            ids.append(np.unique(f["frames/system_id"][()]))
    return np.unique(np.concatenate(ids)).tolist() if ids else []


def store_summary(path) -> dict:
    """``{"systems", "frames", "atom_rows", "files", "fields", "complete"}`` of a store (for ``batchmd traj info``)."""
    import h5py

    files = store_files(path)
    frames = rows = 0
    fields = []
    for file in files:
        with h5py.File(file, "r") as f:
            _check(f, file)
            frames += f["frames/system_id"].shape[0]
            rows += f["atoms/positions"].shape[0]
            fields = json.loads(f.attrs.get("fields", "[]"))
    return {"systems": len(list_systems(path)), "frames": frames, "atom_rows": rows, "files": len(files),
            "fields": fields, "complete": Path(path).is_file()}


def _frames_of(f, system_id: int) -> np.ndarray:
    if "index" in f:
        systems = f["index/systems"][()]
        k = np.searchsorted(systems, system_id)
        if k == len(systems) or systems[k] != system_id:
            return np.zeros(0, np.int64)
        start, count = int(f["index/start"][k]), int(f["index/count"][k])
        return f["index/order"][start:start + count]
    return np.nonzero(f["frames/system_id"][()] == system_id)[0]


def read_trajectory(path, system_id: int, as_arrays: bool = False):
    """The recorded frames of one system, in step order.

    Parameters
    ----------
    path : path
        The store (merged file, or the path of a run whose segments are in ``path.parts/``).
    system_id : int
        The system (command-line runs: its input index).
    as_arrays : bool
        Return numpy arrays instead of ase.Atoms.

    Returns
    -------
    list of ase.Atoms, or dict
        Atoms with positions (Å), cell, pbc, numbers, and where recorded momenta (from
        velocities), forces (eV/Å), energy (eV) and stress (eV/Å^3) in a
        SinglePointCalculator; ``info``: ``step``, ``time_fs``, ``system_id``, ``stage``,
        ``stage_step``. With ``as_arrays``: ``step [T]``, ``time_fs [T]``, ``stage [T]``,
        ``stage_step [T]``, ``positions [T,N,3]``, ``cell [T,3,3]``, ``numbers [N]``,
        ``pbc [3]`` and where recorded ``velocities [T,N,3]`` (Å/fs), ``forces [T,N,3]``,
        ``energy [T]``, ``stress [T,3,3]``.

    Raises
    ------
    SystemNotRecorded
        (a KeyError and ValueError) when the store has no frame of ``system_id``.
    ValueError
        When ``path`` is not a trajectory store.
    """
    import h5py

    system_id = int(system_id)
    pieces = []
    for file in store_files(path):
        with h5py.File(file, "r") as f:
            _check(f, file)
            rows = np.sort(_frames_of(f, system_id))
            if not len(rows):
                continue
            indexed = "index" in f  # a merged store: read only this system's rows (sorted, unique)
            frame = {name: (ds[rows] if indexed else ds[()][rows]) for name, ds in f["frames"].items()}
            atoms = {}
            for name, ds in f["atoms"].items():
                atoms[name] = np.stack([ds[s:s + n] for s, n in zip(frame["atom_start"], frame["n_atoms"])])
            pieces.append((frame, atoms))
    if not pieces:
        ids = list_systems(path)
        span = f"{len(ids)} systems, ids {ids[0]}..{ids[-1]}" if ids else "no systems"
        raise SystemNotRecorded(f"system {system_id} was never recorded in {path} (it holds {span})")
    frame = {k: np.concatenate([p[0][k] for p in pieces]) for k in pieces[0][0]}
    atoms = {k: np.concatenate([p[1][k] for p in pieces]) for k in pieces[0][1]}
    order = np.lexsort((frame["stage"], frame["step"]))
    out = {"step": frame["step"][order], "time_fs": frame["time_fs"][order], "stage": frame["stage"][order],
           "stage_step": frame["stage_step"][order], "positions": atoms["positions"][order],
           "cell": frame["cell"][order], "numbers": atoms["numbers"][order[0]].astype(np.int64),
           "pbc": frame["pbc"][order[0]]}
    for name in ("velocities", "forces"):
        if name in atoms:
            out[name] = atoms[name][order]
    for name in ("energy", "stress"):
        if name in frame:
            out[name] = frame[name][order]
    if as_arrays:
        return out
    return _to_atoms(out, system_id)


def _to_atoms(arrays: dict, system_id: int) -> list:
    import ase
    import ase.units
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    numbers, pbc = arrays["numbers"], arrays["pbc"]
    for t in range(len(arrays["step"])):
        atoms = ase.Atoms(numbers=numbers, positions=arrays["positions"][t], cell=arrays["cell"][t], pbc=pbc)
        if "velocities" in arrays:
            atoms.set_velocities(arrays["velocities"][t] / ase.units.fs)  # Å/fs -> Å / ASE time
        results = {}
        if "energy" in arrays and np.isfinite(arrays["energy"][t]):
            results["energy"] = float(arrays["energy"][t])
        if "forces" in arrays:
            results["forces"] = arrays["forces"][t].copy()
        if "stress" in arrays and np.isfinite(arrays["stress"][t]).all():
            s = arrays["stress"][t]
            results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info.update(step=int(arrays["step"][t]), time_fs=float(arrays["time_fs"][t]), system_id=system_id,
                          stage=int(arrays["stage"][t]), stage_step=int(arrays["stage_step"][t]))
        frames.append(atoms)
    return frames
