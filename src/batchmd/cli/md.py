"""``batchmd md INPUT... -o OUTPUT``: molecular dynamics of every frame (NVT, NPT or NVE).

Every frame of every INPUT (files, folders, quoted globs; as ``batchmd relax``) runs --steps steps of the chosen ensemble through inflight batching:
nvt or nvt-langevin (Langevin thermostat at --temperature, friction --friction),
nvt-nose-hoover (Nosé-Hoover chain, time scale --tdamp), npt (MTK barostat at --pressure
GPa with a Nosé-Hoover chain; --barostat isotropic or full; the output cells are the final
ones) or nve (velocity Verlet).
Initial velocities (--velocities): auto (default) keeps the momenta a frame carries and
draws the others -- frames without momenta, or with all-zero momenta -- from
Maxwell-Boltzmann at --temperature with zero total momentum, from a stream keyed on
(--seed, the frame's index), so a frame's run never depends on the other frames (for nve
--temperature is optional: without it such frames start at rest); keep uses the momenta
as given (all-zero momenta: start from rest; no momenta: rest); zero starts every frame
from rest; maxwell-boltzmann draws for every frame (needs --temperature).
OUTPUT holds the final frame of each input frame, in input order, with momenta, energy
(eV), forces (eV/Å) and, in its info: input_index, source_file, source_index, status (completed or failed: MD
systems are never "converged"), n_steps, stage0_temperature (mean kinetic temperature
over the run, K) and the model.

With --until-equilibrated (nvt, nvt-nose-hoover, npt) each frame runs until it is
equilibrated (pymbar's automated detection on T, E and, under a barostat, V; at most
--max-steps steps), then --production-steps of production, and is written with its
production averages and error bars (info: equilibration_status, equilibrated_at_step,
production_mean_temperature_K, production_sem_temperature_K, ...): inflight batching hands
its slot to the next frame as soon as it is done (batchmd.dynamics.equilibration).

Example:

    batchmd md relaxed.extxyz -o nvt.extxyz --temperature 300 --steps 1000 --dt 2 --friction 0.01
    batchmd md relaxed.extxyz -o nve.extxyz --ensemble nve --steps 1000 --dt 1
    batchmd md relaxed.extxyz -o npt.extxyz --ensemble npt --temperature 300 --pressure 1.0 --steps 5000 --dt 2
    batchmd md relaxed.extxyz -o eq.extxyz --temperature 300 --dt 2 --until-equilibrated --production-steps 2000 --max-steps 20000
"""

from __future__ import annotations

from batchmd.cli.common import add_run_arguments
from batchmd.cli.errors import CLIError
from batchmd.cli.models import add_model_arguments

__all__ = ["ENSEMBLES", "add_parser", "command", "initial_velocities"]

#: ``--ensemble`` choices: name -> (stage method of batchmd.cli.pipeline.STAGE_KEYS, options it uses,
#: whether --temperature is required). A new ensemble is one entry here (and its stage there).
_EQ = ("until_equilibrated", "production_steps", "max_steps", "sample_every")  # add_equilibration_arguments
ENSEMBLES = {
    "nvt": ("nvt", ("temperature", "dt", "friction", "steps", "seed", "velocities", *_EQ), True),
    "nvt-langevin": ("nvt", ("temperature", "dt", "friction", "steps", "seed", "velocities", *_EQ), True),
    "nvt-nose-hoover": ("nvt-nose-hoover", ("temperature", "dt", "tdamp", "steps", "seed", "velocities", *_EQ), True),
    "npt": ("npt", ("temperature", "pressure", "dt", "tdamp", "pdamp", "barostat", "steps", "seed", "velocities",
                    *_EQ), True),
    "nve": ("nve", ("dt", "steps", "temperature", "seed", "velocities"), False),
}


def add_parser(subparsers) -> None:
    """Register ``batchmd md``."""
    parser = subparsers.add_parser("md", help="molecular dynamics of every frame of a file (NVT, NPT or NVE)",
                                   description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("input", nargs="+", metavar="INPUT",
                        help="structures: files ASE reads (extxyz, traj, db, cif, POSCAR), folders (their structure "
                             "files, sorted) and quoted globs ('data/*.cif'); frames in the order given")
    add_run_arguments(parser)
    parser.add_argument("--ensemble", default="nvt", choices=tuple(ENSEMBLES), help="thermodynamic ensemble")
    parser.add_argument("--temperature", type=float, default=None,
                        help="K: thermostat target and initial velocities (required for nvt)")
    parser.add_argument("--steps", type=int, default=None, help="MD steps per frame (or --until-equilibrated)")
    parser.add_argument("--dt", type=float, required=True, help="time step, fs")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    parser.add_argument("--tdamp", type=float, default=None,
                        help="fs: Nosé-Hoover thermostat time scale (nvt-nose-hoover, npt; default 100 x dt)")
    parser.add_argument("--pressure", type=float, default=None, help="GPa: external pressure (required for npt)")
    parser.add_argument("--pdamp", type=float, default=None, help="fs: barostat time scale (npt; default 1000 x dt)")
    parser.add_argument("--barostat", default="isotropic", choices=("isotropic", "full"),
                        help="npt: isotropic (cell shape kept, ASE's IsotropicMTKNPT) or full (ASE's MTKNPT)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the thermostat noise and initial velocities")
    parser.add_argument("--velocities", default="auto", choices=("auto", "keep", "zero", "maxwell-boltzmann"),
                        help="initial velocities: auto (keep the input's momenta, draw where there are none or all "
                             "are zero), keep (the input's momenta as given: all-zero means at rest), zero (every "
                             "frame from rest), maxwell-boltzmann (draw at --temperature for every frame)")
    add_equilibration_arguments(parser)
    add_model_arguments(parser)
    from batchmd.cli.recording import add_recording_arguments

    add_recording_arguments(parser)
    parser.set_defaults(command=command)


def add_equilibration_arguments(parser) -> None:
    """``--until-equilibrated``, ``--production-steps``, ``--max-steps``, ``--sample-every`` (equilibration as
    graduation, :class:`batchmd.dynamics.equilibration.Equilibrate`)."""
    group = parser.add_argument_group("equilibration as graduation (nvt, nvt-nose-hoover, npt)")
    group.add_argument("--until-equilibrated", action="store_true", default=None,
                       help="run each frame until equilibrated (pymbar's detection on T, E and V), then "
                            "--production-steps, and write production averages with error bars (replaces --steps)")
    group.add_argument("--production-steps", type=int, default=None, help="production steps after equilibration")
    group.add_argument("--max-steps", type=int, default=None,
                       help="most equilibration steps; a frame not equilibrated by then is written with "
                            "equilibration_status 'not equilibrated in N steps'")
    group.add_argument("--sample-every", type=int, default=None, help="steps between samples (default 10)")


def initial_velocities(frames, temperature: float | None, seed: int) -> list:
    """Copies of ``frames``; those without momenta get Maxwell-Boltzmann velocities at ``temperature`` K.

    The generator is seeded once and walks the frames in input order, so frame ``i``'s
    velocities do not depend on which frames run (resumed runs get the same ones).
    """
    import numpy as np
    from ase.md import velocitydistribution as vd

    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    rng = np.random.default_rng(seed)
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        if not atoms.has("momenta") and temperature:
            thermalize(atoms, temperature_K=temperature, rng=rng)
            if len(atoms) > 1:
                vd.Stationary(atoms)
        out.append(atoms)
    return out


def command(args) -> int:
    """Run ``batchmd md``."""
    from batchmd.cli.run import execute

    method, options, needs_temperature = ENSEMBLES[args.ensemble]
    from_info = args.temperature is None and needs_temperature  # every frame must carry info["temperature_K"]
    if args.ensemble == "npt" and args.pressure is None:
        raise CLIError("--ensemble npt needs --pressure (GPa)")
    for option, default in (("pressure", None), ("pdamp", None), ("tdamp", None), ("friction", 0.01),
                            ("barostat", "isotropic")):
        if option not in options and getattr(args, option) != default:
            raise CLIError(f"--{option} does not apply to --ensemble {args.ensemble}")
    if args.steps is None and not args.until_equilibrated:
        raise CLIError("--steps is required (or --until-equilibrated with --production-steps and --max-steps)")
    if args.until_equilibrated and args.ensemble not in ("nvt", "nvt-langevin", "nvt-nose-hoover", "npt"):
        raise CLIError(f"--until-equilibrated does not apply to --ensemble {args.ensemble} (no thermostat)")
    for option in ("production_steps", "max_steps", "sample_every"):
        if getattr(args, option) is not None and not args.until_equilibrated:
            raise CLIError(f"--{option.replace('_', '-')} applies only with --until-equilibrated")
    if args.temperature is not None and args.temperature < 0:
        raise CLIError(f"--temperature must be >= 0 K, got {args.temperature}")
    spec = {"method": method, **{key: getattr(args, key) for key in options if getattr(args, key) is not None}}
    if spec.get("velocities") == "auto":  # the default; left out so the run's identity (--resume) is unchanged
        del spec["velocities"]
    # velocities: the stage's policy (momenta kept, else a draw keyed on --seed and the frame's index)
    hook = None
    if from_info:
        spec["temperature"] = 1.0  # checked stage spec; replaced from the frames before the stage is built
        def hook(frames):
            return _temperatures_from_info(frames, spec, args.ensemble, args.input)
    return execute(args, "md", [spec], input_path=args.input, output=args.output, frames_hook=hook)


def _temperatures_from_info(frames, spec: dict, ensemble: str, source) -> list:
    """Without --temperature, every frame must carry its own ``info["temperature_K"]`` (K).

    The stage then runs each frame at its own value (the per-frame target overrides the
    stage's); the stage's value is set to the first frame's, which no frame uses.
    """
    missing = [i for i, atoms in enumerate(frames) if atoms.info.get("temperature_K") is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        info = frames[missing[0]].info
        where = f"{info.get('source_file', source)}: frame {info.get('source_index', missing[0])}"
        raise CLIError(f"--ensemble {ensemble} needs --temperature (K), or info['temperature_K'] on every frame: "
                       f"{where}{more} has none")
    spec["temperature"] = float(frames[0].info["temperature_K"])
    return frames
