"""How a ``batchmd`` run command runs: streamed partial results, interruption, resume, summaries.

While a command runs, every finished system is appended to ``OUTPUT.partial`` (extended
XYZ, flushed and fsynced per write) and the run's identity (input checksum, model,
stages, dtype, seeds) to ``OUTPUT.partial.json``. At the end the finished frames are put
in input order and written to ``OUTPUT`` in its format (atomically: a temporary file
renamed onto it), the per-structure summary ``OUTPUT_STEM.summary.csv`` is written beside
it, and the partial files are removed. A file named ``OUTPUT`` therefore always holds a
complete run.

Interruption: SIGINT (Ctrl-C) and SIGTERM stop the run; the finished frames stay in
``OUTPUT.partial`` and the message says so; the exit status is 130 (SIGINT) or 143
(SIGTERM). ``--resume`` (same command) reads the partial file, checks it belongs to the
same run (else one error line), and runs only the frames not finished. Each system's
result depends only on its own input and its input index (its ``system_id``, which seeds
its Langevin noise), so the final file is bitwise what an uninterrupted run writes (for
machine-learned potentials, under the conditions of docs/cli.rst, "Reproducibility").
Without ``--resume`` an existing partial file is an error (nothing is deleted).

``--resume`` with nothing to resume (no ``OUTPUT.partial``): when ``OUTPUT`` exists and its
summary's ``run_fingerprint`` column says it is this very run (same input checksum, model,
stages, dtype), the command says the output is complete and exits without recomputing
(status 0, or 3 if that run had failed frames); when ``OUTPUT`` exists from another run (or
its summary is missing), it refuses (status 2: nothing is overwritten); when there is no
``OUTPUT`` either, it says so and runs every frame.

Identity: every result frame carries ``input_index``, its position in the inputs (0-based,
over every input file in the order given) -- the identity to use -- and its origin,
``source_file`` and ``source_index`` (:mod:`batchmd.data.inputs`). With several input
files the run's identity checksums their bytes in order (a changed, added, removed or
reordered file is another run). ``system_id`` equals it in command-line runs (in the
library, :class:`~batchmd.dynamics.SizeAwareSampler` numbers systems in serving order
unless given ``system_ids``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import signal
import time
import warnings
from pathlib import Path

from batchmd.cli.errors import AlreadyComplete, CLIError, Interrupted

__all__ = ["RunReport", "file_checksum", "run_stages", "summary_path"]

log = logging.getLogger("batchmd")


def _frames_in(partial, fallback: int) -> int:
    """Frames written to ``partial`` (read back; ``fallback`` if it cannot be read)."""
    try:
        from batchmd.dynamics.sinks import read_extxyz

        return len(read_extxyz(partial))
    except Exception:  # a half-written last frame: count what the sink says
        return fallback


def file_checksum(path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def summary_path(output) -> Path:
    """``relaxed.extxyz`` -> ``relaxed.summary.csv`` (``POSCAR`` -> ``POSCAR.summary.csv``)."""
    output = Path(output)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(stem + ".summary.csv")


class RunReport:
    """What a run command produced: ``frames`` (input order), ``stats``, per-phase ``timings`` (s)."""

    def __init__(self, frames, stats, timings, output, summary, resumed: int, recorded=()) -> None:
        self.frames, self.stats, self.timings = frames, stats, timings
        self.output, self.summary, self.resumed = output, summary, resumed
        self.recorded = list(recorded)  # trajectory store / thermo log paths written


@contextlib.contextmanager
def _interruptible():
    """SIGTERM raises :class:`Interrupted` (like Ctrl-C) while the run is in progress."""

    def on_term(signum, frame):
        raise Interrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def fingerprint_digest(fingerprint: dict) -> str:
    """A run's identity as 16 hex digits (sha256 of its canonical JSON): the summary's ``run_fingerprint``."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_complete(output: Path, partial: Path, fingerprint: dict, n_frames: int) -> None:
    """``--resume`` without a partial file but with ``output``: raise :class:`AlreadyComplete` or :class:`CLIError`."""
    summary = summary_path(output)
    digest = fingerprint_digest(fingerprint)
    try:
        with open(summary, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error):
        rows = []
    if len(rows) == n_frames and all(row.get("run_fingerprint") == digest for row in rows):
        failed = sum(1 for row in rows if row.get("status") == "failed")
        note = f" ({failed} failed frames)" if failed else ""
        raise AlreadyComplete(f"--resume: {output} is already complete from this run{note} and there is no {partial}: "
                              "nothing to resume, nothing recomputed", 3 if failed else 0)
    raise CLIError(f"--resume: nothing to resume (no {partial}), and {output} exists from another run (its summary "
                   f"{summary.name} does not match this command): delete it, or run without --resume to overwrite it")


def _load_partial(partial: Path, meta_path: Path, fingerprint: dict, frames, resume: bool) -> dict:
    """Finished frames of an interrupted run, by input index (empty when starting fresh)."""
    if not partial.exists():
        if resume:
            log.warning("--resume: nothing to resume (no %s and no output yet); running every frame from the "
                        "beginning", partial)
        meta_path.unlink(missing_ok=True)
        return {}
    if not resume:
        raise CLIError(f"{partial} holds the finished frames of an interrupted run: add --resume to continue it, "
                       "or delete it to start over")
    try:
        saved = json.loads(meta_path.read_text())
    except (OSError, ValueError) as error:
        raise CLIError(f"--resume: {meta_path} is missing or unreadable; delete {partial} to start over") from error
    changed = sorted(key for key in set(saved) | set(fingerprint) if saved.get(key) != fingerprint.get(key))
    if changed:
        raise CLIError(f"--resume: {partial} is from a different run ({', '.join(changed)} changed); "
                       f"rerun the original command or delete {partial}")
    from batchmd.ase_results import _scalar
    from batchmd.dynamics.sinks import read_extxyz

    done = {}
    for atoms in read_extxyz(partial):
        index = _scalar(atoms.info.get("input_index", -1))
        if not 0 <= index < len(frames) or len(atoms) != len(frames[index]) \
                or (atoms.numbers != frames[index].numbers).any():
            raise CLIError(f"--resume: {partial} has a frame (input_index {index}) that does not match the input")
        done.setdefault(index, atoms)
    # Rewrite the partial file with its complete frames only (an interrupted write may have
    # left a truncated last frame), then append the rest of the run after them.
    _rewrite_partial(partial, done)
    return done


def _rewrite_partial(partial: Path, done: dict) -> None:
    """``partial`` holding exactly the frames of ``done`` (atomically)."""
    staging = partial.with_name(f".{partial.name}.tmp")
    from batchmd.data.info_io import write_frames

    write_frames(staging, [done[i] for i in sorted(done)], format="extxyz", fsync=True)
    os.replace(staging, partial)


#: g/cm^3 per amu/Å^3.
_G_CM3 = 1.66053906660


def _cell_columns(atoms) -> dict:
    """``volume_A3``, ``density_g_cm3`` and ``pressure_GPa`` of a result frame (empty where not defined).

    Volume and density need a fully periodic 3-D cell; the pressure, -trace(stress)/3, also
    needs the stress (models that compute it, in stages that ask for it: cell relaxation,
    NPT). Where the frame has momenta (MD) the stress includes the kinetic (ideal-gas) term,
    ASE's ``atoms.get_stress(include_ideal_gas=True)``: the instantaneous pressure of the
    final frame.
    """
    row = {"volume_A3": None, "density_g_cm3": None, "pressure_GPa": None}
    if not (atoms.pbc.all() and atoms.cell.rank == 3):
        return row
    volume = float(atoms.get_volume())
    row["volume_A3"] = volume
    row["density_g_cm3"] = float(atoms.get_masses().sum()) * _G_CM3 / volume
    results = atoms.calc.results if atoms.calc is not None else {}
    if results.get("stress") is not None:
        import ase.units

        stress = atoms.get_stress(voigt=True, include_ideal_gas=atoms.has("momenta"))
        row["pressure_GPa"] = float(-stress[:3].sum() / 3.0 / ase.units.GPa)
    return row


def _summary_rows(frames, stage_labels, run_fingerprint: str | None = None) -> list[dict]:
    rows = []
    for atoms in frames:
        info = atoms.info
        energy = atoms.calc.results.get("energy") if atoms.calc is not None else None
        row = {"input_index": info.get("input_index"), "source_file": info.get("source_file"),
               "source_index": info.get("source_index"), "formula": atoms.get_chemical_formula(),
               "n_atoms": len(atoms), "status": info.get("status"), "failure": info.get("failure", ""),
               "energy_eV": energy,
               "fmax": info.get("fmax"), "fmax_atoms": info.get("fmax_atoms"), "n_steps": info.get("n_steps"),
               **_cell_columns(atoms)}
        # Stage columns carry the frame's own info keys (stage{k}_status, ...), so a file and
        # its summary are read the same way; a pipeline may run one method twice.
        for k, label in enumerate(stage_labels):
            row[f"stage{k}_method"] = info.get(f"stage{k}_method", label)
            for suffix in ("status", "steps", "fmax", "temperature", "target_temperature_K", "target_pressure_GPa"):
                key = f"stage{k}_{suffix}"
                if key in info:
                    row[key] = info[key]
        if "equilibration_status" in info:  # an equilibration stage's results (batchmd.dynamics.equilibration)
            from batchmd.dynamics.equilibration import EQUILIBRATION_KEYS

            row.update({key: info[key] for key in EQUILIBRATION_KEYS if key in info})
        if run_fingerprint is not None:
            row["run_fingerprint"] = run_fingerprint
        rows.append(row)
    return rows


def _write_summary(path: Path, rows) -> None:
    fields = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    if "run_fingerprint" in fields:  # last column: the run's identity (see --resume)
        fields = [key for key in fields if key != "run_fingerprint"] + ["run_fingerprint"]
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(staging, path)


def summary_lines(report: RunReport, model_text: str, stage_labels) -> list[str]:
    """The end-of-run summary: model, counts per stage and status, energy range, failures, throughput."""
    from batchmd.progress import format_duration

    frames, stats = report.frames, report.stats
    lines = [f"model: {model_text}"]
    for k, label in enumerate(stage_labels):
        counts: dict = {}
        for atoms in frames:
            name = atoms.info.get(f"stage{k}_status", "?")
            counts[name] = counts.get(name, 0) + 1
        lines.append(f"stage {k} ({label}): " + ", ".join(f"{n} {name}" for name, n in sorted(counts.items())))
    energies = [(a.calc.results["energy"], len(a)) for a in frames  # a failed frame's energy is not a result
                if a.calc is not None and "energy" in a.calc.results and math.isfinite(a.calc.results["energy"])
                and a.info.get("status") != "failed"]
    if energies:
        per_atom = [e / n for e, n in energies]
        lines.append(f"energy: {min(e for e, _ in energies):.6g} .. {max(e for e, _ in energies):.6g} eV "
                     f"({min(per_atom):.6g} .. {max(per_atom):.6g} eV/atom)")
    failed = [a.info["input_index"] for a in frames if a.info.get("status") == "failed"]
    if failed:
        shown = ", ".join(str(i) for i in failed[:20]) + (", ..." if len(failed) > 20 else "")
        lines.append(f"failed (input index): {shown}")
    elapsed = report.timings.get("run", 0.0)
    rate = stats.atom_steps / elapsed if elapsed > 0 else 0.0
    resumed = f", {report.resumed} from the interrupted run" if report.resumed else ""
    lines.append(f"{len(frames)} systems{resumed} in {format_duration(elapsed)} ({rate:.3g} atom-steps/s)")
    return lines


def run_stages(frames, stages, output, *, max_atoms=None, refill_frequency: int = 10, device=None, dtype=None,
               quiet: bool = False, resume: bool = False, fingerprint: dict | None = None,
               model_info: dict | None = None, stage_labels=None, ignore_constraints: bool = False,
               guards: bool = True, recording: dict | None = None) -> RunReport:
    """Run ``stages`` over ``frames`` with inflight batching; write ``output`` and its summary.

    Parameters
    ----------
    frames : list of ase.Atoms
        Every input frame (in file order).
    stages : list of Dynamics
        The stages (sharing one model).
    output : path
        Output file (format from its extension, see :func:`batchmd.cli.common.output_format`).
    resume : bool
        Continue from ``OUTPUT.partial`` (see the module docstring).
    fingerprint : dict
        JSON-able identity of the run (input checksum, model, stages, dtype, ...);
        ``--resume`` refuses a partial file whose fingerprint differs.
    model_info : dict
        ``atoms.info`` entries naming the model and its parameters, added to every frame.
    stage_labels : list of str
        Names of the stages (``fire``, ``nvt``, ...), recorded as ``stage{k}_method``.
    ignore_constraints : bool
        Drop ASE constraints batchmd does not honour (``--ignore-constraints``).
    guards : bool
        The runaway guards (:mod:`batchmd.dynamics.guards`) on (default) or off (``--no-guards``).
    recording : dict, optional
        Trajectory store and thermo log options (:func:`batchmd.cli.recording.recording_options`);
        on ``--resume`` only systems complete in the partial output *and* in the store and log
        are kept (:mod:`batchmd.cli.recording`).

    Returns
    -------
    RunReport

    Raises
    ------
    AlreadyComplete
        ``resume`` and ``output`` is complete from this same run (nothing is run).
    CLIError
        A user error (nothing written).
    """
    from batchmd.cli.common import check_positive_int, output_writer

    timings = {}
    writer = output_writer(output, len(frames))
    check_positive_int("--max-atoms", max_atoms)
    check_positive_int("--refill-every", refill_frequency, allow_none=False)
    largest = max(len(a) for a in frames)
    if max_atoms is not None and max_atoms < largest:
        index = next(i for i, a in enumerate(frames) if len(a) == largest)
        raise CLIError(f"--max-atoms {max_atoms} is smaller than frame {index} ({largest} atoms)")
    output = Path(output)
    partial = output.with_name(output.name + ".partial")
    meta_path = output.with_name(output.name + ".partial.json")
    fingerprint = json.loads(json.dumps(fingerprint or {}, default=str))
    if resume and not partial.exists() and output.exists():
        _check_complete(output, partial, fingerprint, len(frames))
    done = _load_partial(partial, meta_path, fingerprint, frames, resume)
    from batchmd.cli import recording as rec

    rec.check_paths(recording, output, stages, resume)
    if recording is not None and resume and done:
        keep = rec.resume_keep(recording, output, done)
        if keep != set(done):
            log.warning("--resume: %d finished frames have no complete trajectory or log yet: rerunning them",
                        len(done) - len(keep))
            done = {i: done[i] for i in sorted(keep)}
            _rewrite_partial(partial, done)
    todo = [i for i in range(len(frames)) if i not in done]
    if done:
        log.info("resuming: %d of %d frames finished in %s; running %d", len(done), len(frames), partial, len(todo))
    meta_path.write_text(json.dumps(fingerprint, indent=1))
    recorders = rec.open_recorders(recording, output, stages, resume, set(done), refill_frequency)
    stats = None
    if todo:
        from batchmd.ase import run_frames
        from batchmd.dynamics.sinks import ExtXYZSink
        from batchmd.progress import ProgressHook

        progress = ProgressHook(frequency=refill_frequency, enabled=None if not quiet else False)
        sink = ExtXYZSink(partial)
        start = time.perf_counter()
        try:
            with _interruptible(), warnings.catch_warnings():
                from batchmd.dynamics.stages import NoProgressWarning

                warnings.simplefilter("ignore", NoProgressWarning)  # said in CLI terms below (_no_progress)
                result = run_frames([frames[i] for i in todo], stages, max_atoms=max_atoms,
                                    refill_frequency=refill_frequency, sinks=[sink], hooks=[progress, *recorders],
                                    device=device, dtype=dtype, collect=False, input_indices=todo,
                                    ignore_constraints=ignore_constraints, guards=guards)
        except KeyboardInterrupt as error:
            progress.close()
            with contextlib.suppress(CLIError):  # commit what was recorded; the interruption is the news
                rec.close_recorders(recorders)
            finished = _frames_in(partial, len(done) + len(sink))  # what the file holds, flushed or not
            signum = error.args[0] if isinstance(error, Interrupted) and error.args else signal.SIGINT
            name = signal.Signals(signum).name
            raise Interrupted(signum, f"interrupted ({name}): {finished} of {len(frames)} frames finished are in "
                                      f"{partial}; run the same command with --resume to continue") from None
        except BaseException as error:
            from batchmd.trajectory import TrajectoryWriteError

            progress.close()
            try:
                rec.close_recorders(recorders)
            except CLIError as closing:
                raise closing from error
            if isinstance(error, TrajectoryWriteError):  # pragma: no cover - close_recorders raises it first
                raise CLIError(f"{error}; free space and run the same command with --resume") from error
            raise
        progress.close()
        rec.close_recorders(recorders)
        stats = result.stats
        timings["run"] = time.perf_counter() - start
        _no_progress(stats)
    else:
        from batchmd.dynamics.hooks import RunStats

        stats = RunStats(systems_total=0)
        timings["run"] = 0.0
        rec.close_recorders(recorders)
    start = time.perf_counter()
    staging = output.with_name(f".{output.name}.tmp{output.suffix}")
    try:
        with _interruptible():
            finished = _write_output(partial, frames, output, staging, writer, stage_labels, model_info, stages)
    except KeyboardInterrupt as error:  # the run is over; only the output is missing
        staging.unlink(missing_ok=True)
        signum = error.args[0] if isinstance(error, Interrupted) and error.args else signal.SIGINT
        raise Interrupted(signum, f"interrupted ({signal.Signals(signum).name}) after the run: every frame is in "
                                  f"{partial}; run the same command with --resume to write {output}") from None
    summary = summary_path(output)
    _write_summary(summary, _summary_rows(finished, stage_labels or [], fingerprint_digest(fingerprint)))
    for atoms in finished:  # failed systems are written (status "failed", info "failure") and named here
        if "failure" in atoms.info:
            log.error("frame %d failed: %s (written with status=failed)", atoms.info["input_index"],
                      atoms.info["failure"])
    recorded = rec.finalize_recorders(recorders)  # before the partial file goes: a crash here resumes and merges again
    partial.unlink()
    meta_path.unlink(missing_ok=True)
    timings["write"] = time.perf_counter() - start
    return RunReport(finished, stats, timings, output, summary, resumed=len(done), recorded=recorded)


def _no_progress(stats) -> None:
    """One warning line when no frame took a step (FusedStage's NoProgressWarning, in the CLI's terms)."""
    if stats.atom_steps or not stats.systems_graduated:
        return
    parts = []
    if stats.systems_converged:
        parts.append(f"{stats.systems_converged} already met the convergence criterion at the start "
                     "(lower --fmax to relax further)")
    if stats.systems_failed:
        parts.append(f"{stats.systems_failed} failed at their first evaluation (named below)")
    if stats.systems_out_of_steps:
        parts.append(f"{stats.systems_out_of_steps} had no step budget (raise --max-steps / --steps)")
    log.warning("no frame took a step: %s; the output holds the input structures with their energies and forces",
                "; ".join(parts) or f"{stats.systems_graduated} frames graduated at their first evaluation")


def _write_output(partial, frames, output, staging, writer, stage_labels, model_info, stages=None) -> list:
    """Clean result frames from ``partial``, written to ``output`` through ``staging`` (atomic replace).

    With ``stages``, each frame records the temperature / pressure every stage ran it at
    (``stage{k}_target_temperature_K``, ``stage{k}_target_pressure_GPa``; see
    :func:`batchmd.ase.results_to_atoms`).
    """
    from batchmd.ase import results_to_atoms
    from batchmd.dynamics.sinks import read_extxyz

    finished = results_to_atoms(read_extxyz(partial), frames, stages=stages)
    if [a.info["input_index"] for a in finished] != list(range(len(frames))):
        raise CLIError(f"{partial}: {len(finished)} of {len(frames)} systems were written; output not created")
    for atoms in finished:
        for k, label in enumerate(stage_labels or []):
            atoms.info[f"stage{k}_method"] = label
        atoms.info.update(model_info or {})
    try:
        writer(finished, staging)
    except Exception as error:
        staging.unlink(missing_ok=True)
        raise CLIError(f"{output}: cannot write it as {writer.format} ({str(error).splitlines()[0]})") from error
    os.replace(staging, output)
    return finished
