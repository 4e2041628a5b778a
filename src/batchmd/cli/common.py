"""Shared pieces of the ``batchmd`` commands: inputs, run options, devices, output formats.

Every user error is raised as :class:`CLIError` with a one-line message naming the file,
frame or option; :func:`batchmd.cli.main.main` prints it and exits with status 2.

Nothing heavy is imported at module level (torch, Warp and ASE are imported inside the
functions that need them), so building the parser stays fast.

Output formats: any format ASE writes, chosen by the output's extension (``.extxyz``,
``.xyz``, ``.traj``, ``.cif``, ``.vasp``/``POSCAR``, ...). Formats that keep per-frame
info (extxyz, traj) carry the results in each frame; every run also writes the
per-structure summary ``OUTPUT_STEM.summary.csv`` beside it (see :mod:`batchmd.cli.runner`).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from batchmd.cli.errors import CLIError

log = logging.getLogger("batchmd")

__all__ = [
    "CLIError",
    "OUTPUT_FORMATS",
    "add_run_arguments",
    "check_positive_int",
    "default_device",
    "input_files",
    "output_format",
    "output_writer",
    "read_frames",
    "resolve_device",
    "resolve_dtype",
    "run_stages",
]


# ----------------------------------------------------------------------------- inputs
def read_frames(paths, ignore_constraints: bool = False) -> list:
    """Read every frame of ``paths`` (files, folders, globs; one path or a list) with ASE.

    Any format ``ase.io.read`` reads (extxyz, ASE trajectory or database, CIF, POSCAR, ...);
    folders and globs as :func:`batchmd.data.inputs.expand_inputs` expands them. Frames are
    in input order, each file's in file order, each with ``info["source_file"]`` and
    ``info["source_index"]`` (:func:`batchmd.data.inputs.read_structures`).

    ``ignore_constraints``: accept ASE constraints batchmd does not honour (they are dropped;
    ``--ignore-constraints``).

    Raises
    ------
    CLIError
        A missing file or folder, an empty folder, a glob matching nothing, an unreadable
        file, no frames, or a frame :func:`batchmd.data.validate.atoms_problem` refuses (no
        atoms, NaN/inf coordinates, a disordered CIF site, an unsupported constraint, ...),
        named by its file and its index in that file.
    """
    from batchmd.ase import check_frames
    from batchmd.data.inputs import expand_inputs, read_file

    try:
        files = expand_inputs(paths)
    except ValueError as error:
        raise CLIError(str(error)) from error
    frames = []
    for path in files:
        try:
            part = read_file(path)
            check_frames(part, source=str(path), ignore_constraints=ignore_constraints)
        except ValueError as error:
            raise CLIError(str(error)) from error
        if ignore_constraints:
            from batchmd.data.validate import drop_unsupported_constraints

            part, dropped = drop_unsupported_constraints(part)
            if dropped:
                log.warning("%s: --ignore-constraints: dropped %s (not honoured, not written to the output)",
                            path, ", ".join(dropped))
        frames += part
    return frames


def input_files(paths) -> list[str]:
    """The files ``paths`` (files, folders, globs) name, in order; CLIError for a bad one."""
    from batchmd.data.inputs import expand_inputs

    try:
        return expand_inputs(paths)
    except ValueError as error:
        raise CLIError(str(error)) from error


# ----------------------------------------------------------------------------- run options
def add_run_arguments(parser: argparse.ArgumentParser, output_required: bool = True) -> None:
    """Options every run command shares: output, resume, batch budget, device, dtype, verbosity."""
    from batchmd.cli.main import add_verbosity_arguments

    parser.add_argument("-o", "--output", required=output_required,
                        help="output file; format from the extension (.extxyz, .xyz, .traj, .cif, .vasp, ...)")
    add_resume_argument(parser)
    parser.add_argument("--max-atoms", type=int, default=None,
                        help="atom budget of the live batch (default: all atoms, at most 4096)")
    parser.add_argument("--refill-every", type=int, default=10, help="steps between refill points")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float64"),
                        help="floating precision (default: float32 for machine-learned potentials, "
                             "which are trained in it, float64 for lj and emt)")
    parser.add_argument("--no-guards", action="store_true",
                        help="turn the runaway guards off (density, MD displacement, energy drop, non-finite "
                             "positions/cell/stress; see docs/workflows.rst); non-finite energy and forces still "
                             "fail a frame")
    add_input_arguments(parser)
    add_determinism_argument(parser)
    add_verbosity_arguments(parser)


def add_resume_argument(parser) -> None:
    """``--resume`` (see :mod:`batchmd.cli.runner`)."""
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from OUTPUT.partial (finished frames are not recomputed); "
                             "if OUTPUT is already complete from the same run, say so and do nothing")


def add_input_arguments(parser) -> None:
    """``--ignore-constraints``."""
    parser.add_argument("--ignore-constraints", action="store_true",
                        help="drop ASE constraints batchmd does not honour (it honours FixAtoms and FixCom) "
                             "instead of refusing the frame")


def add_determinism_argument(parser) -> None:
    """``--deterministic`` (see :func:`batchmd.runtime.set_deterministic`)."""
    parser.add_argument("--deterministic", action="store_true",
                        help="bitwise reproducible runs: torch deterministic algorithms, one CPU thread, "
                             "CUBLAS_WORKSPACE_CONFIG on CUDA (slower; see docs/cli.rst)")


def default_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``: the default of every command's ``--device``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


from batchmd.workflows.models import MLIP_PREFIXES, default_dtype_name  # noqa: E402  (shared with campaigns)


def resolve_dtype(name: str):
    """``"float32"`` / ``"float64"`` to a torch dtype."""
    if name not in ("float32", "float64"):
        raise CLIError(f"--dtype: expected float32 or float64, got {name!r}")
    import torch

    return getattr(torch, name)


def resolve_device(name):
    """Validate ``--device`` (cpu, cuda, cuda:N; None = :func:`default_device`) and check CUDA is there."""
    import torch

    if name is None:
        name = default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise CLIError(f"--device: unknown device {name!r}") from error
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device: expected cpu or cuda, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine")
    return device


def check_positive_int(option: str, value, allow_none: bool = True) -> None:
    """Raise :class:`CLIError` unless ``value`` is a positive integer (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CLIError(f"{option} must be a positive integer, got {value!r}")


def check_number(option: str, value, low: float = 0.0, strict: bool = True) -> None:
    """Raise :class:`CLIError` unless ``value`` is a finite number > ``low`` (>= when not ``strict``)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or (strict and value == low):
        raise CLIError(f"{option} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")


# ----------------------------------------------------------------------------- outputs
def _fsync_write(frames, path, format) -> None:
    """Write ``frames`` durably (fsync: before it is renamed onto the output), info made portable
    (:func:`batchmd.data.info_io.write_frames`: the same keys come back from every output path)."""
    from batchmd.data.info_io import write_frames

    write_frames(path, frames, format=format, fsync=True)


#: Output formats by extension: ASE format name (``writer(frames, path)`` is ASE's writer).
#: Formats not listed are looked up in ASE by the file name (``ase.io.formats.filetype``).
OUTPUT_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".traj": "traj", ".cif": "cif", ".vasp": "vasp",
                  ".poscar": "vasp", ".pdb": "proteindatabank", ".json": "json", ".db": "db"}

#: Formats that keep each frame's info (results, model) in the file itself (read back by ase.io.read).
KEEPS_INFO = {"extxyz", "traj"}  # ASE reads .json/.db back without atoms.info


def output_format(path) -> str:
    """ASE format name for ``path`` (by extension; ``POSCAR``/``CONTCAR`` names are VASP); CLIError if unknown."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in OUTPUT_FORMATS:
        return OUTPUT_FORMATS[suffix]
    if path.name.upper().startswith(("POSCAR", "CONTCAR")):
        return "vasp"
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    try:
        name = filetype(str(path), read=False)
    except (UnknownFileTypeError, ValueError) as error:
        known = ", ".join(sorted(OUTPUT_FORMATS))
        raise CLIError(f"{path}: unknown output format {suffix or '(no extension)'!r}; use one of {known} "
                       "(or any extension ASE writes)") from error
    if name not in ioformats or not ioformats[name].can_write:
        raise CLIError(f"{path}: ASE cannot write format {name!r}")
    return name


def output_writer(path, n_frames: int | None = None):
    """The writer ``writer(frames, path)`` for ``path``'s format; CLIError for an unknown one.

    Also checks the output directory exists and that a single-structure format (CIF,
    POSCAR, ...) is not asked to hold several frames.
    """
    name = output_format(path)
    directory = Path(path).resolve().parent
    if not directory.is_dir():
        raise CLIError(f"{path}: directory {directory} does not exist")
    if n_frames is not None and n_frames > 1 and name not in ("extxyz", "traj", "json", "db", "cif", "proteindatabank"):
        from ase.io.formats import ioformats

        if name in ioformats and ioformats[name].single:
            raise CLIError(f"{path}: format {name} holds one structure, the input has {n_frames} frames; "
                           "use .extxyz or .traj")

    def writer(frames, target):
        _fsync_write(frames, target, name)

    writer.format = name
    return writer


def run_stages(frames, stages, output, **kwargs):
    """Run ``stages`` over ``frames`` and write ``output``; see :func:`batchmd.cli.runner.run_stages`."""
    from batchmd.cli.runner import run_stages as run

    return run(frames, stages, output, **kwargs)
