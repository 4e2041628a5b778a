"""Physical ranges of MD parameters: catching unit slips (ps for fs, bar for GPa) up front.

A time step of 0.002 (meant as 2 fs, written in ps), 50 fs, or a pressure of 1000 (meant as
1000 bar, read as 1000 GPa) is a valid number that runs silently to a wrong or wasted
answer. These checks run once, on the host, when a stage is built (Python constructors) or
a command line / pipeline file is read (``batchmd md``, ``relax``, ``pipeline``):

===============  ======================================  ==========================
parameter        warns (:class:`UnusualValueWarning`)    refuses (``ValueError``)
===============  ======================================  ==========================
MD ``dt``        outside 0.05 .. 20 fs                   (<= 0 fs, by each stage)
temperature      above 1e5 K                             below 0 K
pressure         magnitude above 100 GPa                 magnitude above 500 GPa
===============  ======================================  ==========================

The pressure bounds are in GPa: the Python API takes eV/Å^3 (``1 GPa = ase.units.GPa`` ≈
0.00624 eV/Å^3), so ``pressure=1.0`` meant as GPa (160 GPa) warns. Earth's core is about
360 GPa; diamond-anvil experiments reach a few hundred. Per-system tensors are checked
value by value. Values of other types (e.g. a per-structure ``atoms.info`` key) are left to
the stage's own checks. FIRE's ``dt`` is in ASE time units (not fs) and is not checked here.

Silence a warning you mean with ``warnings.filterwarnings("ignore", category=UnusualValueWarning)``.
"""

from __future__ import annotations

import math
import warnings

import ase.units
import numpy as np

__all__ = ["DT_RANGE_FS", "PRESSURE_MAX_GPA", "PRESSURE_WARN_GPA", "TEMPERATURE_WARN_K", "UnusualValueWarning",
           "check_md_ranges", "pressure_range_problem", "timestep_note", "temperature_range_problem"]

#: Usual MD time steps, fs: outside, a warning (0.002 is 2 fs written in ps; 50 fs explodes atoms).
DT_RANGE_FS = (0.05, 20.0)
#: Temperatures above this (K) warn.
TEMPERATURE_WARN_K = 1.0e5
#: |pressure| above this (GPa) warns.
PRESSURE_WARN_GPA = 100.0
#: |pressure| above this (GPa) is refused (1000 is 1000 bar = 0.1 GPa written as GPa).
PRESSURE_MAX_GPA = 500.0


class UnusualValueWarning(UserWarning):
    """A parameter outside its usual physical range (probably a unit slip); the run goes on."""


def _values(value):
    """Host float array of ``value`` (number, sequence or tensor), or None for anything else."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if hasattr(value, "detach"):  # torch tensor (no torch import: this module stays light)
        value = value.detach().double().cpu().numpy()
    try:
        array = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return None
    array = array[np.isfinite(array)]  # non-finite values are the stage's own error
    return array if array.size else None


def _shown(array) -> str:
    if array.size == 1:
        return f"{array[0]:g}"
    return f"[{', '.join(f'{v:g}' for v in array[:4])}{', ...' if array.size > 4 else ''}]"


def timestep_note(label: str, dt) -> str | None:
    """A warning text when MD time step ``dt`` (fs) leaves :data:`DT_RANGE_FS`, else None."""
    array = _values(dt)
    if array is None:
        return None
    low, high = DT_RANGE_FS
    small, large = array[(array > 0) & (array < low)], array[array > high]
    if small.size:
        return (f"{label} {_shown(small)} fs is below the usual MD range {low:g}..{high:g} fs (the time step is in fs; "
                f"{small[0]:g} ps would be {small[0] * 1000:g} fs)")
    if large.size:
        return (f"{label} {_shown(large)} fs is above the usual MD range {low:g}..{high:g} fs (the time step is in fs; "
                "atoms move too far per step and the run may blow up)")
    return None


def temperature_range_problem(label: str, temperature) -> tuple[str, str] | None:
    """``("error" | "warning", text)`` when ``temperature`` (K) is < 0 or > :data:`TEMPERATURE_WARN_K`, else None."""
    array = _values(temperature)
    if array is None:
        return None
    if (array < 0).any():
        return "error", f"{label} {_shown(array[array < 0])} K is below 0 K (temperatures are absolute, in K)"
    if (array > TEMPERATURE_WARN_K).any():
        return "warning", (f"{label} {_shown(array[array > TEMPERATURE_WARN_K])} K is above "
                           f"{TEMPERATURE_WARN_K:g} K (temperatures are in K)")
    return None


def pressure_range_problem(label: str, pressure, unit: str = "eV/Å^3") -> tuple[str, str] | None:
    """``("error" | "warning", text)`` when ``|pressure|`` passes :data:`PRESSURE_MAX_GPA` / :data:`PRESSURE_WARN_GPA`.

    ``unit`` is ``"eV/Å^3"`` (the Python API) or ``"GPa"`` (the command line).
    """
    array = _values(pressure)
    if array is None:
        return None
    gpa = array if unit == "GPa" else array / ase.units.GPa
    worst = float(gpa[np.argmax(np.abs(gpa))])
    given = f"{label} {_shown(array[np.argmax(np.abs(gpa)):][:1])} {unit}"
    given += "" if unit == "GPa" else f" (= {worst:.4g} GPa)"
    hint = (f"the pressure is in GPa ({worst:g} bar would be {worst * 1e-4:g} GPa)" if unit == "GPa"
            else "the pressure is in eV/Å^3: multiply GPa by ase.units.GPa, bar by ase.units.bar")
    if abs(worst) > PRESSURE_MAX_GPA:
        return "error", f"{given} is beyond {PRESSURE_MAX_GPA:g} GPa in magnitude; {hint}"
    if abs(worst) > PRESSURE_WARN_GPA:
        return "warning", f"{given} is above {PRESSURE_WARN_GPA:g} GPa in magnitude; {hint}"
    return None


def check_md_ranges(owner: str, *, dt=None, temperature=None, pressure=None) -> None:
    """Warn or raise for parameters outside their physical ranges (see the module docstring).

    Parameters
    ----------
    owner : str
        The stage's name, for messages (``"NVTLangevin"``).
    dt : float or tensor, optional
        MD time step(s), fs.
    temperature : float or tensor, optional
        Target temperature(s), K.
    pressure : float or tensor, optional
        External pressure(s), eV/Å^3.

    Raises
    ------
    ValueError
        Temperature below 0 K or |pressure| above :data:`PRESSURE_MAX_GPA`.

    Warns
    -----
    UnusualValueWarning
        ``dt`` outside :data:`DT_RANGE_FS`, temperature above :data:`TEMPERATURE_WARN_K`,
        |pressure| above :data:`PRESSURE_WARN_GPA`.
    """
    notes = []
    text = timestep_note(f"{owner}: dt", dt)
    if text:
        notes.append(("warning", text))
    for problem in (temperature_range_problem(f"{owner}: temperature", temperature),
                    pressure_range_problem(f"{owner}: pressure", pressure)):
        if problem:
            notes.append(problem)
    for kind, text in notes:
        if kind == "error":
            raise ValueError(text)
    for _, text in notes:
        warnings.warn(text, UnusualValueWarning, stacklevel=3)

