"""``batchmd shard INPUT... OUTDIR``: convert ASE-readable files into a sharded dataset.

Every frame of every INPUT (extxyz, ASE trajectory or database, CIF, POSCAR: anything
``ase.io`` reads; a folder means its structure files, sorted; a quoted glob its matches)
is validated and written to immutable Parquet shards in OUTDIR with a
versioned ``manifest.json``. Rejected frames are listed, with the reason for each, in
``OUTDIR/invalid.jsonl``; nothing is dropped silently. The dataset is the input of
``batchmd campaign run`` and of ``batchmd relax``/``pipeline`` under torchrun.

Example::

    batchmd shard structures/*.extxyz dataset/ --max-rows 4096
"""

from __future__ import annotations

__all__ = ["add_parser", "register", "run"]


def add_parser(subparsers) -> None:
    """Register ``batchmd shard`` (once; a second call is a no-op)."""
    if "shard" in subparsers.choices:
        return
    parser = subparsers.add_parser("shard", help="convert structure files into a sharded dataset (Parquet + manifest)",
                                   description=__doc__.split("\n\n")[1])
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="structure files ASE reads, folders (their structure files, sorted) and quoted globs")
    parser.add_argument("outdir", metavar="OUTDIR", help="new dataset directory")
    parser.add_argument("--max-rows", type=int, default=4096, help="structures per shard at most (default 4096)")
    parser.add_argument("--max-shard-atoms", type=int, default=2_000_000,
                        help="atoms per shard at most (default 2,000,000)")
    parser.add_argument("--min-distance", type=float, default=0.1,
                        help="reject frames with atoms closer than this, Å (default 0.1; 0 disables)")
    parser.add_argument("--max-atoms", type=int, default=None, help="reject frames with more atoms")
    parser.add_argument("--ignore-constraints", action="store_true",
                        help="accept frames with ASE constraints batchmd does not honour (only FixAtoms and FixCom "
                             "are stored) instead of rejecting them")
    parser.add_argument("--format", default=None, help="ase.io format name (default: guessed per file)")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    parser.set_defaults(command=run)


register = add_parser


def run(args) -> int:
    """Run ``batchmd shard``; returns 0 (rejected frames do not fail the command, they are reported)."""
    from batchmd.campaign.ingest import write_dataset
    from batchmd.cli.common import CLIError

    for option in ("max_rows", "max_shard_atoms"):
        if getattr(args, option) < 1:
            raise CLIError(f"--{option.replace('_', '-')} must be >= 1")
    try:
        manifest = write_dataset(args.inputs, args.outdir, max_rows=args.max_rows,
                                 max_shard_atoms=args.max_shard_atoms, min_distance=args.min_distance,
                                 max_atoms=args.max_atoms, format=args.format,
                                 ignore_constraints=args.ignore_constraints, strict=True)
    except (FileExistsError, ValueError) as error:
        raise CLIError(str(error)) from error
    if not args.quiet:
        print(f"wrote {manifest.num_structures} structures ({manifest.num_atoms} atoms) in {len(manifest.shards)} "
              f"shards to {manifest.root} (manifest version {manifest.version})")
        if manifest.num_invalid:
            print(f"rejected {manifest.num_invalid} frames; reasons in {manifest.root}/{manifest.invalid_report}")
    return 0
