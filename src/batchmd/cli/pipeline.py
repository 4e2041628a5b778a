"""batchmd pipeline CONFIG: a multi-stage run (e.g. FIRE then NVT) described in TOML.

Schema (every key is checked; an unknown one is an error naming it)::

    input = "structures.extxyz"        # any file ASE reads; relative to the config file
    output = "relaxed_then_nvt.extxyz" # format from the extension; relative to the config file (or -o)
    device = "cuda"                    # optional: cpu | cuda (default: cuda when available)
    dtype = "float64"                  # optional: float32 | float64 (default: float32 for MLIPs, else float64)
    max_atoms = 2048                   # optional: atom budget of the live batch
    refill_every = 10                  # optional: steps between refill points

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

A full example is examples/pipeline.toml (run it from anywhere: paths are relative to the file).
"""

from __future__ import annotations

import math
from pathlib import Path

from batchmd.cli.errors import CLIError

__all__ = ["STAGE_KEYS", "add_parser", "build_stage", "check_stage", "load_config", "command"]

# method -> {key: (required, type, default)}. A new method (e.g. an optimizer or an ensemble)
# is one entry here and one builder in _BUILDERS.
STAGE_KEYS = {
    "fire": {"fmax": (False, float, 0.05), "max_steps": (False, int, 500), "dt": (False, float, 0.1),
             "maxstep": (False, float, 0.2), "cell": (False, str, "fixed"), "pressure": (False, float, 0.0)},
    "lbfgs": {"fmax": (False, float, 0.05), "max_steps": (False, int, 500), "maxstep": (False, float, 0.2),
              "memory": (False, int, 100), "damping": (False, float, 1.0), "alpha": (False, float, 70.0),
              "cell": (False, str, "fixed"), "pressure": (False, float, 0.0)},
    "nvt": {"temperature": (True, float, None), "dt": (True, float, None), "friction": (False, float, 0.01),
            "steps": (True, int, None), "seed": (False, int, 0), "velocities": (False, str, "auto")},
    "nve": {"dt": (True, float, None), "steps": (True, int, None), "temperature": (False, float, None),
            "seed": (False, int, 0), "velocities": (False, str, "auto")},
    "nvt-nose-hoover": {"temperature": (True, float, None), "dt": (True, float, None), "steps": (True, int, None),
                        "tdamp": (False, float, None), "seed": (False, int, 0), "velocities": (False, str, "auto")},
    "npt": {"temperature": (True, float, None), "pressure": (True, float, None), "dt": (True, float, None),
            "steps": (True, int, None), "tdamp": (False, float, None), "pdamp": (False, float, None),
            "barostat": (False, str, "isotropic"), "seed": (False, int, 0),
            "velocities": (False, str, "auto")},
}
#: Equilibration as graduation (batchmd.dynamics.equilibration.Equilibrate) for the thermostatted MD
#: methods: ``until_equilibrated = true`` replaces ``steps`` by ``production_steps`` and ``max_steps``.
EQUILIBRATION_KEYS = {"until_equilibrated": (False, bool, False), "production_steps": (False, int, None),
                      "max_steps": (False, int, None), "sample_every": (False, int, 10)}
for _method in ("nvt", "nvt-nose-hoover", "npt"):
    STAGE_KEYS[_method].update(EQUILIBRATION_KEYS)
#: Allowed values of the string keys.
CHOICES = {"barostat": ("isotropic", "full"), "cell": ("fixed", "full", "hydrostatic", "volume"),
           "velocities": ("auto", "keep", "zero", "maxwell-boltzmann")}
TOP_KEYS = {"input", "output", "device", "dtype", "max_atoms", "refill_every", "model", "stages"}
MODEL_KEYS = {"name", "sigma", "epsilon", "cutoff"}


#: ``cell`` of an optimizer stage -> cell filter options (``FrechetCellFilter``; "fixed": no filter).
#: The same table as ``batchmd.dynamics.cell_filter.CELL_MODES`` (:func:`batchmd.ase.relax`'s
#: ``cell``; a test keeps them equal), kept here so that the CLI starts without importing torch.
CELL_MODES = {"fixed": None, "full": {}, "hydrostatic": {"hydrostatic_strain": True},
              "volume": {"constant_volume": True}}


#: Units of the stage keys, for messages (as in docs/cli.rst).
_UNITS = {"temperature": "K", "dt": "fs", "tdamp": "fs", "pdamp": "fs", "taup": "fs", "friction": "1/fs",
          "fmax": "eV/Å", "pressure": "GPa"}


def _value(where: str, key: str, value, kind):
    if kind is bool:
        if not isinstance(value, bool):
            raise CLIError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if kind is str:
        if key == "velocities" and isinstance(value, str):  # the Python policy name is maxwell_boltzmann
            value = value.replace("_", "-")
        if value not in CHOICES[key]:
            raise CLIError(f"{where}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        return value
    if kind is int:
        low = 0 if key == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            kind_name = "a non-negative" if low == 0 else "a positive"
            raise CLIError(f"{where}: {key} must be {kind_name} integer, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CLIError(f"{where}: {key} must be a finite number, got {value!r}")
    if key == "pressure":  # GPa; negative is tension
        return float(value)
    if value < 0 or (value == 0 and key not in ("friction", "temperature")):
        unit = _UNITS.get(key, "")
        raise CLIError(f"{where}: {key} must be {'>= 0' if key in ('friction', 'temperature') else '> 0'}"
                       f"{' ' + unit if unit else ''}, got {value!r}")
    return float(value)


def check_stage(spec: dict, where: str = "stage") -> dict:
    """Check a stage table against :data:`STAGE_KEYS`; returns its values with defaults filled in."""
    if not isinstance(spec, dict):
        raise CLIError(f"{where} must be a table ([[stages]])")
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
            if required and not (key == "steps" and spec.get("until_equilibrated") is True):
                raise CLIError(f"{where} ({method}): missing key {key!r}")
            values[key] = default
        else:
            values[key] = _value(f"{where} ({method})", key, spec[key], kind)
    if method in ("fire", "lbfgs"):
        if values["cell"] in ("fixed", "volume") and values["pressure"] != 0.0:
            raise CLIError(f"{where} ({method}): pressure does nothing with cell = {values['cell']}: it needs a variable cell "
                           "(--cell full or hydrostatic relaxes the cell under pressure)")
        if method == "lbfgs" and values["maxstep"] > 1.0:
            raise CLIError(f"{where} (lbfgs): maxstep must be <= 1 Å, got {values['maxstep']}")
    if values.get("velocities") == "maxwell-boltzmann" and values.get("temperature") is None:
        raise CLIError(f"{option_label(where, method, 'velocities')} maxwell-boltzmann needs "
                       f"{option_label(where, method, 'temperature').removesuffix(' =')} (K) to draw at")
    check_ranges(where, method, values)
    if "until_equilibrated" in schema:
        check_equilibration(where, method, spec, values)
    return values


def check_equilibration(where: str, method: str, spec: dict, values: dict) -> None:
    """``until_equilibrated`` needs ``production_steps`` and ``max_steps`` (not ``steps``); they need it.

    ``production_steps`` must be a multiple of ``sample_every`` (see
    :class:`batchmd.dynamics.equilibration.Equilibrate`). Raises :class:`CLIError` naming the option.
    """
    option = where in OPTION_COMMANDS
    prefix = "" if option else f"{where} ({method}): "

    def label(key):
        return f"--{key.replace('_', '-')}" if option else key

    if values["until_equilibrated"]:
        if "steps" in spec and spec["steps"] is not None:
            raise CLIError(f"{prefix}{label('steps')} does not apply with {label('until_equilibrated')}: each system "
                           f"runs until equilibrated (at most {label('max_steps')}), then {label('production_steps')}")
        for key in ("production_steps", "max_steps"):
            if values[key] is None:
                raise CLIError(f"{prefix}{label('until_equilibrated')} needs {label(key)}")
        if values["production_steps"] % values["sample_every"]:
            raise CLIError(f"{prefix}{label('production_steps')} ({values['production_steps']}) must be a multiple of "
                           f"{label('sample_every')} ({values['sample_every']})")
        return
    for key in ("production_steps", "max_steps", "sample_every"):
        if key in spec and spec[key] is not None and (key != "sample_every" or spec[key] != 10):
            raise CLIError(f"{prefix}{label(key)} applies only with {label('until_equilibrated')}")


#: Commands whose stage keys are command-line options (``--dt``), not pipeline-file keys.
OPTION_COMMANDS = ("md", "relax")


def option_label(where: str, method: str, key: str) -> str:
    """How messages name a stage key: ``--dt`` for ``batchmd md``/``relax``, ``FILE: stages[0] (nvt): dt =`` else."""
    return f"--{key.replace('_', '-')}" if where in OPTION_COMMANDS else f"{where} ({method}): {key} ="


def check_ranges(where: str, method: str, values: dict) -> None:
    """Unit slips (see :mod:`batchmd.dynamics.ranges`): warn (one line) or raise :class:`CLIError`.

    MD ``dt`` outside 0.05..20 fs and temperatures above 1e5 K warn; pressures beyond 500 GPa
    in magnitude are refused, beyond 100 GPa warn. Messages name the option (``--dt``) for
    ``batchmd md``/``relax`` and the stage key for pipeline files, with the unit.
    """
    import warnings

    from batchmd.dynamics.ranges import (UnusualValueWarning, pressure_range_problem, temperature_range_problem,
                                         timestep_note)

    def label(key):
        return option_label(where, method, key)

    notes = []
    if method not in ("fire", "lbfgs") and values.get("dt") is not None:
        text = timestep_note(label("dt"), values["dt"])
        if text:
            notes.append(("warning", text))
    if values.get("temperature") is not None:
        notes.append(temperature_range_problem(label("temperature"), values["temperature"]))
    if values.get("pressure") is not None:
        notes.append(pressure_range_problem(label("pressure"), values["pressure"], unit="GPa"))
    dt = values.get("dt") if method not in ("fire", "lbfgs") else None
    for key in ("tdamp", "pdamp", "taup"):  # time constants in fs; one shorter than a step is a ps slip
        if dt is not None and values.get(key) is not None and values[key] < 5.0 * dt:
            notes.append(("warning", f"{label(key)} {values[key]:g} fs is under 5 time steps (dt {dt:g} fs): "
                                     f"it is in fs ({values[key]:g} ps would be {values[key] * 1000:g} fs)"))
    if values.get("friction") is not None and values["friction"] > 1.0:
        notes.append(("warning", f"{label('friction')} {values['friction']:g} 1/fs is above 1 1/fs: it is in 1/fs "
                                 f"({values['friction']:g} 1/ps would be {values['friction'] / 1000:g} 1/fs)"))
    notes = [note for note in notes if note]
    for kind, text in notes:
        if kind == "error":
            raise CLIError(text)
    for _, text in notes:
        warnings.warn(text, UnusualValueWarning, stacklevel=2)


def _cell_filter(values, model):
    """The stage's cell filter (``cell``/``pressure`` keys; pressure in GPa), or None for a fixed cell."""
    from batchmd.dynamics.cell_filter import GPA, cell_filter_for

    if CELL_MODES[values["cell"]] is None:
        return None
    if getattr(model, "computes_stress", None) is False:
        raise CLIError(f"--cell {values['cell']} (cell = \"{values['cell']}\" in a pipeline file) needs a model "
                       "that computes the stress (lj, emt, sevennet-0, mace:PATH and metatomic:PATH do)")
    return cell_filter_for(values["cell"], values["pressure"] * GPA)


def _fire(values, model):
    from batchmd.dynamics import FIRE, ConvergenceHook

    return FIRE(model, dt=values["dt"], maxstep=values["maxstep"],
                convergence_hook=ConvergenceHook.from_forces(values["fmax"]), n_steps=values["max_steps"],
                cell_filter=_cell_filter(values, model))


def _lbfgs(values, model):
    from batchmd.dynamics import LBFGS, ConvergenceHook

    return LBFGS(model, maxstep=values["maxstep"], memory=values["memory"], damping=values["damping"],
                 alpha=values["alpha"], convergence_hook=ConvergenceHook.from_forces(values["fmax"]),
                 n_steps=values["max_steps"], cell_filter=_cell_filter(values, model))


def _policy(values) -> str:
    """The stage's velocity policy in Python's spelling (:data:`batchmd.dynamics.velocities.VELOCITY_POLICIES`)."""
    return values["velocities"].replace("-", "_")


def _nvt(values, model):
    from batchmd.dynamics import NVTLangevin

    return NVTLangevin(model, dt=values["dt"], temperature=values["temperature"], friction=values["friction"],
                       random_seed=values["seed"], n_steps=values["steps"], velocities=_policy(values))


def _nve(values, model):
    from batchmd.dynamics import NVE

    return NVE(model, dt=values["dt"], n_steps=values["steps"], temperature=values["temperature"],
               random_seed=values["seed"], velocities=_policy(values))


def _nose_hoover(values, model):
    from batchmd.dynamics import NoseHooverChainNVT

    tdamp = values["tdamp"] if values["tdamp"] is not None else 100.0 * values["dt"]
    return NoseHooverChainNVT(model, dt=values["dt"], temperature=values["temperature"], tdamp=tdamp,
                              random_seed=values["seed"], n_steps=values["steps"], velocities=_policy(values))


def _npt(values, model):
    import ase.units

    from batchmd.dynamics import IsotropicMTKNPT, MTKNPT

    cls = IsotropicMTKNPT if values["barostat"] == "isotropic" else MTKNPT
    tdamp = values["tdamp"] if values["tdamp"] is not None else 100.0 * values["dt"]
    pdamp = values["pdamp"] if values["pdamp"] is not None else 1000.0 * values["dt"]
    return cls(model, dt=values["dt"], temperature=values["temperature"], pressure=values["pressure"] * ase.units.GPa,
               tdamp=tdamp, pdamp=pdamp, random_seed=values["seed"], n_steps=values["steps"],
               velocities=_policy(values))


def _equilibrate(build):
    """A builder wrapped in :class:`~batchmd.dynamics.equilibration.Equilibrate` when ``until_equilibrated``."""
    def builder(values, model):
        stage = build(values, model)
        if not values.get("until_equilibrated"):
            return stage
        from batchmd.dynamics.equilibration import Equilibrate

        return Equilibrate(stage, production_steps=values["production_steps"],
                           max_equilibration_steps=values["max_steps"], sample_every=values["sample_every"])
    return builder


_nvt, _nose_hoover, _npt = _equilibrate(_nvt), _equilibrate(_nose_hoover), _equilibrate(_npt)
_BUILDERS = {"fire": _fire, "lbfgs": _lbfgs, "nvt": _nvt, "nve": _nve, "nvt-nose-hoover": _nose_hoover, "npt": _npt}


def build_stage(spec: dict, model, where: str = "stage"):
    """A dynamics stage from a stage table (``{"method": "fire", "fmax": 0.05, ...}``).

    Parameters
    ----------
    spec : dict
        ``method`` (a key of :data:`STAGE_KEYS`) and that method's keys (see the module docstring).
    model : callable
        The batchmd model every stage shares.
    where : str
        Prefix of error messages (e.g. ``"run.toml: stages[1]"``).
    """
    import warnings

    from batchmd.dynamics.ranges import UnusualValueWarning

    with warnings.catch_warnings():  # the command checked the stage already and warned once, in the CLI's terms
        warnings.simplefilter("ignore", UnusualValueWarning)
        values = check_stage(spec, where)
        return _BUILDERS[spec["method"]](values, model)


def load_config(path, output_given: bool = False) -> dict:
    """Read and check a pipeline TOML file; returns the table with paths resolved.

    ``output_given``: the command line names the output (``-o``), so the file need not.
    """
    import tomllib

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
        if key == "output" and output_given and key not in config:
            continue
        if not isinstance(config.get(key), str):
            hint = " (or give -o OUTPUT)" if key == "output" else ""
            raise CLIError(f"{path}: {key!r} must be a file name{hint}")
        config[key] = str((path.parent / config[key]))
    stages = config.get("stages")
    if not isinstance(stages, list) or not stages:
        raise CLIError(f"{path}: at least one [[stages]] table is required")
    for i, spec in enumerate(stages):
        check_stage(spec, where=f"{path}: stages[{i}]")
    model = config.get("model", {})
    if not isinstance(model, dict):
        raise CLIError(f"{path}: [model] must be a table")
    unknown = sorted(set(model) - MODEL_KEYS)
    if unknown:
        raise CLIError(f"{path}: [model]: unknown key {unknown[0]!r}; expected {', '.join(sorted(MODEL_KEYS))}")
    return config


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
    return execute(args, "pipeline", config["stages"], input_path=config["input"], output=output, model_spec=model,
                   max_atoms=config.get("max_atoms"), refill_every=config.get("refill_every", 10),
                   device=args.device or config.get("device"), dtype=config.get("dtype"))
