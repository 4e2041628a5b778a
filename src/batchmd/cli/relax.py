"""``batchmd relax INPUT -o OUTPUT``: relax every frame of a file with batched FIRE.

Every frame of INPUT (extxyz, ASE trajectory, ASE database: anything ``ase.io.read``
reads) is relaxed with FIRE (``ase.optimize.FIRE`` step for step) through inflight
batching. OUTPUT holds one frame per input frame, in input order, with the energy (eV)
and forces (eV/Å) and, in its info, ``system_id``, ``input_index``, ``status``,
``converged``, ``n_steps`` and ``fmax`` (eV/Å).

Example::

    batchmd relax structures.extxyz -o relaxed.extxyz --fmax 0.01 --max-steps 1000
"""

from __future__ import annotations

from batchmd.cli.common import (
    add_model_arguments,
    add_run_arguments,
    build_model,
    output_writer,
    read_frames,
    resolve_device,
    resolve_dtype,
    run_stages,
)

__all__ = ["add_parser", "command"]


def add_parser(subparsers) -> None:
    """Register ``batchmd relax``."""
    parser = subparsers.add_parser("relax", help="relax every frame of a file (FIRE, inflight batching)",
                                   description=__doc__.split("\n\n")[1])
    parser.add_argument("input", help="structures: any multi-frame file ASE reads (extxyz, traj, db)")
    add_run_arguments(parser)
    parser.add_argument("--fmax", type=float, default=0.05, help="force threshold, eV/Å (default 0.05)")
    parser.add_argument("--max-steps", type=int, default=500, help="FIRE step budget per frame (default 500)")
    add_model_arguments(parser)
    parser.set_defaults(command=command)


def command(args) -> int:
    """Run ``batchmd relax`` (distributed over ranks when launched under torchrun)."""
    from batchmd.cli.campaign_cmds import maybe_run_distributed

    rc = maybe_run_distributed(args)
    if rc is not None:
        return rc
    from batchmd.cli.pipeline import build_stage
    from batchmd.progress import format_summary

    def stages(frames=None):
        model = build_model(args.model, args.sigma, args.epsilon, args.cutoff, frames=frames)
        return [build_stage({"method": "fire", "fmax": args.fmax, "max_steps": args.max_steps}, model, where="relax")]

    stages()  # every option is checked before the input is read
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    output_writer(args.output)
    frames = read_frames(args.input)
    stats = run_stages(frames, stages(frames), args.output, max_atoms=args.max_atoms, refill_frequency=args.refill_every,
                       device=device, dtype=dtype, quiet=args.quiet)
    if not args.quiet:
        print(format_summary(stats))
        print(f"wrote {args.output}")
    return 0
