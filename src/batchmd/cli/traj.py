"""``batchmd traj``: look into and export a trajectory store (``batchmd md --trajectory``).

    batchmd traj info STORE.h5                                    # systems, frames, fields
    batchmd traj export STORE.h5 --systems 0,5-9 -o frames.extxyz # OVITO, ase gui
    batchmd traj export STORE.h5 --systems 3 -o sys3.traj         # ASE trajectory
    batchmd traj export STORE.h5 --systems 0-3 -o sys{system}.h5md  # H5MD (MDAnalysis), one file each
    batchmd traj merge STORE.h5                                   # merge the segments of an interrupted run

STORE may be a merged store or the path of an interrupted run whose segments are in
STORE.parts/ (its committed frames are read). See docs/trajectories.rst.
"""

from __future__ import annotations

from batchmd.cli.errors import CLIError

__all__ = ["add_parser", "command"]


def add_parser(subparsers) -> None:
    """Register ``batchmd traj`` (info, export, merge)."""
    from batchmd.cli.main import add_verbosity_arguments

    parser = subparsers.add_parser("traj", help="inspect or export a trajectory store (batchmd md --trajectory)",
                                   description=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="traj_command", required=True)
    info = sub.add_parser("info", help="systems, frames and fields of a store")
    info.add_argument("store")
    export = sub.add_parser("export", help="write chosen systems' frames to extxyz / .traj / H5MD")
    export.add_argument("store")
    export.add_argument("--systems", required=True, help="system ids (CLI runs: input indices), e.g. 0,5-9")
    export.add_argument("-o", "--output", required=True,
                        help="output file (format from the extension; {system} in the name: one file per system)")
    merge = sub.add_parser("merge", help="merge the segments of an interrupted run into STORE (no resume after)")
    merge.add_argument("store")
    for p in (info, export, merge):
        add_verbosity_arguments(p)
    parser.set_defaults(command=command)


def command(args) -> int:
    """Run ``batchmd traj ...``."""
    from batchmd.trajectory import SystemNotRecorded, export_frames, finalize_store, parse_systems, store_summary

    try:
        if args.traj_command == "info":
            info = store_summary(args.store)
            state = "complete (merged)" if info["complete"] else f"in segments ({info['files']} committed)"
            fields = ", ".join(["positions", "cell"] + info["fields"])
            print(f"{args.store}: {info['systems']} systems, {info['frames']} frames, {info['atom_rows']} atom rows; "
                  f"fields: {fields}; {state}")
            return 0
        if args.traj_command == "export":
            systems = parse_systems(args.systems)
            written = export_frames(args.store, systems, args.output)
            if not getattr(args, "quiet", False):
                shown = ", ".join(str(p) for p in written[:5]) + (", ..." if len(written) > 5 else "")
                print(f"wrote {shown} ({len(systems)} systems)")
            return 0
        path = finalize_store(args.store)
        print(f"merged {path}")
        return 0
    except SystemNotRecorded as error:
        raise CLIError(str(error)) from None
    except (ValueError, OSError) as error:
        raise CLIError(str(error).splitlines()[0]) from None
