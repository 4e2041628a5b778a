"""``batchmd plot``: PNG plots of a thermo log (T, energies, P, V) or of a trajectory store (RDF, MSD).

    batchmd plot nvt.thermo.parquet --systems 0,3 -o thermo.png            # T, E, P, V against time
    batchmd plot nvt.h5 --systems 0 --what rdf --r-max 8 -o rdf.png        # g(r), averaged over frames
    batchmd plot nvt.h5 --systems 0-3 --what msd -o msd.png                # MSD and the fitted D

--what defaults to thermo for a thermo log and rdf for a trajectory store. Observables
use the frames of the last recorded stage of each system (--stage to choose another).
See docs/analysis.rst for the definitions, libraries and units.
"""

from __future__ import annotations

from pathlib import Path

from batchmd.cli.errors import CLIError

__all__ = ["add_parser", "command"]

WHAT = ("thermo", "rdf", "msd")


def add_parser(subparsers) -> None:
    """Register ``batchmd plot``."""
    from batchmd.cli.main import add_verbosity_arguments

    parser = subparsers.add_parser("plot", help="plot a thermo log (T, E, P, V) or a store's RDF / MSD as PNG",
                                   description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("source", metavar="LOG_OR_STORE",
                        help="a thermo log (.parquet, --log-every) or a trajectory store (.h5, --trajectory)")
    parser.add_argument("--systems", default="0", help="system ids (CLI runs: input indices), e.g. 0,3 or 0-3")
    parser.add_argument("--what", choices=WHAT, default=None,
                        help="thermo (needs a log), rdf or msd (need a store); default: thermo for a log, rdf for a "
                             "store")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.add_argument("--stage", type=int, default=None,
                        help="stage index (-1: the last recorded); default: every row for thermo, the last stage "
                             "for rdf and msd")
    parser.add_argument("--r-max", type=float, default=None,
                        help="rdf: largest distance in Å (default: half the smallest periodic cell width, at least "
                             "2.5 mean atomic spacings; a small cell is repeated)")
    parser.add_argument("--bins", type=int, default=100, help="rdf: number of bins")
    parser.add_argument("--fit-ps", default=None,
                        help="msd: fit window of lags for D, 'START,END' in ps (default 20%%-60%% of the longest lag)")
    add_verbosity_arguments(parser)
    parser.set_defaults(command=command)


def _kind(path: Path) -> str:
    """``"log"`` or ``"store"`` from the file's signature (or its parts folder)."""
    from batchmd.trajectory.segments import parts_dir, segment_paths

    target = path
    if not path.is_file():
        parts = segment_paths(path) if parts_dir(path).is_dir() else []
        if not parts:
            if parts_dir(path).is_dir():
                raise CLIError(f"{path}: its run has committed nothing yet ({parts_dir(path).name}/ is empty)")
            raise CLIError(f"{path}: no such thermo log or trajectory store")
        target = parts[0]
    with open(target, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PAR1":
        return "log"
    if head == b"\x89HDF\r\n\x1a\n":
        return "store"
    raise CLIError(f"{path}: neither a thermo log (Parquet) nor a trajectory store (HDF5)")


def _fit(text):
    if text is None:
        return None
    try:
        start, end = (float(v) * 1000.0 for v in text.split(","))
    except ValueError:
        raise CLIError(f"--fit-ps {text!r}: give START,END in ps, e.g. 2,8") from None
    return start, end


def command(args) -> int:
    """Run ``batchmd plot``."""
    import matplotlib

    matplotlib.use("Agg")
    from batchmd import analysis
    from batchmd.trajectory import parse_systems

    source = Path(args.source)
    kind = _kind(source)
    what = args.what or ("thermo" if kind == "log" else "rdf")
    if what == "thermo" and kind != "log":
        raise CLIError(f"--what thermo needs a thermo log (.parquet, written by --log-every); {source} is a "
                       "trajectory store")
    if what != "thermo" and kind != "store":
        raise CLIError(f"--what {what} needs a trajectory store (.h5, written by --trajectory); {source} is a "
                       "thermo log")
    if not args.output.lower().endswith(".png"):
        raise CLIError(f"-o {args.output}: batchmd plot writes PNG (end the name with .png)")
    try:
        systems = parse_systems(args.systems)
        if what == "thermo":
            analysis.plot_thermo(source, systems, args.output, stage=args.stage)
        elif what == "rdf":
            stage = -1 if args.stage is None else args.stage
            results = []
            for s in systems:
                r_max = args.r_max
                if r_max is None:
                    from batchmd.analysis.frames import load_atoms

                    r_max = analysis.default_r_max(load_atoms(source, s, stage))
                results.append(analysis.rdf(source, s, r_max, args.bins, stage=stage))
            analysis.plot_rdf(results, args.output)
        else:
            stage = -1 if args.stage is None else args.stage
            results = [analysis.msd(source, s, stage=stage) for s in systems]
            diffusion = analysis.diffusion_coefficient(source, systems, fit_fs=_fit(args.fit_ps), stage=stage)
            analysis.plot_msd(results, args.output, diffusion=diffusion)
    except (ValueError, OSError) as error:
        raise CLIError(str(error).splitlines()[0]) from None
    if not getattr(args, "quiet", False):
        print(f"wrote {args.output} ({what}, systems {', '.join(str(s) for s in systems)})")
    return 0
