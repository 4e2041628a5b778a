"""The body every run command shares: check options, read input, build model and stages, run, report.

Phases (each timed and logged with ``-v``): options, read, model, run, write. See
:mod:`batchmd.cli.runner` for partial files, interruption and ``--resume``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from batchmd.cli.errors import AlreadyComplete, CLIError

__all__ = ["execute", "init_warp_quietly"]

log = logging.getLogger("batchmd")

#: Exit status of a run that finished and wrote every frame, some of them with status ``failed``.
EXIT_SOME_FAILED = 3


def init_warp_quietly(verbose: bool = False) -> None:
    """Initialise Warp with its start-up messages captured (see :func:`batchmd.runtime.init_warp`).

    Warp prints "Could not find or load the NVIDIA CUDA driver" from C on machines
    without a GPU; that is not news to a CPU run. The captured text is logged at INFO
    level (shown with ``-v``), never printed otherwise.
    """
    from batchmd import runtime

    runtime.init_warp(quiet=True)


def frame_origin(message: str, frames) -> str:
    """``"input: frame 7 ..."`` -> ``"b.cif: frame 2 (input frame 7) ..."`` from the frame's origin keys."""
    import re

    match = re.match(r"input: frame (\d+)", message)
    if match is None or not 0 <= int(match.group(1)) < len(frames):
        return message
    index = int(match.group(1))
    info = frames[index].info
    if "source_file" not in info:
        return message
    where = f"{info['source_file']}: frame {info.get('source_index', '?')}"
    if info.get("source_index") != index:  # several input files: also the position over all of them
        where += f" (input frame {index})"
    return where + message[match.end():]


def _stage_label(spec: dict) -> str:
    return spec["method"]


def execute(args, command: str, stage_specs: list, *, input_path=None, output, frames=None, frames_hook=None,
            model_spec=None, extra_fingerprint=None, max_atoms=None, refill_every=None, device=None,
            dtype=None, recording=None) -> int:
    """Run ``stage_specs`` over the frames of ``input_path`` (or ``frames``) and write ``output``; returns 0.

    ``frames_hook(frames) -> frames`` prepares the frames (e.g. initial velocities);
    ``model_spec`` overrides the model options of ``args`` (pipeline files); ``recording``
    (:func:`batchmd.cli.recording.recording_options`; default: from ``args``) the trajectory
    store and thermo log options.
    """
    from batchmd.cli.common import default_dtype_name, output_writer, resolve_device, resolve_dtype
    from batchmd.cli.pipeline import build_stage, check_stage

    quiet = getattr(args, "quiet", False)
    ignore_constraints = bool(getattr(args, "ignore_constraints", False))
    if getattr(args, "deterministic", False):
        from batchmd.runtime import set_deterministic

        set_deterministic()
    timings = {}
    t0 = time.perf_counter()
    import warnings

    from batchmd.dynamics.ranges import UnusualValueWarning

    with warnings.catch_warnings():
        if command == "pipeline":  # load_config checked (and warned about) every stage, naming the file
            warnings.simplefilter("ignore", UnusualValueWarning)
        for i, spec in enumerate(stage_specs):
            check_stage(spec, where=f"{command}" if len(stage_specs) == 1 else f"{command}: stages[{i}]")
    output_writer(output)
    from batchmd.cli.recording import fingerprint_part, recording_options

    if recording is None:
        recording = recording_options(args)
    device = resolve_device(device if device is not None else getattr(args, "device", None))
    model_name = (model_spec or {}).get("name") or getattr(args, "model", None)
    dtype = resolve_dtype(dtype or getattr(args, "dtype", None) or default_dtype_name(model_name))
    init_warp_quietly()
    timings["start-up (options, torch, Warp)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from batchmd.cli.common import read_frames
    
    if frames is None:
        from batchmd.cli.common import input_files
        from batchmd.data.inputs import inputs_checksum

        files = input_files(input_path)
        for path in files:
            if Path(output).resolve() == Path(path).resolve():
                raise CLIError(f"the output {output} is the input file {path}: it would be overwritten; "
                               "choose another -o")
        frames = read_frames(files, ignore_constraints=ignore_constraints)
        checksum = inputs_checksum(files)
    else:
        checksum = f"generated: {len(frames)} frames"
    output_writer(output, len(frames))
    if frames_hook is not None:
        frames = frames_hook(frames)
    timings["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from batchmd.cli.models import build_model, model_info, model_text

    spec = dict(model_spec) if model_spec is not None else {
        "name": args.model, "sigma": args.sigma, "epsilon": args.epsilon, "cutoff": args.cutoff}
    name = spec.pop("name", "lj")
    model = build_model(name, frames, device=device, dtype=dtype, **spec)
    info = model_info(model, name)
    try:
        stages = [build_stage(s, model, where=command) for s in stage_specs]
    except (ValueError, TypeError) as error:  # a stage refusing this model (e.g. NPT without stress)
        raise CLIError(str(error).removeprefix("batchmd: ")) from None
    from batchmd.dynamics.admission import check_frames_admission

    try:  # every frame against every stage, before anything is written (a barostat on a molecule, ...)
        check_frames_admission(frames, stages, source="input")
    except ValueError as error:
        raise CLIError(frame_origin(str(error), frames)) from None
    labels = [_stage_label(s) for s in stage_specs]
    timings["model"] = time.perf_counter() - t0
    max_atoms = max_atoms if max_atoms is not None else getattr(args, "max_atoms", None)
    refill_every = refill_every if refill_every is not None else getattr(args, "refill_every", 10)
    from batchmd.ase import default_max_atoms

    log.info("model: %s", model_text(info))
    log.info("device %s, dtype %s, %d frames (%d atoms), live batch budget %s atoms, refill every %d steps",
             device, str(dtype).removeprefix("torch."), len(frames), sum(len(a) for a in frames),
             max_atoms if max_atoms is not None else f"{default_max_atoms(frames)} (default)", refill_every)
    log.info("stages: %s", " -> ".join(f"{s}" for s in stage_specs))

    nl = getattr(model, "neighbor_list", None)
    if nl is not None and log.isEnabledFor(logging.INFO):
        nl.count_rebuilds = True  # per-system rebuilds summed on the device (reported below)
    from batchmd.cli.runner import run_stages, summary_lines

    guards = not getattr(args, "no_guards", False)
    fingerprint = {"command": command, "input": checksum, "model": info, "stages": stage_specs,
                   "dtype": str(dtype), **({} if guards else {"guards": False}), **(extra_fingerprint or {})}
    if ignore_constraints:  # only when set: partial files of earlier runs keep their identity
        fingerprint["ignore_constraints"] = True
    fingerprint.update(fingerprint_part(recording))  # only when recording: earlier runs keep their identity
    try:
        report = run_stages(frames, stages, output, max_atoms=max_atoms, refill_frequency=refill_every,
                            device=device, dtype=dtype, quiet=quiet, resume=getattr(args, "resume", False),
                            fingerprint=fingerprint, model_info=info, stage_labels=labels,
                            ignore_constraints=ignore_constraints, guards=guards, recording=recording)
    except AlreadyComplete as done:
        message, status = done.args
        if not quiet:
            print(f"batchmd: {message}")
        return status
    timings.update(report.timings)
    stats = report.stats
    refill_points = stats.steps // max(1, refill_every)
    log.info("run: %d steps, %d refill points, %d in-place refills, %d atom-steps", stats.steps, refill_points,
             stats.refills_in_place, stats.atom_steps)
    if nl is not None and getattr(nl, "capacity", None):
        count = getattr(nl, "rebuild_count", None)
        log.info("neighbor list: cutoff %.4g Å + skin %.3g Å, capacity %d neighbors per atom, %s system rebuilds",
                 getattr(nl, "cutoff", model.cutoff), nl.skin, nl.capacity, "?" if count is None else int(count))
    log.info("timings: %s", ", ".join(f"{k} {v:.3f} s" for k, v in timings.items()))
    if not quiet:
        for line in summary_lines(report, model_text(info), labels):
            print(line)
        extra = [str(p) for p in report.recorded]
        print(f"wrote {output}, {report.summary}" + "".join(f", {p}" for p in extra) if extra
              else f"wrote {output} and {report.summary}")
    failed = sum(1 for atoms in report.frames if atoms.info.get("status") == "failed")
    return EXIT_SOME_FAILED if failed else 0
