"""``batchmd md INPUT -o OUTPUT``: molecular dynamics of every frame (Langevin NVT or NVE).

Every frame of INPUT runs ``--steps`` steps of Langevin dynamics at ``--temperature``
(or velocity Verlet with ``--ensemble nve``) through inflight batching. Frames with
momenta keep them; frames without start from Maxwell-Boltzmann velocities at
``--temperature`` with zero total momentum, drawn per frame from a stream keyed on
(``--seed``, the frame's index), so a frame's run never depends on the other frames. OUTPUT
holds the final frame of each input frame, in input order, with momenta, energy (eV),
forces (eV/Å), ``system_id``, ``input_index``, ``status`` and ``n_steps`` in its info.

Example::

    batchmd md relaxed.extxyz -o nvt.extxyz --temperature 300 --steps 1000 --dt 2 --friction 0.01
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

__all__ = ["add_parser", "command", "initial_velocities"]


def add_parser(subparsers) -> None:
    """Register ``batchmd md``."""
    parser = subparsers.add_parser("md", help="molecular dynamics of every frame of a file (NVT Langevin or NVE)",
                                   description=__doc__.split("\n\n")[1])
    parser.add_argument("input", help="structures: any multi-frame file ASE reads (extxyz, traj, db)")
    add_run_arguments(parser)
    parser.add_argument("--temperature", type=float, required=True, help="K (thermostat and initial velocities)")
    parser.add_argument("--steps", type=int, required=True, help="MD steps per frame")
    parser.add_argument("--dt", type=float, required=True, help="time step, fs")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    parser.add_argument("--ensemble", default="nvt", choices=("nvt", "nve"), help="default nvt")
    parser.add_argument("--seed", type=int, default=0, help="seed of the thermostat and initial velocities")
    add_model_arguments(parser)
    parser.set_defaults(command=command)


def initial_velocities(frames, temperature: float, seed: int) -> list:
    """Copies of ``frames``; those without momenta get Maxwell-Boltzmann velocities at ``temperature`` K."""
    import numpy as np
    from ase.md import velocitydistribution as vd

    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution

    rng = np.random.default_rng(seed)
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        if not atoms.has("momenta") and temperature > 0:
            thermalize(atoms, temperature_K=temperature, rng=rng)
            if len(atoms) > 1:
                vd.Stationary(atoms)
        out.append(atoms)
    return out


def command(args) -> int:
    """Run ``batchmd md``."""
    from batchmd.cli.pipeline import build_stage
    from batchmd.progress import format_summary

    if args.ensemble == "nvt":
        spec = {"method": "nvt", "temperature": args.temperature, "dt": args.dt, "friction": args.friction,
                "steps": args.steps, "seed": args.seed}
    else:
        spec = {"method": "nve", "dt": args.dt, "steps": args.steps, "temperature": args.temperature,
                "seed": args.seed}
    if args.temperature < 0:
        from batchmd.cli.common import CLIError

        raise CLIError(f"--temperature must be >= 0 K, got {args.temperature}")

    def stages(frames=None):
        model = build_model(args.model, args.sigma, args.epsilon, args.cutoff, frames=frames)
        return [build_stage(spec, model, where="md")]

    stages()  # every option is checked before the input is read
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    output_writer(args.output)
    frames = read_frames(args.input)  # velocities: the stage's policy (momenta kept, else a seeded draw)
    stats = run_stages(frames, stages(frames), args.output, max_atoms=args.max_atoms, refill_frequency=args.refill_every,
                       device=device, dtype=dtype, quiet=args.quiet)
    if not args.quiet:
        print(format_summary(stats))
        print(f"wrote {args.output}")
    return 0
