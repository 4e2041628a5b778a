"""batchmd pipeline CONFIG: a multi-stage run (e.g. FIRE then NVT) described in TOML.

Schema (every key is checked; an unknown one is an error naming it)::

    input = "structures.extxyz"        # any file ASE reads; relative to the config file; or a list
                                       # of files, folders and globs: ["a.cif", "structures/", "data/*.xyz"]
    output = "relaxed_then_nvt.extxyz" # format from the extension; relative to the config file (or -o)
    device = "cuda"                    # optional: cpu | cuda (default: cuda when available)
    dtype = "float64"                  # optional: float32 | float64 (default: float32 for MLIPs, else float64)
    max_atoms = 2048                   # optional: atom budget of the live batch
    refill_every = 10                  # optional: steps between refill points
    trajectory = "run.h5"              # optional: every system's frames (HDF5 store; relative to the file)
    traj_every = 10                    # optional: a frame every N of each system's steps (default 10)
    traj_fields = ["velocities"]       # optional: velocities, forces, energy, stress
    log_every = 10                     # optional: thermo log OUTPUT_STEM.thermo.parquet every N steps

    [model]                            # optional; default: name = "lj" (noble-gas presets)
    name = "lj"                        # lj | emt | sevennet-0 | mace:PATH | metatomic:PATH | ...
    sigma = 3.405                      # Å; LJ only: one pair for every element (default: presets)
    epsilon = 0.0104                   # eV; LJ only, with sigma
    cutoff = 8.5125                    # Å; LJ only (default: 3 x the largest sigma)

    [[stages]]                         # run in order; each system goes through all of them
    method = "fire"
    fmax = 0.05                        # eV/Å, convergence threshold
    max_steps = 500                    # a system that runs out graduates OUT_OF_STEPS
    cell = "fixed"                     # fixed | full | hydrostatic | volume (FrechetCellFilter)
    pressure = 0.0                     # GPa, with a variable cell (enthalpy E + P V minimised)

    [[stages]]
    method = "lbfgs"                   # ase.optimize.LBFGS; keys as fire (no dt) plus
    memory = 100                       # stored pairs; also maxstep (Å), damping, alpha (eV/Å^2)

    [[stages]]
    method = "nvt"                     # Langevin thermostat
    temperature = 300.0                # K
    dt = 2.0                           # fs
    friction = 0.01                    # 1/fs
    steps = 100
    seed = 0
    velocities = "auto"                # optional, every MD stage: auto | keep | zero | maxwell-boltzmann
                                       # (batchmd md --velocities; see batchmd.dynamics.velocities)

    [[stages]]
    method = "nvt"                     # equilibration as graduation (nvt, nvt-nose-hoover, npt):
    temperature = 300.0                # each system runs until equilibrated (pymbar's detection on
    dt = 2.0                           # T, E and V every sample_every steps), then production_steps,
    until_equilibrated = true          # and graduates with production averages and error bars;
    production_steps = 2000            # replaces steps
    max_steps = 20000                  # not equilibrated by then: "not equilibrated in N steps"
    sample_every = 10                  # optional (default 10); production_steps is a multiple of it

    [[stages]]
    method = "nve"                     # velocity Verlet
    dt = 1.0                           # fs
    steps = 100

    [[stages]]
    method = "npt"                     # MTK barostat + Nosé-Hoover chain (ASE's IsotropicMTKNPT / MTKNPT)
    temperature = 300.0                # K
    pressure = 1.0                     # GPa (may be negative)
    dt = 2.0                           # fs
    steps = 1000
    tdamp = 200.0                      # fs, optional (default 100 dt)
    pdamp = 2000.0                     # fs, optional (default 1000 dt)
    barostat = "isotropic"             # optional: isotropic (default) | full

    [[stages]]
    method = "nvt-nose-hoover"         # Nosé-Hoover chain (ASE's NoseHooverChainNVT)
    temperature = 300.0                # K
    dt = 2.0                           # fs
    steps = 1000
    tdamp = 200.0                      # fs, optional (default 100 dt)

    [campaign]                         # optional: read only by `batchmd campaign run` (and under torchrun)
    manifest = "dataset/"              # sharded dataset (batchmd shard INPUT dataset/); relative to the file
    output = "run/"                    # campaign output directory; also seed, commit_every, ... (docs/campaigns.rst)

A full example is examples/pipeline.toml (run it from anywhere: paths are relative to the file).
The same file runs as a sharded campaign: batchmd campaign run CONFIG --manifest DATASET -o OUTDIR.
The stage and model keys are those of batchmd.workflows.stages and batchmd.workflows.models,
shared with batchmd relax/md and campaign configs.
"""

from __future__ import annotations

from batchmd.cli.errors import CLIError
from batchmd.workflows import stages as _stages
from batchmd.workflows.errors import SpecError
from batchmd.workflows.pipeline import MODEL_KEYS, TOP_KEYS, load_pipeline
from batchmd.workflows.stages import CELL_MODES, CHOICES, OPTION_COMMANDS, STAGE_KEYS, option_label

__all__ = ["STAGE_KEYS", "add_parser", "build_stage", "check_stage", "load_config", "command"]
__all__ += ["CELL_MODES", "CHOICES", "MODEL_KEYS", "OPTION_COMMANDS", "TOP_KEYS", "option_label"]


def check_stage(spec: dict, where: str = "stage") -> dict:
    """:func:`batchmd.workflows.stages.check_stage`, raising :class:`CLIError`."""
    try:
        return _stages.check_stage(spec, where)
    except SpecError as error:
        raise CLIError(str(error)) from None


def check_ranges(where: str, method: str, values: dict) -> None:
    """:func:`batchmd.workflows.stages.check_ranges`, raising :class:`CLIError`."""
    try:
        _stages.check_ranges(where, method, values)
    except SpecError as error:
        raise CLIError(str(error)) from None


def build_stage(spec: dict, model, where: str = "stage"):
    """:func:`batchmd.workflows.stages.build_stage`, raising :class:`CLIError` for a bad spec."""
    try:
        return _stages.build_stage(spec, model, where)
    except SpecError as error:
        raise CLIError(str(error)) from None


def load_config(path, output_given: bool = False) -> dict:
    """Read and check a pipeline TOML file (:func:`batchmd.workflows.pipeline.load_pipeline`); CLIError if bad."""
    try:
        return load_pipeline(path, output_given=output_given)
    except SpecError as error:
        raise CLIError(str(error)) from None


def add_parser(subparsers) -> None:
    """Register ``batchmd pipeline``."""
    from batchmd.cli.common import add_determinism_argument, add_input_arguments, add_resume_argument
    from batchmd.cli.main import add_verbosity_arguments

    parser = subparsers.add_parser("pipeline", help="multi-stage run described in a TOML file",
                                   description=__doc__)
    parser.add_argument("config", help="TOML file (schema above; example: examples/pipeline.toml)")
    parser.add_argument("-o", "--output", default=None, help="override the config's output file")
    add_resume_argument(parser)
    parser.add_argument("--device", default=None, help="override the config's device (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing trajectory store or thermo log (the config's trajectory / log_every)")
    add_input_arguments(parser)
    add_determinism_argument(parser)
    add_verbosity_arguments(parser)
    parser.set_defaults(command=command)


def command(args) -> int:
    """Run ``batchmd pipeline`` (distributed over ranks when launched under torchrun)."""
    from batchmd.cli.campaign_cmds import maybe_run_distributed

    rc = maybe_run_distributed(args)
    if rc is not None:
        return rc
    from batchmd.cli.run import execute

    config = load_config(args.config, output_given=args.output is not None)
    output = args.output or config["output"]
    model = {"name": "lj", **config.get("model", {})}
    from batchmd.cli.recording import recording_options

    recording = recording_options(args, {k: config[k] for k in ("trajectory", "traj_every", "traj_fields",
                                                                   "log_every") if k in config})
    return execute(args, "pipeline", config["stages"], input_path=config["input"], output=output, model_spec=model,
                   max_atoms=config.get("max_atoms"), refill_every=config.get("refill_every", 10),
                   device=args.device or config.get("device"), dtype=config.get("dtype"), recording=recording)
