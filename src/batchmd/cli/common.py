"""Shared pieces of the ``batchmd`` commands: reading inputs, building models, writing outputs.

Every user error is raised as :class:`CLIError` with a one-line message naming the file,
frame or option; :func:`batchmd.cli.main.main` prints it and exits non-zero.

Outputs are written atomically: graduated systems stream into ``OUTPUT.partial`` (a
durable :class:`~batchmd.dynamics.sinks.ExtXYZSink`, so a crash keeps what finished), and
only at the end are they sorted by input index, written to a temporary file and renamed
onto ``OUTPUT``. A file named ``OUTPUT`` therefore always holds a complete run.

New output formats register a writer in :data:`OUTPUT_FORMATS` (extension -> callable
``writer(frames, path)`` writing a complete file at ``path``); see :func:`output_writer`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

__all__ = [
    "CLIError",
    "OUTPUT_FORMATS",
    "add_model_arguments",
    "add_run_arguments",
    "build_model",
    "output_writer",
    "read_frames",
    "resolve_device",
    "resolve_dtype",
    "run_stages",
]


class CLIError(Exception):
    """A user error: the message is printed as one line and the command exits with status 2."""


# ----------------------------------------------------------------------------- inputs
def read_frames(path) -> list:
    """Read every frame of ``path`` with ASE (extxyz, ASE trajectory, ASE database, ...).

    Raises
    ------
    CLIError
        Missing or unreadable file, no frames, a frame with no atoms, NaN/inf coordinates.
    """
    import ase.io

    from batchmd.ase import check_frames

    path = Path(path)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if not path.is_file():
        raise CLIError(f"{path}: not a file")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as error:  # ASE raises many types for unreadable files
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CLIError(f"{path}: cannot read it with ASE ({message})") from error
    if not isinstance(frames, list):
        frames = [frames]
    try:
        check_frames(frames, source=str(path))
    except ValueError as error:
        raise CLIError(str(error)) from error
    return frames


# ----------------------------------------------------------------------------- models
MODELS = ("lj", "emt")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--sigma``, ``--epsilon``, ``--cutoff`` (Lennard-Jones defaults: argon)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="lj", choices=MODELS,
                       help="lj: batchmd's Lennard-Jones (Warp); emt: ASE's EMT through ASECalculatorModel (slow)")
    group.add_argument("--sigma", type=float, default=3.405, help="LJ sigma, Å (default: argon, 3.405)")
    group.add_argument("--epsilon", type=float, default=0.0104, help="LJ epsilon, eV (default: argon, 0.0104)")
    group.add_argument("--cutoff", type=float, default=None, help="LJ cutoff, Å (default: 2.5 sigma)")


def neighbor_capacity(frames, cutoff: float, skin: float = 1.0) -> int:
    """Neighbors per atom to allocate for ``frames`` (1.5x the densest frame's estimate + 16).

    One capacity for every system keeps the model's neighbor-list fields the same width
    across refills (systems refilled into the live batch carry lists of that width).
    """
    reach = 4.0 / 3.0 * math.pi * (cutoff + skin) ** 3
    worst = 1
    for atoms in frames:
        if atoms.pbc.all() and atoms.cell.rank == 3:
            worst = max(worst, int(len(atoms) / atoms.cell.volume * reach) + 1)
        else:
            worst = max(worst, len(atoms) * (1 + int(atoms.pbc.sum()) * 8))
    return int(1.5 * worst) + 16


def build_model(name: str, sigma: float = 3.405, epsilon: float = 0.0104, cutoff: float | None = None,
                frames=None):
    """Build the model named ``name`` ("lj" or "emt"); a bad parameter raises :class:`CLIError`.

    ``frames`` (optional) sizes the Lennard-Jones neighbor list once for all of them.
    """
    if name == "lj":
        from batchmd.models.lj import LennardJones

        for option, value in (("--sigma", sigma), ("--epsilon", epsilon), ("--cutoff", cutoff)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise CLIError(f"{option} must be a positive finite number, got {value}")
        cutoff = 2.5 * sigma if cutoff is None else cutoff
        capacity = None if frames is None else neighbor_capacity(frames, cutoff)
        return LennardJones(sigma=sigma, epsilon=epsilon, cutoff=cutoff, capacity=capacity)
    if name == "emt":
        from ase.calculators.emt import EMT

        from batchmd.models.ase_calculator import ASECalculatorModel

        return ASECalculatorModel(EMT())
    raise CLIError(f"--model: unknown model {name!r} (choose from {', '.join(MODELS)})")


# ----------------------------------------------------------------------------- run options
def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every run command shares: output, batch budget, device, dtype, progress."""
    parser.add_argument("-o", "--output", required=True, help="output file (.extxyz or .xyz)")
    parser.add_argument("--max-atoms", type=int, default=None,
                        help="atom budget of the live batch (default: all atoms, at most 4096)")
    parser.add_argument("--refill-every", type=int, default=10, help="steps between refill points (default 10)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"), help="default float64")
    parser.add_argument("--quiet", action="store_true", help="no progress line and no summary")


def resolve_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"float64"`` to a torch dtype."""
    if name not in ("float32", "float64"):
        raise CLIError(f"--dtype: expected float32 or float64, got {name!r}")
    return getattr(torch, name)


def resolve_device(name: str) -> torch.device:
    """Validate ``--device`` (cpu, cuda, cuda:N) and check that CUDA is there when asked for."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise CLIError(f"--device: unknown device {name!r}") from error
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device: expected cpu or cuda, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: CUDA is not available on this machine")
    return device


def check_positive_int(option: str, value, allow_none: bool = True) -> None:
    """Raise :class:`CLIError` unless ``value`` is a positive integer (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CLIError(f"{option} must be a positive integer, got {value!r}")


# ----------------------------------------------------------------------------- outputs
def _write_extxyz(frames, path) -> None:
    import ase.io

    with open(path, "w") as handle:
        ase.io.write(handle, frames, format="extxyz")
        handle.flush()
        os.fsync(handle.fileno())


#: Output writers by file extension; ``writer(frames, path)`` writes a complete file.
#: The hook point for more formats (e.g. the campaign layer's columnar writer).
OUTPUT_FORMATS = {".extxyz": _write_extxyz, ".xyz": _write_extxyz}


def output_writer(path):
    """The writer for ``path``'s extension; :class:`CLIError` for an unknown one."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        known = ", ".join(sorted(OUTPUT_FORMATS))
        raise CLIError(f"{path}: unsupported output format {suffix or '(no extension)'!r}; use one of {known}")
    directory = Path(path).resolve().parent
    if not directory.is_dir():
        raise CLIError(f"{path}: directory {directory} does not exist")
    return OUTPUT_FORMATS[suffix]


def run_stages(frames, stages, output, *, max_atoms, refill_frequency, device, dtype, quiet):
    """Run ``stages`` over ``frames`` with inflight batching and write ``output`` atomically.

    Returns the :class:`~batchmd.dynamics.RunStats` of the run. On an exception the
    streamed ``OUTPUT.partial`` is kept (it holds every finished system) and no ``OUTPUT``
    is created.
    """
    from batchmd.ase import results_to_atoms, run_frames
    from batchmd.dynamics.sinks import ExtXYZSink, read_extxyz
    from batchmd.progress import ProgressHook

    writer = output_writer(output)
    check_positive_int("--max-atoms", max_atoms)
    check_positive_int("--refill-every", refill_frequency, allow_none=False)
    largest = max(len(a) for a in frames)
    if max_atoms is not None and max_atoms < largest:
        index = next(i for i, a in enumerate(frames) if len(a) == largest)
        raise CLIError(f"--max-atoms {max_atoms} is smaller than frame {index} ({largest} atoms)")
    output = Path(output)
    partial = output.with_name(output.name + ".partial")
    staging = output.with_name(f".{output.name}.tmp")
    partial.unlink(missing_ok=True)
    progress = ProgressHook(frequency=refill_frequency, enabled=None if not quiet else False)
    try:
        result = run_frames(frames, stages, max_atoms=max_atoms, refill_frequency=refill_frequency,
                            sinks=[ExtXYZSink(partial)], hooks=[progress], device=device, dtype=dtype,
                            collect=False)
    finally:
        progress.close()
    done = results_to_atoms(read_extxyz(partial), frames)
    if len(done) != len(frames):
        raise CLIError(f"{partial}: {len(done)} of {len(frames)} systems were written; output not created")
    writer(done, staging)
    os.replace(staging, output)
    partial.unlink()
    for index, atoms in enumerate(done):  # failed systems are written (status 3, info "failure") and named here
        if "failure" in atoms.info:
            print(f"batchmd: frame {index} failed: {atoms.info['failure']} (written with status=3)", file=sys.stderr)
    return result.stats
