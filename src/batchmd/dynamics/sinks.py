"""Sinks: where graduated systems go.

A sink is any object with ``write(batch)``; the dynamics loop writes each graduated
system to each sink exactly once (see :class:`~batchmd.dynamics.hooks.ConvergedSnapshotHook`).

- :class:`HostMemory`: keeps graduated systems in host memory; ``drain()`` returns one Batch.
- :class:`ExtXYZSink`: appends frames to an extended-XYZ file, flushed and fsynced after
  every write, so a crash loses at most the systems still in flight. Interchange format:
  readable by ASE, OVITO and most tools. :func:`read_extxyz` reads it back.

Large distributed runs write columnar result shards (Parquet, with checksums and a
commit log) through :mod:`batchmd.campaign`.

Example
-------
>>> from batchmd.dynamics.sinks import HostMemory
>>> sink = HostMemory(capacity=100)
>>> len(sink)
0
"""

from __future__ import annotations

import os

import torch

__all__ = ["HostMemory", "ExtXYZSink", "read_extxyz", "SinkFullError", "status_words"]


class SinkFullError(RuntimeError):
    """Raised when a bounded sink cannot take every system of a write (nothing is written)."""


class HostMemory:
    """Accumulate graduated systems in host (CPU) memory.

    Parameters
    ----------
    capacity : int
        Most systems held. A write that would exceed it raises :class:`SinkFullError`
        naming the capacity and writes nothing, so no system is silently dropped (the
        systems stay in the live batch; drain the sink and run again).

    Examples
    --------
    ``examples/inflight_batching.py``.
    """

    def __init__(self, capacity: int) -> None:
        if int(capacity) <= 0:
            raise ValueError(f"HostMemory: capacity must be > 0, got {capacity}")
        self.capacity = int(capacity)
        self._parts = []
        self._count = 0

    def __len__(self) -> int:
        """Number of systems held."""
        return self._count

    def write(self, batch) -> None:
        """Store the systems of ``batch`` (copied to the CPU)."""
        if batch.num_graphs == 0:
            return
        if self._count + batch.num_graphs > self.capacity:
            raise SinkFullError(
                f"HostMemory sink is full: capacity={self.capacity}, holding {self._count}, "
                f"cannot take {batch.num_graphs} more systems; nothing was written (raise the capacity or drain it)"
            )
        self._parts.append(batch.to("cpu"))
        self._count += batch.num_graphs

    def drain(self):
        """Return every held system as one CPU Batch and empty the sink (None if empty)."""
        if not self._parts:
            return None

        from batchmd.data.slots import concat_batches

        parts, self._parts, self._count = self._parts, [], 0
        return parts[0] if len(parts) == 1 else concat_batches(parts)

    def __repr__(self) -> str:
        return f"HostMemory(capacity={self.capacity}, held={self._count})"


def status_words(info: dict) -> dict:
    """``info`` with the dynamics loop's integer codes as the CLI's words (in place; returned).

    ``stage{k}_status`` -> its name (:func:`~batchmd.dynamics.stage_results.status_name`:
    ``converged``, ``completed``, ``out_of_steps``, ``failed``, ``skipped``); ``status`` ->
    the name of the last stage the system entered (as :func:`batchmd.ase.results_to_atoms`
    says it), else the name of its code; ``failure`` (FailureReason bits) -> the text of
    :func:`~batchmd.dynamics.status.failure_text` (dropped when 0: no failure).
    """
    import re

    from batchmd.dynamics.stage_results import status_name
    from batchmd.dynamics.status import failure_text

    stages = sorted(int(key[5:-7]) for key in info if re.fullmatch(r"stage\d+_status", key))
    for k in stages:
        info[f"stage{k}_status"] = status_name(info[f"stage{k}_status"])
    entered = [info[f"stage{k}_status"] for k in stages if info[f"stage{k}_status"] != "skipped"]
    if "status" in info:
        info["status"] = entered[-1] if entered else status_name(info["status"])
    if "failure" in info and not isinstance(info["failure"], str):
        code = int(info.pop("failure"))
        if code:
            steps = info.get("n_steps")
            info["failure"] = failure_text(code, None if steps is None else int(steps))
    return info


def _system_info(batch, index: int) -> dict:
    info = {}
    for name, level in batch.fields.items():
        if level != "system" or name.startswith("_") or name in ("cell", "pbc", "energies", "stress"):
            continue
        value = batch[name][index]
        if value.numel() == 1:
            scalar = value.reshape(()).item()
            info[name] = bool(scalar) if value.dtype == torch.bool else scalar
    return info


class ExtXYZSink:
    """Append graduated systems to an extended-XYZ file, durably.

    Parameters
    ----------
    path : str or os.PathLike
        File to append to (created if missing).
    fsync : bool
        ``os.fsync`` after every write (default True): a crash loses at most the systems
        in flight, never a written one.

    Notes
    -----
    Each frame carries positions (Å), numbers, cell, pbc, the energy (eV) and forces
    (eV/Å) as a single-point calculator, and every scalar system field (``system_id``,
    ``status``, ``converged``, ``n_steps``, ``fmax``, ``sample_index``, ...) in
    ``atoms.info``, statuses as the CLI's words (``converged``, ``completed``,
    ``out_of_steps``, ``failed``; ``failure`` as text, see :func:`status_words`), and the
    input's own info made portable (:func:`batchmd.data.info_io.portable_info`: multi-line
    strings, None, ... as every batchmd output writes them). Read it back with
    :func:`read_extxyz` or ``ase.io.read``.
    """

    def __init__(self, path, fsync: bool = True) -> None:
        self.path = os.fspath(path)
        self.fsync = fsync
        self._count = 0

    def __len__(self) -> int:
        """Systems written by this sink object."""
        return self._count

    def write(self, batch) -> None:
        """Append every system of ``batch`` as one frame each."""
        from batchmd.data.info_io import write_frames

        if batch.num_graphs == 0:
            return
        cpu = batch.to("cpu")
        frames = cpu.to_ase()
        for index, atoms in enumerate(frames):
            atoms.info.update(_system_info(cpu, index))
            status_words(atoms.info)
        write_frames(self.path, frames, format="extxyz", fsync=self.fsync, append=True)
        self._count += len(frames)


def read_extxyz(path, as_batch: bool = False, dtype=torch.float64):
    """Read a file written by :class:`ExtXYZSink`: a list of ``ase.Atoms`` or a Batch.

    A final frame cut short by a crash (a partial write) is dropped with a warning and
    every complete frame before it is returned.
    """
    import warnings

    import ase.io

    frames = []
    try:
        for atoms in ase.io.iread(os.fspath(path), index=":", format="extxyz"):
            frames.append(atoms)
    except Exception as error:  # a truncated trailing frame
        warnings.warn(f"read_extxyz: {path}: stopped after {len(frames)} complete frames ({error})", stacklevel=2)
    if not as_batch:
        return frames
    from batchmd.data import Batch

    return Batch.from_ase(frames, dtype=dtype)
