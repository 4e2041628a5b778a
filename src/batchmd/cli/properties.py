"""``batchmd eos|elastic|phonons INPUT -o OUT.csv|OUT.json``: a material property of every structure.

Each command reads every frame of INPUT (any file ASE reads), computes the property of each
structure with the Python API (:mod:`batchmd.properties`; every variant of every structure
in one inflight-batched run) and writes one row per input structure to OUT (``.csv`` or
``.json``; units in the column names: ``V0_A3``, ``B0_GPa``, ...; ``ok`` and a one-line
``error`` per structure), plus one PNG per structure (EOS curve; elastic tensor heatmap
and stress-strain lines; phonon bands and DOS; ``--plot DIR``, default
``OUT_STEM_plots/`` beside OUT; ``--no-plot``). ``phonons`` also writes each structure's
thermal properties against temperature to ``OUT_STEM_thermal/NNNN_FORMULA.csv``.

Rows are written as structures finish (OUT is rewritten atomically: it always holds a
complete table of the structures finished so far), so Ctrl-C (exit 130) or SIGTERM (143)
keeps every finished structure; ``--resume`` (same command) skips the structures already
in OUT from the same run (the ``run_fingerprint`` column: input checksum, model, options,
dtype) and computes the rest. Without ``--resume``, an OUT left by an interrupted run of the
same command is an error (nothing is overwritten); a complete or unrelated OUT is replaced.
Exit status: 0, 2 on a user error (one line), 3 when some structures failed (named on stderr,
written with ``ok=False``).

Registering a property: one :class:`PropertyCommand` entry in :data:`PROPERTY_COMMANDS`
(module and function of the Python API, its options as argparse specs). The module is
imported only when the command runs; a missing one is a one-line error.

Examples::

    batchmd eos metals.extxyz -o eos.csv --model emt --n-points 9 --strain 0.06
    batchmd elastic metals.extxyz -o elastic.csv --model emt --strains 0.005,0.01 --relax-input
    batchmd phonons metals.extxyz -o phonons.csv --model emt --supercell 3x3x3 --tmax 1000 --tstep 10
"""

from __future__ import annotations

import inspect
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from batchmd.cli.errors import CLIError, Interrupted

__all__ = ["PROPERTY_COMMANDS", "PropertyCommand", "add_parser", "run_property"]

log = logging.getLogger("batchmd")


@dataclass(frozen=True)
class PropertyCommand:
    """A ``batchmd <name>`` property command.

    ``module``/``function``: the Python API, ``function(structures, model, **options, fmax=,
    max_steps=, optimizer=, device=, dtype=, max_atoms=, progress=[, on_result=])`` returning
    results with ``index``, ``formula``, ``ok``, ``error``, ``row()`` and optionally ``plot(path)``.
    ``options``: ``(flags, argparse keywords)`` pairs; each option's ``dest`` is the keyword
    passed to ``function``, unless ``prepare(options) -> keywords`` turns the command-line
    values into the function's keywords (raising :class:`~batchmd.cli.errors.CLIError` for a
    bad value). ``requires``: ``(module, install hint)`` pairs of optional packages the command
    needs (a missing one is a one-line error). ``tables``: a result method returning rows (e.g.
    ``"thermal_rows"``), written per structure as ``OUT_STEM_<name>/NNNN_FORMULA.csv`` (the
    name without ``_rows``). ``fmax``/``max_steps``: defaults of the shared relaxation options.
    """

    name: str
    module: str
    function: str
    help: str
    description: str
    options: tuple = ()
    plots: bool = False
    prepare: Callable[[dict], dict] | None = None
    requires: tuple = ()
    tables: str | None = None
    fmax: float = 0.01
    max_steps: int = 500
    extra_fingerprint: dict = field(default_factory=dict)


def _eos_options():
    return (
        (("--n-points",), dict(type=int, default=9, help="volumes per structure (>= 5; 7-11 typical)")),
        (("--strain",), dict(type=float, default=0.06,
                             help="largest volume strain: volumes V(1-strain) .. V(1+strain) around the input volume")),
        (("--eos",), dict(default="birchmurnaghan",
                          choices=("birchmurnaghan", "birch", "murnaghan", "vinet", "pouriertarantola", "sj",
                                   "taylor", "anton-schmidt", "p3"),
                          help="ase.eos.EquationOfState form fitted")),
        (("--relax",), dict(default="positions", choices=("positions", "shape", "none"),
                            help="positions: atoms relaxed at each fixed cell; shape: atoms and cell shape at "
                                 "constant volume; none: single points")),
    )


def _elastic_options():
    return (
        (("--strains",), dict(default="0.005,0.01", metavar="E1,E2,...",
                              help="strain magnitudes, comma-separated; all positive: each applied with both signs "
                                   "(0.005,0.01 gives -1%%, -0.5%%, +0.5%%, +1%%); with a negative one (write "
                                   "--strains=-0.01,0.01) exactly the values given; engineering strain for shears")),
        (("--clamped-ions",), dict(action="store_true",
                                   help="clamped-ion tensor: ions moved with the cell, one evaluation per strain "
                                        "(default: ions relaxed at each strained cell)")),
        (("--relax-input",), dict(action="store_true",
                                  help="relax each structure first, positions and cell (ASE FrechetCellFilter), to "
                                       "--fmax")),
    )


def _elastic_prepare(options: dict) -> dict:
    options = dict(options)
    text = options.pop("strains")
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise CLIError(f"--strains must be comma-separated numbers, got {text!r}") from None
    if values and all(v > 0 for v in values):
        values = sorted({-v for v in values} | set(values))
    options["strains"] = tuple(values)
    options["relax_ions"] = not options.pop("clamped_ions")
    return options


def _phonon_options():
    return (
        (("--supercell",), dict(default=None, metavar="NxNxN",
                                help="supercell of each input cell: 3 integers (2x2x2) or a 3x3 integer matrix (9 "
                                     "comma-separated values, row by row; write --supercell=-1,1,1,... when the first is negative) [default: 2x2x2]")),
        (("--min-length",), dict(type=float, default=None, metavar="Å",
                                 help="instead of --supercell: per structure the diagonal supercell whose lattice "
                                      "vectors are at least this long")),
        (("--displacement",), dict(type=float, default=0.01, help="displacement amplitude of phonopy's displaced supercells, Å")),
        (("--mesh",), dict(default="20x20x20",
                           help="q-point mesh of the DOS and thermal properties: 3 integers (20x20x20), or one "
                                "number, phonopy's mesh length in Å")),
        (("--band-path",), dict(default="auto", choices=("auto", "seekpath", "ase", "none"),
                                help="band path of the plot: seekpath (if installed, via phonopy) or ASE's special "
                                     "points (auto: seekpath when installed, else ase); none: no bands")),
        (("--band-npoints",), dict(type=int, default=51, help="q-points per band segment")),
        (("--tmin",), dict(type=float, default=0.0, help="lowest temperature of the thermal properties, K (default: 0)")),
        (("--tmax",), dict(type=float, default=1000.0, help="highest temperature, K")),
        (("--tstep",), dict(type=float, default=10.0, help="temperature step, K")),
        (("--symmetrize-fc",), dict(action="store_true",
                                    help="impose the translational sum rule and index symmetry on the force "
                                         "constants (phonopy's symmetrize_force_constants)")),
        (("--relax-input",), dict(action="store_true",
                                  help="relax each structure first (to --fmax, --max-steps) before displacing")),
        (("--relax-cell",), dict(default="fixed", choices=("fixed", "full"),
                                 help="with --relax-input: fixed (positions only) or full (positions and cell)")),
    )


def _integers(option: str, text: str, counts=(3,)) -> list[int]:
    parts = [p for p in str(text).replace("x", ",").replace("X", ",").replace(" ", ",").split(",") if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise CLIError(f"{option} must be {' or '.join(str(c) for c in counts)} integers (e.g. 2x2x2), got {text!r}")
    return values


def _phonon_prepare(options: dict) -> dict:
    import math

    options = dict(options)
    supercell, min_length = options.pop("supercell"), options["min_length"]
    if supercell is not None and min_length is not None:
        raise CLIError("give --supercell or --min-length, not both")
    if min_length is not None and not (math.isfinite(min_length) and min_length > 0):
        raise CLIError(f"--min-length must be a positive length in Å, got {min_length!r}")
    values = _integers("--supercell", supercell or "2x2x2", counts=(3, 9))
    options["supercell_matrix"] = tuple(values) if len(values) == 3 else tuple(map(tuple, zip(*[iter(values)] * 3)))
    mesh = str(options.pop("mesh"))
    if any(c in mesh for c in "x,X "):
        options["mesh"] = tuple(_integers("--mesh", mesh))
    else:
        try:
            options["mesh"] = float(mesh)
        except ValueError:
            raise CLIError(f"--mesh must be 3 integers (20x20x20) or a length in Å, got {mesh!r}") from None
    tmin, tmax, tstep = options.pop("tmin"), options.pop("tmax"), options.pop("tstep")
    if not all(math.isfinite(t) for t in (tmin, tmax, tstep)) or tmin < 0 or tmax < tmin or tstep <= 0:
        raise CLIError(f"temperatures: need 0 <= --tmin <= --tmax and --tstep > 0, got {tmin:g}, {tmax:g}, {tstep:g}")
    n = int(math.floor((tmax - tmin) / tstep + 1e-9)) + 1
    options["temperatures"] = tuple(tmin + k * tstep for k in range(n))
    if options["band_npoints"] < 2:
        raise CLIError(f"--band-npoints must be an integer >= 2, got {options['band_npoints']}")
    if options["band_path"] == "none":
        options["band_path"] = None
    return options


#: Property commands: name -> :class:`PropertyCommand`.
PROPERTY_COMMANDS = {
    "eos": PropertyCommand(
        name="eos", module="batchmd.properties.eos", function="compute_eos", plots=True,
        help="equation of state of every structure: V0, E0, B0, B0' (ASE EquationOfState fit; batched)",
        description="Every structure at --n-points volumes (volume strain +-STRAIN around its input volume), each "
                    "relaxed at its fixed volume (--relax), all in one inflight-batched run; E(V) fitted with ASE's "
                    "EquationOfState (--eos). One row per structure: V0_A3, E0_eV, B0_GPa, B0_prime, ... Give relaxed "
                    "structures (the volumes are centred on the input).",
        options=_eos_options()),
    "elastic": PropertyCommand(
        name="elastic", module="batchmd.properties.elastic", function="compute_elastic", plots=True,
        help="elastic tensor of every structure: C_ij, bulk and shear moduli (GPa; batched)",
        description="Every structure under the six Voigt strains at each --strains magnitude, ions relaxed at each "
                    "strained cell (--clamped-ions: not), all variants of all structures in one inflight-batched "
                    "run; least-squares stress-strain fit. One row per structure: C11_GPa ... C66_GPa (the 21 "
                    "independent entries), K_VRH_GPa, G_VRH_GPa (Voigt, Reuss, Hill), stable; one PNG per structure "
                    "(tensor heatmap, stress-strain lines). Give relaxed structures (or --relax-input).",
        options=_elastic_options(), prepare=_elastic_prepare, fmax=0.005, max_steps=500),
    "phonons": PropertyCommand(
        name="phonons", module="batchmd.properties.phonons", function="compute_phonons", plots=True,
        help="phonons of every structure with phonopy: force constants, bands, DOS, thermal properties (batched)",
        description="phonopy's displaced supercells of every structure evaluated in one inflight-batched run; "
                    "phonopy builds force constants, band structure, DOS and thermal properties. One row per "
                    "structure (min_freq_THz, n_imaginary, F/S/Cv at 300 K); band structure and DOS as PNG. "
                    "Needs phonopy (pip install 'batchmd[phonons]'). Give relaxed structures (or --relax-input).",
        options=_phonon_options(), prepare=_phonon_prepare, fmax=1e-3, max_steps=1000,
        requires=(("phonopy", "pip install 'batchmd[phonons]' (or pip install phonopy)"),),
        tables="thermal_rows"),
}


def add_parser(subparsers) -> None:
    """Register every command of :data:`PROPERTY_COMMANDS`."""
    for spec in PROPERTY_COMMANDS.values():
        _add_command(subparsers, spec)


def _add_command(subparsers, spec: PropertyCommand) -> None:
    from batchmd.cli.common import add_determinism_argument, add_input_arguments
    from batchmd.cli.main import add_verbosity_arguments
    from batchmd.cli.models import add_model_arguments

    parser = subparsers.add_parser(spec.name, help=spec.help, description=spec.description)
    parser.add_argument("input", help="structures: any file ASE reads (extxyz, traj, db, cif, POSCAR)")
    parser.add_argument("-o", "--output", required=True, help="results, one row per structure: .csv or .json")
    parser.add_argument("--resume", action="store_true",
                        help="skip the structures already in OUTPUT from this same run (after Ctrl-C) and "
                             "compute the rest")
    if spec.plots:
        parser.add_argument("--plot", default=None, metavar="DIR",
                            help="directory for one PNG per structure (default: OUTPUT_STEM_plots beside OUTPUT)")
        parser.add_argument("--no-plot", action="store_true", help="write no plots")
    group = parser.add_argument_group(spec.name)
    for flags, kwargs in spec.options:
        group.add_argument(*flags, **kwargs)
    group.add_argument("--fmax", type=float, default=spec.fmax, help="force threshold of each relaxation, eV/Å")
    group.add_argument("--max-steps", type=int, default=spec.max_steps, help="step budget of each relaxation")
    group.add_argument("--optimizer", choices=("fire", "lbfgs"), default="fire",
                       help="fire (ase.optimize.FIRE) or lbfgs (ase.optimize.LBFGS)")
    parser.add_argument("--max-atoms", type=int, default=None,
                        help="atom budget of the live batch (default: all atoms, at most 4096)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float64"),
                        help="floating precision (default: float32 for machine-learned potentials, float64 for lj "
                             "and emt)")
    add_input_arguments(parser)
    add_determinism_argument(parser)
    add_verbosity_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(command=lambda args, spec=spec: run_property(args, spec))


def _import_function(spec: PropertyCommand):
    import importlib
    import importlib.util

    for name, hint in spec.requires:
        if importlib.util.find_spec(name) is None:
            raise CLIError(f"batchmd {spec.name} needs the {name} package, which is not installed: {hint}")

    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as error:
        if error.name and spec.module.startswith(error.name):
            raise CLIError(f"batchmd {spec.name}: {spec.module} is not part of this installation "
                           "(the property is not available yet)") from None
        raise CLIError(f"batchmd {spec.name}: cannot import {spec.module} ({error})") from None
    return getattr(module, spec.function)


def _plot_dir(args, output: Path, spec: PropertyCommand):
    if not spec.plots or getattr(args, "no_plot", False):
        return None
    if args.plot is not None:
        return Path(args.plot)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(stem + "_plots")


def _existing_rows(output: Path, digest: str, n_frames: int, resume: bool) -> dict:
    """Rows already in ``output`` from this run, by input index (``--resume``); CLIError where unsafe."""
    from batchmd.properties.common import read_rows

    if not output.exists():
        if resume:
            log.warning("--resume: nothing to resume (no %s yet); computing every structure", output)
        return {}
    try:
        rows = read_rows(output)
    except (OSError, ValueError) as error:
        if resume:
            raise CLIError(f"--resume: {output} cannot be read as a result table ({error})") from None
        return {}
    ours = [row for row in rows if row.get("run_fingerprint") == digest]
    if not resume:
        if ours and len(ours) == len(rows) and len(rows) < n_frames:
            raise CLIError(f"{output} holds {len(rows)} of {n_frames} results of an interrupted run of this command: "
                           "add --resume to continue it, or delete it to start over")
        return {}
    if len(ours) != len(rows):
        raise CLIError(f"--resume: {output} is from another run (its run_fingerprint does not match this command); "
                       "delete it, or run without --resume to overwrite it")
    done = {}
    for row in rows:
        try:
            index = int(row["index"])
        except (KeyError, TypeError, ValueError):
            raise CLIError(f"--resume: {output} has a row without a valid index") from None
        if not 0 <= index < n_frames:
            raise CLIError(f"--resume: {output} has a row for structure {index}; the input has {n_frames}")
        done[index] = row
    return done


def _is_ok(row) -> bool:
    return row.get("ok") in (True, "True", "true", 1, "1")


def run_property(args, spec: PropertyCommand) -> int:
    """Run one property command (see the module docstring); returns the exit status."""
    from batchmd.cli.common import check_number, check_positive_int, default_dtype_name, resolve_device, \
        resolve_dtype
    from batchmd.cli.run import EXIT_SOME_FAILED, init_warp_quietly

    quiet = getattr(args, "quiet", False)
    output = Path(args.output)
    if output.suffix.lower() not in (".csv", ".json"):
        raise CLIError(f"{output}: the results table is written as .csv or .json, not "
                       f"{output.suffix or '(no extension)'!r}")
    if not output.resolve().parent.is_dir():
        raise CLIError(f"{output}: directory {output.resolve().parent} does not exist")
    if Path(args.input).exists() and output.resolve() == Path(args.input).resolve():
        raise CLIError(f"the output {output} is the input file: it would be overwritten; choose another -o")
    check_number("--fmax", args.fmax)
    check_positive_int("--max-steps", args.max_steps, allow_none=False)
    check_positive_int("--max-atoms", args.max_atoms)
    options = {kwargs.get("dest", flags[0].lstrip("-").replace("-", "_")): None for flags, kwargs in spec.options}
    options = {dest: getattr(args, dest) for dest in options}
    options.update(fmax=args.fmax, max_steps=args.max_steps, optimizer=args.optimizer)
    api_options = spec.prepare(options) if spec.prepare is not None else dict(options)
    if getattr(args, "deterministic", False):
        from batchmd.runtime import set_deterministic

        set_deterministic()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype or default_dtype_name(args.model))
    compute = _import_function(spec)
    init_warp_quietly()

    from batchmd.cli.common import read_frames
    from batchmd.cli.models import build_model, model_info, model_text
    from batchmd.cli.runner import _interruptible, file_checksum, fingerprint_digest
    from batchmd.properties.common import check_periodic, write_rows

    frames = read_frames(args.input, ignore_constraints=args.ignore_constraints)
    try:
        check_periodic(frames, str(args.input))
    except ValueError as error:
        raise CLIError(str(error)) from None
    model = build_model(args.model, frames, sigma=args.sigma, epsilon=args.epsilon, cutoff=args.cutoff,
                        device=device, dtype=dtype)
    info = model_info(model, args.model)
    fingerprint = {"command": spec.name, "input": file_checksum(args.input), "model": info, "options": options,
                   "dtype": str(dtype), **spec.extra_fingerprint}
    if args.ignore_constraints:
        fingerprint["ignore_constraints"] = True
    digest = fingerprint_digest(fingerprint)
    done = _existing_rows(output, digest, len(frames), args.resume)
    if args.resume and len(done) == len(frames):
        failed = sum(not _is_ok(row) for row in done.values())
        note = f" ({failed} failed)" if failed else ""
        if not quiet:
            print(f"batchmd: --resume: {output} is already complete from this run{note}: nothing recomputed")
        return EXIT_SOME_FAILED if failed else 0
    todo = [i for i in range(len(frames)) if i not in done]
    plot_dir = _plot_dir(args, output, spec)
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
    table_dir = None
    if spec.tables is not None:
        table_dir = output.with_name(f"{output.name[: -len(output.suffix)]}_{spec.tables.removesuffix('_rows')}")
        table_dir.mkdir(parents=True, exist_ok=True)
    log.info("model: %s; device %s, dtype %s; %d structures (%d from %s)", model_text(info), device,
             str(dtype).removeprefix("torch."), len(frames), len(done), output)

    rows = dict(done)
    last_write = [0.0]

    def flush(force=False):
        if force or time.monotonic() - last_write[0] > 1.0:
            write_rows([rows[i] for i in sorted(rows)], output)
            last_write[0] = time.monotonic()

    def finished(result):
        index = todo[result.index]
        result.index = index
        row = {**result.row(), "index": index, "model": info.get("model", args.model), "run_fingerprint": digest}
        rows[index] = row
        if table_dir is not None and result.ok:
            write_rows(getattr(result, spec.tables)(), table_dir / f"{index:04d}_{result.formula}.csv")
        if plot_dir is not None and hasattr(result, "plot"):
            path = plot_dir / f"{index:04d}_{result.formula}.png"
            try:
                result.plot(path)
            except Exception as error:  # a plot is never worth a result
                log.warning("structure %d: cannot plot %s (%s)", index, path, error)
        flush()

    kwargs = dict(api_options, device=device, dtype=dtype, max_atoms=args.max_atoms,
                  progress=not quiet and _stderr_is_terminal())
    streams = "on_result" in inspect.signature(compute).parameters
    start = time.perf_counter()
    try:
        with _interruptible():
            if streams:
                compute([frames[i] for i in todo], model, on_result=finished, **kwargs)
            else:
                for result in compute([frames[i] for i in todo], model, **kwargs):
                    finished(result)
    except KeyboardInterrupt as error:
        flush(force=True)
        signum = error.args[0] if isinstance(error, Interrupted) and error.args else signal.SIGINT
        raise Interrupted(signum, f"interrupted ({signal.Signals(signum).name}): {len(rows)} of {len(frames)} "
                                  f"structures' results are in {output}; run the same command with --resume to "
                                  "continue") from None
    except ValueError as error:
        raise CLIError(str(error)) from None
    elapsed = time.perf_counter() - start
    flush(force=True)
    failed = [i for i in sorted(rows) if not _is_ok(rows[i])]
    for i in failed:
        log.error("structure %d (%s) failed: %s", i, rows[i].get("formula"), rows[i].get("error"))
    if not quiet:
        resumed = f", {len(done)} from the interrupted run" if done else ""
        print(f"model: {model_text(info)}")
        print(f"{spec.name}: {len(rows) - len(failed)} of {len(rows)} structures ok{resumed} in {elapsed:.1f} s")
        plots = f" and {len(todo)} plots in {plot_dir}" if plot_dir is not None and todo else ""
        tables = f"; tables in {table_dir}" if table_dir is not None and todo else ""
        print(f"wrote {output}{plots}{tables}")
    return EXIT_SOME_FAILED if failed else 0


def _stderr_is_terminal() -> bool:
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())
