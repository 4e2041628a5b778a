"""Trajectories and thermo logs on disk: every system of a run, every N of its steps.

- :class:`TrajectoryWriter`: a hook writing positions and cell (and optionally velocities,
  forces, energy, stress) of every system to one HDF5 store (:mod:`batchmd.trajectory.store`).
- :class:`ThermoLogHook`: a hook writing per-system thermodynamic rows to Parquet
  (:mod:`batchmd.trajectory.thermo`).
- Readers: :func:`read_trajectory`, :func:`list_systems`, :func:`read_thermo`;
  :func:`export_frames` writes chosen systems to extxyz / ASE .traj / H5MD.

Recording puts no host synchronisation in the step: systems due are packed on the device
and copied to the host at the loop's refill points, then written by a background thread
(:mod:`batchmd.trajectory.capture`, :mod:`batchmd.trajectory.writer`). Stores are written as
immutable segments and merged at the end (:mod:`batchmd.trajectory.segments`), so a killed
run leaves a store that opens, and ``--resume`` leaves exactly the frames of an
uninterrupted run. See docs/trajectories.rst.

Example
-------
>>> from batchmd.trajectory import TrajectoryWriter, ThermoLogHook, read_trajectory  # doctest: +SKIP
>>> with TrajectoryWriter("nvt.h5", every=10, stages=[nvt]) as traj, ThermoLogHook("nvt.parquet", 10, [nvt]) as log:
...     run_frames(frames, [nvt], hooks=[traj, log])
>>> frames_of_3 = read_trajectory("nvt.h5", 3)
"""

from batchmd.trajectory.export import export_frames, parse_systems
from batchmd.trajectory.reader import SystemNotRecorded, list_systems, read_trajectory, store_summary
from batchmd.trajectory.store import FIELDS, TrajectoryWriter, finalize_store
from batchmd.trajectory.thermo import COLUMNS, ThermoLogHook, finalize_log, read_thermo, thermo_path
from batchmd.trajectory.writer import TrajectoryWriteError

__all__ = ["TrajectoryWriter", "ThermoLogHook", "read_trajectory", "read_thermo", "list_systems", "export_frames",
           "parse_systems", "finalize_store", "finalize_log", "thermo_path", "store_summary", "SystemNotRecorded",
           "TrajectoryWriteError", "FIELDS", "COLUMNS"]
