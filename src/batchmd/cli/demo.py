"""``batchmd demo``: the main job on a built-in example, no input file needed.

Generates rattled, strained FCC argon supercells of mixed sizes (16 to 48 atoms), relaxes
them with FIRE on batchmd's Lennard-Jones potential and then runs a short Langevin NVT,
all through inflight batching: a live batch of at most ``--max-atoms`` atoms is refilled
as systems graduate. Prints the one-line summary and where it wrote the output.

Example:

    batchmd demo                      # writes ./batchmd_demo.extxyz
    batchmd demo --systems 16 -o /tmp/demo.extxyz
"""

from __future__ import annotations

from batchmd.cli.common import check_positive_int
from batchmd.cli.errors import CLIError

__all__ = ["add_parser", "argon_structures", "command"]

_REPEATS = ((2, 2, 1), (2, 2, 2), (3, 2, 2), (2, 2, 3))


def argon_structures(count: int = 64, seed: int = 0) -> list:
    """``count`` rattled FCC argon supercells (16-48 atoms, lattice constant 5.16-5.36 Å).

    Deterministic for a given ``seed``; each frame's ``atoms.info["name"]`` says what it is.
    """
    import numpy as np
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        repeat = _REPEATS[index % len(_REPEATS)]
        a = 5.26 + rng.uniform(-0.1, 0.1)
        atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat(repeat)
        atoms.rattle(0.15, seed=int(rng.integers(2**31)))
        atoms.info["name"] = f"Ar{len(atoms)}_a{a:.3f}"
        frames.append(atoms)
    return frames


def add_parser(subparsers) -> None:
    """Register ``batchmd demo``."""
    from batchmd.cli.main import add_verbosity_arguments

    parser = subparsers.add_parser("demo", help="relax + NVT of generated argon crystals (no input needed)",
                                   description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("-o", "--output", default="batchmd_demo.extxyz", help="output file")
    parser.add_argument("--systems", type=int, default=64, help="number of structures")
    parser.add_argument("--max-atoms", type=int, default=512, help="atom budget of the live batch")
    parser.add_argument("--nvt-steps", type=int, default=50, help="NVT steps after relaxing")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"), help="floating precision")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    add_verbosity_arguments(parser)
    parser.set_defaults(command=command)


def command(args) -> int:
    """Run ``batchmd demo``."""
    from batchmd.cli.run import execute

    check_positive_int("--systems", args.systems, allow_none=False)
    check_positive_int("--nvt-steps", args.nvt_steps, allow_none=False)
    if args.max_atoms < 48:
        raise CLIError(f"--max-atoms must be at least 48 (the largest demo structure), got {args.max_atoms}")
    frames = argon_structures(args.systems)
    if not args.quiet:
        print(f"batchmd demo: {len(frames)} argon crystals ({sum(len(a) for a in frames)} atoms), "
              f"FIRE to fmax 0.05 eV/Å then {args.nvt_steps} steps of NVT at 40 K, live batch of {args.max_atoms} atoms")
    stages = [{"method": "fire", "fmax": 0.05, "max_steps": 300},
              {"method": "nvt", "temperature": 40.0, "dt": 5.0, "friction": 0.02, "steps": args.nvt_steps, "seed": 0}]
    return execute(args, "demo", stages, output=args.output, frames=frames,
                   model_spec={"name": "lj", "sigma": 3.405, "epsilon": 0.0104, "cutoff": 8.5125},
                   max_atoms=args.max_atoms, refill_every=10)
