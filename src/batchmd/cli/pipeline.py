"""``batchmd pipeline CONFIG``: a multi-stage run (e.g. FIRE then NVT) described in TOML.

Schema (every key is checked; an unknown one is an error naming it)::

    input = "structures.extxyz"        # any file ASE reads; relative to the config file
    output = "relaxed_then_nvt.extxyz" # .extxyz or .xyz; relative to the config file
    device = "cpu"                     # optional: cpu | cuda
    dtype = "float64"                  # optional: float32 | float64
    max_atoms = 2048                   # optional: atom budget of the live batch
    refill_every = 10                  # optional: steps between refill points

    [model]                            # optional; default Lennard-Jones argon
    name = "lj"                        # lj | emt
    sigma = 3.405                      # Å
    epsilon = 0.0104                   # eV
    cutoff = 8.5125                    # Å

    [[stages]]                         # run in order; each system goes through all of them
    method = "fire"
    fmax = 0.05                        # eV/Å, convergence threshold
    max_steps = 500                    # a system that runs out graduates OUT_OF_STEPS

    [[stages]]
    method = "nvt"                     # Langevin thermostat
    temperature = 300.0                # K
    dt = 2.0                           # fs
    friction = 0.01                    # 1/fs
    steps = 100
    seed = 0

    [[stages]]
    method = "nve"                     # velocity Verlet
    dt = 1.0                           # fs
    steps = 100

A full example is ``examples/pipeline.toml``.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

from batchmd.cli.common import CLIError, build_model, resolve_device, resolve_dtype

__all__ = ["STAGE_KEYS", "add_parser", "build_stage", "load_config", "command"]

# method -> {key: (required, type, default)}
STAGE_KEYS = {
    "fire": {"fmax": (False, float, 0.05), "max_steps": (False, int, 500), "dt": (False, float, 0.1),
             "maxstep": (False, float, 0.2)},
    "nvt": {"temperature": (True, float, None), "dt": (True, float, None), "friction": (False, float, 0.01),
            "steps": (True, int, None), "seed": (False, int, 0)},
    "nve": {"dt": (True, float, None), "steps": (True, int, None), "temperature": (False, float, None),
            "seed": (False, int, 0)},
}
TOP_KEYS = {"input", "output", "device", "dtype", "max_atoms", "refill_every", "model", "stages"}
MODEL_KEYS = {"name", "sigma", "epsilon", "cutoff"}


def _value(where: str, key: str, value, kind):
    if kind is int:
        low = 0 if key == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            kind_name = "a non-negative" if low == 0 else "a positive"
            raise CLIError(f"{where}: {key} must be {kind_name} integer, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CLIError(f"{where}: {key} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and key not in ("friction",)):
        raise CLIError(f"{where}: {key} must be {'>= 0' if key == 'friction' else '> 0'}, got {value!r}")
    return float(value)


def build_stage(spec: dict, model, where: str = "stage"):
    """A dynamics stage from a stage table (``{"method": "fire", "fmax": 0.05, ...}``).

    Parameters
    ----------
    spec : dict
        ``method`` (fire | nvt | nve) and that method's keys (see the module docstring).
    model : callable
        The batchmd model every stage shares.
    where : str
        Prefix of error messages (e.g. ``"run.toml: stages[1]"``).
    """
    method = spec.get("method")
    if method not in STAGE_KEYS:
        raise CLIError(f"{where}: method must be one of {', '.join(STAGE_KEYS)}, got {method!r}")
    schema = STAGE_KEYS[method]
    unknown = sorted(set(spec) - set(schema) - {"method"})
    if unknown:
        raise CLIError(f"{where} ({method}): unknown key {unknown[0]!r}; expected {', '.join(sorted(schema))}")
    values = {}
    for key, (required, kind, default) in schema.items():
        if key not in spec:
            if required:
                raise CLIError(f"{where} ({method}): missing key {key!r}")
            values[key] = default
        else:
            values[key] = _value(f"{where} ({method})", key, spec[key], kind)
    if method == "fire":
        from batchmd.dynamics import FIRE, ConvergenceHook

        return FIRE(model, dt=values["dt"], maxstep=values["maxstep"],
                    convergence_hook=ConvergenceHook.from_forces(values["fmax"]), n_steps=values["max_steps"])
    if method == "nvt":
        from batchmd.dynamics import NVTLangevin

        return NVTLangevin(model, dt=values["dt"], temperature=values["temperature"], friction=values["friction"],
                           random_seed=values["seed"], n_steps=values["steps"])
    from batchmd.dynamics import NVE

    return NVE(model, dt=values["dt"], n_steps=values["steps"], temperature=values["temperature"],
               random_seed=values["seed"])


def load_config(path) -> dict:
    """Read and check a pipeline TOML file; returns the table with paths resolved."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    try:
        config = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise CLIError(f"{path}: not valid TOML ({error})") from error
    unknown = sorted(set(config) - TOP_KEYS)
    if unknown:
        raise CLIError(f"{path}: unknown key {unknown[0]!r}; expected {', '.join(sorted(TOP_KEYS))}")
    for key in ("input", "output"):
        if not isinstance(config.get(key), str):
            raise CLIError(f"{path}: {key!r} must be a file name")
        config[key] = str((path.parent / config[key]))
    stages = config.get("stages")
    if not isinstance(stages, list) or not stages:
        raise CLIError(f"{path}: at least one [[stages]] table is required")
    model = config.get("model", {})
    if not isinstance(model, dict):
        raise CLIError(f"{path}: [model] must be a table")
    unknown = sorted(set(model) - MODEL_KEYS)
    if unknown:
        raise CLIError(f"{path}: [model]: unknown key {unknown[0]!r}; expected {', '.join(sorted(MODEL_KEYS))}")
    return config


def add_parser(subparsers) -> None:
    """Register ``batchmd pipeline``."""
    parser = subparsers.add_parser("pipeline", help="multi-stage run described in a TOML file",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="TOML file (schema: docs/cli.rst, example: examples/pipeline.toml)")
    parser.add_argument("-o", "--output", default=None, help="override the config's output file")
    parser.add_argument("--quiet", action="store_true", help="no progress line and no summary")
    parser.set_defaults(command=command)


def command(args) -> int:
    """Run ``batchmd pipeline`` (distributed over ranks when launched under torchrun)."""
    from batchmd.cli.campaign_cmds import maybe_run_distributed

    rc = maybe_run_distributed(args)
    if rc is not None:
        return rc
    from batchmd.cli.common import output_writer, read_frames, run_stages
    from batchmd.progress import format_summary

    config = load_config(args.config)
    output = args.output or config["output"]

    def stages(frames=None):
        model_spec = dict(config.get("model", {}))
        model = build_model(model_spec.pop("name", "lj"), **model_spec, frames=frames)
        return [build_stage(spec, model, where=f"{args.config}: stages[{i}]") if isinstance(spec, dict)
                else _not_a_table(args.config, i) for i, spec in enumerate(config["stages"])]

    stages()  # every option is checked before the input is read
    device = resolve_device(config.get("device", "cpu"))
    dtype = resolve_dtype(config.get("dtype", "float64"))
    output_writer(output)
    frames = read_frames(config["input"])
    stats = run_stages(frames, stages(frames), output, max_atoms=config.get("max_atoms"),
                       refill_frequency=config.get("refill_every", 10), device=device, dtype=dtype,
                       quiet=args.quiet)
    if not args.quiet:
        print(format_summary(stats))
        print(f"wrote {output}")
    return 0


def _not_a_table(path, index):
    raise CLIError(f"{path}: stages[{index}] must be a table ([[stages]])")
