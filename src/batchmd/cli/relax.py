"""``batchmd relax INPUT -o OUTPUT``: relax every frame of a file with batched FIRE.

Every frame of INPUT (extxyz, ASE trajectory or database, CIF, POSCAR: anything
ase.io.read reads) is relaxed with FIRE (ase.optimize.FIRE step for step) through
inflight batching. OUTPUT holds one frame per input frame, in input order, with the
energy (eV) and forces (eV/Å) and, in its info: input_index (position in INPUT),
status (converged, out_of_steps, failed), converged, n_steps, fmax (eV/Å), the per-stage
stage0_* keys and the model. OUTPUT_STEM.summary.csv beside it has one row per frame.

Example:

    batchmd relax structures.extxyz -o relaxed.extxyz --fmax 0.01 --max-steps 1000
"""

from __future__ import annotations

from batchmd.cli.common import add_run_arguments
from batchmd.cli.models import add_model_arguments

__all__ = ["add_parser", "command"]


def add_parser(subparsers) -> None:
    """Register ``batchmd relax``."""
    parser = subparsers.add_parser("relax", help="relax every frame of a file (FIRE, inflight batching)",
                                   description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("input", help="structures: any file ASE reads (extxyz, traj, db, cif, POSCAR)")
    add_run_arguments(parser)
    parser.add_argument("--fmax", type=float, default=0.05, help="force threshold, eV/Å")
    parser.add_argument("--max-steps", type=int, default=500, help="FIRE step budget per frame")
    add_model_arguments(parser)
    parser.set_defaults(command=command)


def command(args) -> int:
    """Run ``batchmd relax`` (distributed over ranks when launched under torchrun)."""
    from batchmd.cli.campaign_cmds import maybe_run_distributed

    rc = maybe_run_distributed(args)
    if rc is not None:
        return rc
    from batchmd.cli.run import execute

    return execute(args, "relax", [{"method": "fire", "fmax": args.fmax, "max_steps": args.max_steps}],
                   input_path=args.input, output=args.output)
