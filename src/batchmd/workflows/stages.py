"""Stage specs: the keys, units and checks of every stage, and the dynamics stage each builds.

A *stage spec* is a dict (a ``[[stages]]`` table of a pipeline file, an entry of a campaign
config's ``stages``, or what ``batchmd relax``/``md`` make of their options)::

    {"method": "fire", "fmax": 0.05, "max_steps": 500, "cell": "full", "pressure": 1.0}
    {"method": "npt", "temperature": 300.0, "pressure": 1.0, "dt": 2.0, "steps": 1000}

:data:`STAGE_KEYS` lists each method's keys with their types and defaults (units: K, fs,
1/fs, eV/Å, GPa, Å; see the schema in ``docs/cli.rst``); :func:`check_stage` checks a spec
(unknown key, wrong type, value out of range, pressure on a fixed cell, ...: one
:class:`~batchmd.workflows.errors.SpecError` line naming ``where``, the method and the
key) and fills in defaults; :func:`build_stage` builds the stage
(:class:`~batchmd.dynamics.FIRE`, :class:`~batchmd.dynamics.LBFGS`,
:class:`~batchmd.dynamics.NVTLangevin`, :class:`~batchmd.dynamics.NVE`,
:class:`~batchmd.dynamics.NoseHooverChainNVT`, :class:`~batchmd.dynamics.IsotropicMTKNPT` /
:class:`~batchmd.dynamics.MTKNPT`), converting pressures from GPa to eV/Å^3
(``ase.units.GPa``). A new method is one entry in :data:`STAGE_KEYS` and one builder in
``_BUILDERS``; the CLI, pipeline files and campaigns all take it.

Nothing heavy is imported at module level (the CLI checks stages before torch loads).

Example
-------
>>> from batchmd.workflows.stages import check_stage
>>> check_stage({"method": "fire", "cell": "full", "pressure": 1.0})["max_steps"]
500
>>> check_stage({"method": "fire", "cel": "full"}, where="run.toml: stages[0]")
Traceback (most recent call last):
...
batchmd.workflows.errors.SpecError: run.toml: stages[0] (fire): unknown key 'cel'; expected cell, dt, fmax, max_steps, maxstep, pressure
"""

from __future__ import annotations

import math

from batchmd.workflows.errors import SpecError

__all__ = ["CELL_MODES", "CHOICES", "STAGE_KEYS", "build_stage", "check_ranges", "check_stage",
           "option_label", "stage_label"]

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
#: Allowed values of the string keys.
CHOICES = {"barostat": ("isotropic", "full"), "cell": ("fixed", "full", "hydrostatic", "volume"),
           "velocities": ("auto", "keep", "zero", "maxwell-boltzmann")}


#: ``cell`` of an optimizer stage -> cell filter options (``FrechetCellFilter``; "fixed": no filter).
#: The same table as ``batchmd.dynamics.cell_filter.CELL_MODES`` (:func:`batchmd.ase.relax`'s
#: ``cell``; a test keeps them equal), kept here so that the CLI starts without importing torch.
CELL_MODES = {"fixed": None, "full": {}, "hydrostatic": {"hydrostatic_strain": True},
              "volume": {"constant_volume": True}}


#: Units of the stage keys, for messages (as in docs/cli.rst).
_UNITS = {"temperature": "K", "dt": "fs", "tdamp": "fs", "pdamp": "fs", "taup": "fs", "friction": "1/fs",
          "fmax": "eV/Å", "pressure": "GPa"}


#: Equilibration as graduation (batchmd.dynamics.equilibration.Equilibrate) for the thermostatted MD
#: methods: ``until_equilibrated = true`` replaces ``steps`` by ``production_steps`` and ``max_steps``.
EQUILIBRATION_KEYS = {"until_equilibrated": (False, bool, False), "production_steps": (False, int, None),
                      "max_steps": (False, int, None), "sample_every": (False, int, 10)}
for _method in ("nvt", "nvt-nose-hoover", "npt"):
    STAGE_KEYS[_method].update(EQUILIBRATION_KEYS)


def _value(where: str, key: str, value, kind):
    if kind is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if kind is str:
        if key == "velocities" and isinstance(value, str):  # the Python policy name is maxwell_boltzmann
            value = value.replace("_", "-")
        if value not in CHOICES[key]:
            raise SpecError(f"{where}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        return value
    if kind is int:
        low = 0 if key == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            kind_name = "a non-negative" if low == 0 else "a positive"
            raise SpecError(f"{where}: {key} must be {kind_name} integer, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where}: {key} must be a finite number, got {value!r}")
    if key == "pressure":  # GPa; negative is tension
        return float(value)
    if value < 0 or (value == 0 and key not in ("friction", "temperature")):
        unit = _UNITS.get(key, "")
        raise SpecError(f"{where}: {key} must be {'>= 0' if key in ('friction', 'temperature') else '> 0'}"
                        f"{' ' + unit if unit else ''}, got {value!r}")
    return float(value)


def check_stage(spec: dict, where: str = "stage") -> dict:
    """Check a stage table against :data:`STAGE_KEYS`; returns its values with defaults filled in."""
    if not isinstance(spec, dict):
        raise SpecError(f"{where} must be a table ([[stages]])")
    method = spec.get("method")
    if method not in STAGE_KEYS:
        raise SpecError(f"{where}: method must be one of {', '.join(STAGE_KEYS)}, got {method!r}")
    schema = STAGE_KEYS[method]
    unknown = sorted(set(spec) - set(schema) - {"method"})
    if unknown:
        raise SpecError(f"{where} ({method}): unknown key {unknown[0]!r}; expected {', '.join(sorted(schema))}")
    values = {}
    for key, (required, kind, default) in schema.items():
        if key not in spec:
            if required and not (key == "steps" and spec.get("until_equilibrated") is True):
                raise SpecError(f"{where} ({method}): missing key {key!r}")
            values[key] = default
        else:
            values[key] = _value(f"{where} ({method})", key, spec[key], kind)
    if method in ("fire", "lbfgs"):
        if values["cell"] in ("fixed", "volume") and values["pressure"] != 0.0:
            raise SpecError(f"{where} ({method}): pressure does nothing with cell = {values['cell']}: it needs a "
                            "variable cell (--cell full or hydrostatic relaxes the cell under pressure)")
        if method == "lbfgs" and values["maxstep"] > 1.0:
            raise SpecError(f"{where} (lbfgs): maxstep must be <= 1 Å, got {values['maxstep']}")
    if values.get("velocities") == "maxwell-boltzmann" and values.get("temperature") is None:
        raise SpecError(f"{option_label(where, method, 'velocities')} maxwell-boltzmann needs "
                        f"{option_label(where, method, 'temperature').removesuffix(' =')} (K) to draw at")
    check_ranges(where, method, values)
    if "until_equilibrated" in schema:
        check_equilibration(where, method, spec, values)
    return values


#: Commands whose stage keys are command-line options (``--dt``), not pipeline-file keys.
OPTION_COMMANDS = ("md", "relax")


def check_equilibration(where: str, method: str, spec: dict, values: dict) -> None:
    """``until_equilibrated`` needs ``production_steps`` and ``max_steps`` (not ``steps``); they need it.

    ``production_steps`` must be a multiple of ``sample_every`` (see
    :class:`batchmd.dynamics.equilibration.Equilibrate`). Raises :class:`SpecError` naming the option.
    """
    option = where in OPTION_COMMANDS
    prefix = "" if option else f"{where} ({method}): "

    def label(key):
        return f"--{key.replace('_', '-')}" if option else key

    if values["until_equilibrated"]:
        if "steps" in spec and spec["steps"] is not None:
            raise SpecError(f"{prefix}{label('steps')} does not apply with {label('until_equilibrated')}: each system "
                            f"runs until equilibrated (at most {label('max_steps')}), then {label('production_steps')}")
        for key in ("production_steps", "max_steps"):
            if values[key] is None:
                raise SpecError(f"{prefix}{label('until_equilibrated')} needs {label(key)}")
        if values["production_steps"] % values["sample_every"]:
            raise SpecError(f"{prefix}{label('production_steps')} ({values['production_steps']}) must be a multiple "
                            f"of {label('sample_every')} ({values['sample_every']})")
        return
    for key in ("production_steps", "max_steps", "sample_every"):
        if key in spec and spec[key] is not None and (key != "sample_every" or spec[key] != 10):
            raise SpecError(f"{prefix}{label(key)} applies only with {label('until_equilibrated')}")


def option_label(where: str, method: str, key: str) -> str:
    """How messages name a stage key: ``--dt`` for ``batchmd md``/``relax``, ``FILE: stages[0] (nvt): dt =`` else."""
    return f"--{key.replace('_', '-')}" if where in OPTION_COMMANDS else f"{where} ({method}): {key} ="


def check_ranges(where: str, method: str, values: dict) -> None:
    """Unit slips (see :mod:`batchmd.dynamics.ranges`): warn (one line) or raise :class:`SpecError`.

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
            raise SpecError(text)
    for _, text in notes:
        warnings.warn(text, UnusualValueWarning, stacklevel=2)


def _cell_filter(values, model):
    """The stage's cell filter (``cell``/``pressure`` keys; pressure in GPa), or None for a fixed cell."""
    from batchmd.dynamics.cell_filter import GPA, cell_filter_for

    if CELL_MODES[values["cell"]] is None:
        return None
    if getattr(model, "computes_stress", None) is False:
        raise SpecError(f"--cell {values['cell']} (cell = \"{values['cell']}\" in a pipeline file) needs a model "
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


def stage_label(spec: dict) -> str:
    """The name a stage is recorded under (``stage{k}_method``): its method."""
    return spec["method"]
