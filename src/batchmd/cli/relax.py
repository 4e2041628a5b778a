"""``batchmd relax INPUT... -o OUTPUT``: relax every frame of files with batched FIRE or LBFGS.

Every frame of every INPUT (extxyz, ASE trajectory or database, CIF, POSCAR: anything
ase.io.read reads; a folder means its structure files, sorted; a quoted glob its
matches) is relaxed with FIRE or LBFGS (ase.optimize.FIRE / LBFGS step for
step) through inflight batching; the cell is kept unless --cell relaxes it too (ASE's
FrechetCellFilter; --pressure in GPa). OUTPUT holds one frame per input frame, in input
order, with the energy (eV) and forces (eV/Å) and, in its info: input_index (position in the inputs), source_file and source_index (the
file and the frame's index in it), status (converged, out_of_steps, failed), converged, n_steps, fmax (eV/Å), the per-stage
stage0_* keys and the model. OUTPUT_STEM.summary.csv beside it has one row per frame.

Example:

    batchmd relax structures.extxyz -o relaxed.extxyz --fmax 0.01 --max-steps 1000
    batchmd relax crystals.extxyz -o relaxed.extxyz --cell full --pressure 1.0 --optimizer lbfgs
    batchmd relax a.cif b.cif structures/ 'data/*.extxyz' -o relaxed.extxyz
"""

from __future__ import annotations

from batchmd.cli.common import add_run_arguments
from batchmd.cli.models import add_model_arguments

__all__ = ["add_parser", "command"]


def add_parser(subparsers) -> None:
    """Register ``batchmd relax``."""
    parser = subparsers.add_parser("relax",
                                   help="relax every frame of a file (FIRE or LBFGS, optionally the cell; inflight)",
                                   description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("input", nargs="+", metavar="INPUT",
                        help="structures: files ASE reads (extxyz, traj, db, cif, POSCAR), folders (their structure "
                             "files, sorted) and quoted globs ('data/*.cif'); frames in the order given")
    add_run_arguments(parser)
    parser.add_argument("--fmax", type=float, default=0.05, help="force threshold, eV/Å")
    parser.add_argument("--max-steps", type=int, default=500, help="step budget per frame")
    parser.add_argument("--optimizer", choices=("fire", "lbfgs"), default="fire",
                        help="fire (ase.optimize.FIRE) or lbfgs (ase.optimize.LBFGS); default fire")
    parser.add_argument("--cell", choices=("fixed", "full", "hydrostatic", "volume"), default="fixed",
                        help="fixed: atoms only (default); full: atoms and cell (FrechetCellFilter); hydrostatic: "
                             "isotropic cell changes only; volume: cell shape at constant volume. With a variable "
                             "cell --fmax also bounds the cell forces (ASE's fmax through the filter)")
    parser.add_argument("--pressure", type=float, default=0.0,
                        help="external pressure in GPa with --cell full/hydrostatic (default 0)")
    add_model_arguments(parser)
    from batchmd.cli.recording import add_recording_arguments

    add_recording_arguments(parser)
    parser.set_defaults(command=command)


def command(args) -> int:
    """Run ``batchmd relax`` (distributed over ranks when launched under torchrun)."""
    from batchmd.cli.campaign_cmds import maybe_run_distributed

    rc = maybe_run_distributed(args)
    if rc is not None:
        return rc
    from batchmd.cli.run import execute

    stage = {"method": args.optimizer, "fmax": args.fmax, "max_steps": args.max_steps, "cell": args.cell,
             "pressure": args.pressure}
    return execute(args, "relax", [stage], input_path=args.input, output=args.output)
