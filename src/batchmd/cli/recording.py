"""Trajectory stores and thermo logs of run commands (``--trajectory``, ``--traj-every``, ``--log-every``).

The run commands (:mod:`batchmd.cli.runner`) call these around a run:

- :func:`check_paths`: an existing store or log is refused unless ``--resume`` (continue
  it) or ``--overwrite`` (replace it); a snapshot interval longer than every stage is
  refused (each system would get only its first frame), before anything is replaced;
- :func:`resume_keep`: on ``--resume``, the systems whose result is in ``OUTPUT.partial`` *and*
  whose frames and log rows are complete (marked done) in the store and log; the others
  rerun from their input frame and their earlier frames and rows are removed
  (:func:`~batchmd.trajectory.store.prepare_resume`), so the store ends with exactly the
  frames of an uninterrupted run;
- :func:`open_recorders` / :func:`close_recorders` / :func:`finalize_recorders`: the hooks
  given to the run, closed whatever happens (committing what was recorded), merged once the
  output is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from batchmd.cli.errors import CLIError

__all__ = ["add_recording_arguments", "recording_options", "check_paths", "resume_keep", "open_recorders",
           "close_recorders", "finalize_recorders", "log_path"]

log = logging.getLogger("batchmd")


def add_recording_arguments(parser, trajectory: bool = True) -> None:
    """``--trajectory``, ``--traj-every``, ``--traj-fields``, ``--log-every``, ``--overwrite``."""
    if trajectory:
        parser.add_argument("--trajectory", default=None, metavar="STORE.h5",
                            help="write every system's frames to this HDF5 store (docs/trajectories.rst)")
        parser.add_argument("--traj-every", type=int, default=None, metavar="N",
                            help="with --trajectory: a frame every N of each system's steps (default 10)")
        parser.add_argument("--traj-fields", default="", metavar="LIST",
                            help="with --trajectory: also record some of velocities,forces,energy,stress "
                                 "(positions and cell always)")
    parser.add_argument("--log-every", type=int, default=None, metavar="N",
                        help="write a thermo log (T, energies, pressure, volume, density, fmax per system every N "
                             "steps) to OUTPUT_STEM.thermo.parquet")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing trajectory store or thermo log (without it they are refused, "
                             "unless --resume)")


def log_path(output) -> Path:
    """The thermo log beside ``output`` (``nvt.extxyz`` -> ``nvt.thermo.parquet``)."""
    from batchmd.trajectory.thermo import thermo_path

    return thermo_path(output)


def recording_options(args, config=None) -> dict | None:
    """The recording options of a command (pipeline: the TOML keys win over nothing); None when none is set."""
    config = config or {}
    trajectory = config.get("trajectory", getattr(args, "trajectory", None))
    every = config.get("traj_every", getattr(args, "traj_every", None))
    fields = config.get("traj_fields", getattr(args, "traj_fields", None))
    log_every = config.get("log_every", getattr(args, "log_every", None))
    if trajectory is None and (every is not None or fields):
        raise CLIError("--traj-every and --traj-fields need --trajectory STORE.h5 (pipeline files: trajectory = ...)")
    if trajectory is None and log_every is None:
        return None
    every = 10 if every is None else every
    fields = fields or ""
    from batchmd.trajectory.store import check_fields

    for name, value in (("--traj-every", every), ("--log-every", log_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CLIError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        fields = list(check_fields(fields if not isinstance(fields, (list, tuple)) else ",".join(map(str, fields))))
    except ValueError as error:
        raise CLIError(f"--traj-fields: {error}") from None
    return {"trajectory": str(trajectory) if trajectory is not None else None, "traj_every": int(every),
            "traj_fields": fields, "log_every": log_every, "overwrite": bool(getattr(args, "overwrite", False))}


def fingerprint_part(recording: dict | None) -> dict:
    """What of the recording belongs to the run's identity (``--resume`` refuses a change)."""
    if recording is None:
        return {}
    out = {}
    if recording["trajectory"] is not None:
        out["trajectory"] = {"every": recording["traj_every"], "fields": recording["traj_fields"]}
    if recording["log_every"] is not None:
        out["log_every"] = recording["log_every"]
    return out


def _paths(recording: dict, output) -> list:
    paths = []
    if recording["trajectory"] is not None:
        paths.append(("trajectory store", Path(recording["trajectory"])))
    if recording["log_every"] is not None:
        paths.append(("thermo log", log_path(output)))
    return paths


def check_paths(recording: dict | None, output, stages, resume: bool) -> None:
    """Refuse an interval longer than the run, and existing stores (unless --resume / --overwrite)."""
    if recording is None:
        return
    from batchmd.trajectory.segments import parts_dir, remove_store, store_exists

    output = Path(output)
    longest = max((_stage_steps(s) for s in stages), default=0)  # checked first: nothing is replaced yet
    for option, every in (("--traj-every", recording["traj_every"] if recording["trajectory"] else None),
                          ("--log-every", recording["log_every"])):
        if every is not None and longest and every > longest:
            raise CLIError(f"{option} {every} is longer than every stage (at most {longest} steps): each system "
                           f"would get only its first frame of each stage; choose {option} <= {longest}")
    for label, path in _paths(recording, output):
        if path.resolve() == output.resolve():
            raise CLIError(f"the {label} {path} is the output file; choose another path")
        # --resume continues a store in segments (an interrupted run); a merged store is a complete
        # run's, continued only with that run's partial output (a crash just before it was removed)
        resumable = resume and (parts_dir(path).exists() or Path(str(output) + ".partial").exists())
        if store_exists(path) and not resumable:
            if recording["overwrite"]:
                remove_store(path)
                continue
            where = path if path.exists() else parts_dir(path)
            interrupted = parts_dir(path).exists() or Path(str(output) + ".partial").exists()
            hint = ("add --resume to continue its run, " if interrupted and not resume
                    else "it is a complete run's (no OUTPUT.partial to resume): ")
            raise CLIError(f"{label} {where} exists: {hint}--overwrite to replace it, or choose another path")


def _stage_steps(stage) -> int:
    n = getattr(stage, "n_steps", None)
    return int(n) if isinstance(n, int) else 0


def resume_keep(recording: dict | None, output, done) -> set:
    """Of the finished systems ``done`` (partial output), those also complete in the store and log."""
    keep = set(done)
    if recording is None:
        return keep
    from batchmd.trajectory.store import store_done_ids
    from batchmd.trajectory.thermo import log_done_ids

    for label, path in _paths(recording, output):
        try:
            marked = store_done_ids(path) if label == "trajectory store" else log_done_ids(path)
        except Exception as error:  # noqa: BLE001 - an unreadable store: its systems rerun
            log.warning("--resume: %s %s unreadable (%s): rerunning every system", label, path, error)
            marked = set()
        keep &= marked
    return keep


def open_recorders(recording: dict | None, output, stages, resume: bool, keep, refill_frequency: int) -> list:
    """Prepare the stores for this run (resume: keep only ``keep``'s frames) and return the recorder hooks."""
    if recording is None:
        return []
    from batchmd.trajectory import ThermoLogHook, TrajectoryWriter
    from batchmd.trajectory.store import prepare_resume
    from batchmd.trajectory.thermo import prepare_log_resume

    recorders = []
    for label, path in _paths(recording, output):
        if resume:
            (prepare_resume if label == "trajectory store" else prepare_log_resume)(path, keep)
        if label == "trajectory store":
            recorders.append(TrajectoryWriter(path, recording["traj_every"], recording["traj_fields"], stages=stages,
                                              flush_every=refill_frequency, resume=True))
        else:
            recorders.append(ThermoLogHook(path, recording["log_every"], stages, flush_every=refill_frequency,
                                           resume=True))
    return recorders


def close_recorders(recorders) -> None:
    """Close every recorder (commit what was recorded); the first write error becomes a CLIError."""
    from batchmd.trajectory import TrajectoryWriteError

    first = None
    for recorder in recorders:
        try:
            recorder.close()
        except TrajectoryWriteError as error:
            first = first or error
    if first is not None:
        raise CLIError(f"{first}; free space and run the same command with --resume") from first


def finalize_recorders(recorders) -> list:
    """Merge each store's segments into its file; returns the paths.

    A failure (e.g. a full disk) is one CLIError line: the segments stay, and the same command
    with ``--resume`` (the partial output is still there) merges again.
    """
    paths = []
    for recorder in recorders:
        try:
            paths.append(recorder.finalize())
        except OSError as error:
            raise CLIError(f"{recorder.path}: merging its segments failed ({error}); they stay in "
                           f"{recorder.path}.parts; free space and run the same command with --resume") from error
    return paths
