"""Conversion between ``ase.Atoms`` and :class:`~batchmd.data.AtomicData`.

Used by :meth:`AtomicData.from_ase` / :meth:`AtomicData.to_ase` (see those for
the mapping). ASE units are batchmd units: Å, amu, eV, and velocities in Å per
ASE time unit (ASE stores momenta; velocities = momenta / masses).

Example
-------
>>> from ase.build import bulk
>>> from batchmd.data import AtomicData
>>> atoms = bulk("Cu", "fcc", a=3.6)
>>> bool(AtomicData.from_ase(atoms).to_ase() == atoms)
True
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

from batchmd.data.fields import KNOWN_FIELDS

__all__ = ["atoms_to_kwargs", "data_to_atoms", "TEMPERATURE_KEY", "PRESSURE_KEY", "info_targets"]

#: ``atoms.info`` key of a structure's own thermostat target, K (system field ``target_temperature``).
TEMPERATURE_KEY = "temperature_K"
#: ``atoms.info`` key of a structure's own external pressure, GPa (system field ``target_pressure``, eV/Å^3).
PRESSURE_KEY = "pressure_GPa"

_ASE_ATOM_ARRAYS = frozenset({"numbers", "positions", "momenta", "masses"})


def _info_scalar(value: Any) -> bool | int | float | None:
    """The value as a python bool/int/float when it is a numeric scalar, else None."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _constraints(atoms: Atoms, ignore_constraints: bool):
    """``(fixed mask bool [N] or None, fix_com)``; other constraints raise unless ignored.

    ``FixCom`` is also recognised from ``atoms.info["fix_com"] is True`` (how extended XYZ
    files written by batchmd carry it: ASE's extxyz writer stores only ``FixAtoms``).
    """
    from ase.constraints import FixAtoms, FixCom

    mask = np.zeros(len(atoms), dtype=bool)
    fix_com = atoms.info.get("fix_com") is True or isinstance(atoms.info.get("fix_com"), np.bool_) and bool(
        atoms.info["fix_com"])
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            mask[constraint.get_indices()] = True
        elif type(constraint) is FixCom:
            fix_com = True
        elif not ignore_constraints:
            raise ValueError(
                f"batchmd: ASE constraint {type(constraint).__name__} is not supported (batchmd honours FixAtoms "
                "and FixCom); remove it, or pass ignore_constraints=True to drop it knowingly")
    return (mask if mask.any() else None), bool(fix_com)


def _target(info: dict, key: str, positive: bool) -> float | None:
    if key not in info:
        return None
    value = info[key]
    unit = "K" if positive else "GPa"
    number = None if isinstance(value, (bool, np.bool_)) else _info_scalar(value)
    if number is None or not np.isfinite(number) or (positive and number <= 0):
        want = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"info[{key!r}] = {value!r}, not {want} ({unit})")
    return float(number)


def info_targets(info: dict) -> tuple[float | None, float | None]:
    """A structure's own ``(temperature K, pressure eV/Å^3)`` from its ``atoms.info``, None where absent.

    Keys :data:`TEMPERATURE_KEY` (``"temperature_K"``, K, > 0) and :data:`PRESSURE_KEY`
    (``"pressure_GPa"``, GPa, converted with ``ase.units.GPa``).

    Raises
    ------
    ValueError
        When a key holds something other than a finite number (a string, NaN, a bool)
        or a temperature <= 0, e.g. ``info['temperature_K'] = '300', not a finite number > 0 (K)``.
    """
    from ase.units import GPa

    temperature = _target(info, TEMPERATURE_KEY, True)
    pressure = _target(info, PRESSURE_KEY, False)
    return temperature, (None if pressure is None else pressure * GPa)


def atoms_to_kwargs(atoms: Atoms, ignore_constraints: bool = False) -> tuple[dict, dict, dict]:
    """Split an ``ase.Atoms`` into AtomicData keyword arguments and user fields.

    ``FixAtoms`` becomes ``kwargs["fixed"]``, ``FixCom`` ``kwargs["fix_com"]``; another ASE
    constraint raises ``ValueError`` naming it unless ``ignore_constraints``.
    ``info["temperature_K"]`` / ``info["pressure_GPa"]`` become ``kwargs["target_temperature"]``
    (K) / ``kwargs["target_pressure"]`` (eV/Å^3), see :func:`info_targets` (which raises
    ``ValueError`` for a bad value).

    Returns
    -------
    kwargs : dict
        Arguments of :class:`AtomicData` (numpy float64 arrays, ``info`` dict).
    node_props : dict
        Extra per-atom arrays (``atoms.arrays`` beyond numbers/positions/momenta/masses).
    system_props : dict
        Numeric scalars of ``atoms.info`` (python bool/int/float).
    """
    kwargs: dict[str, Any] = {
        "positions": atoms.get_positions(),
        "atomic_numbers": atoms.get_atomic_numbers(),
        "atomic_masses": atoms.get_masses(),
        "cell": atoms.cell.array.copy(),
        "pbc": atoms.pbc.copy(),
    }
    fixed, fix_com = _constraints(atoms, ignore_constraints)
    if fixed is not None:
        kwargs["fixed"] = fixed
    if fix_com:
        kwargs["fix_com"] = np.array(True)
    if "momenta" in atoms.arrays:
        kwargs["velocities"] = atoms.get_velocities()
    results = getattr(atoms.calc, "results", None) or {}
    if results.get("energy") is not None:
        kwargs["energies"] = np.array([[float(results["energy"])]])
    if results.get("forces") is not None:
        kwargs["forces"] = np.asarray(results["forces"], dtype=np.float64)
    if results.get("stress") is not None:
        stress = np.asarray(results["stress"], dtype=np.float64)
        kwargs["stress"] = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress
    temperature, pressure = info_targets(atoms.info)
    if temperature is not None:
        kwargs["target_temperature"] = np.array(temperature)
    if pressure is not None:
        kwargs["target_pressure"] = np.array(pressure)
    info: dict[str, Any] = {}
    system_props: dict[str, Any] = {}
    for key, value in atoms.info.items():
        scalar = _info_scalar(value)
        if key in ("fix_com", TEMPERATURE_KEY, PRESSURE_KEY):
            continue  # read by _constraints / info_targets
        if key in ("charge", "spin") and isinstance(scalar, (int, float)) and not isinstance(scalar, bool):
            kwargs[key] = np.array(float(scalar))  # known system fields (see batchmd.data.fields)
        elif key == "system_id" and isinstance(scalar, int) and not isinstance(scalar, bool):
            kwargs["system_id"] = np.array([[scalar]], dtype=np.int64)
        elif scalar is not None and key not in KNOWN_FIELDS and str(key).isidentifier():
            system_props[key] = scalar
        else:
            info[key] = value
    kwargs["info"] = info
    node_props = {}
    for key, value in atoms.arrays.items():
        if key in _ASE_ATOM_ARRAYS or key in KNOWN_FIELDS or not key.isidentifier():
            continue
        if np.asarray(value).dtype.kind in "biuf":
            node_props[key] = np.array(value)
    return kwargs, node_props, system_props


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.double() if t.is_floating_point() else t).numpy().copy()


def data_to_atoms(data) -> Atoms:
    """Build an ``ase.Atoms`` from an :class:`AtomicData` (see :meth:`AtomicData.to_ase`)."""
    atoms = Atoms(
        numbers=_numpy(data.atomic_numbers),
        positions=_numpy(data.positions),
        cell=_numpy(data.cell),
        pbc=_numpy(data.pbc),
        masses=_numpy(data.atomic_masses),
    )
    if data.velocities is not None:
        atoms.set_velocities(_numpy(data.velocities))
    constraints = []
    if data.fixed is not None and bool(data.fixed.any()):
        from ase.constraints import FixAtoms

        constraints.append(FixAtoms(mask=_numpy(data.fixed).astype(bool)))
    if data.fix_com is not None and bool(data.fix_com):
        from ase.constraints import FixCom

        constraints.append(FixCom())
    if constraints:
        atoms.set_constraint(constraints)
    info = dict(data.info)
    for name, spec in data.specs.items():
        if name in KNOWN_FIELDS or name.startswith("_"):
            continue
        value = data[name]
        if spec.level == "system":
            if value.dim() == 0:
                info[name] = bool(value) if value.dtype == torch.bool else value.item()
            else:
                info[name] = _numpy(value)
        elif spec.level == "atom":
            atoms.new_array(name, _numpy(value))
    if data.system_id is not None:
        info["system_id"] = int(data.system_id.reshape(()).item())
    from ase.units import GPa

    for name in ("charge", "spin"):
        value = data[name] if data.has_field(name) else None
        if value is not None and bool(torch.isfinite(value).all()):
            number = float(value.reshape(()).item())
            info[name] = int(number) if number.is_integer() else number
    for name, key, unit in (("target_temperature", TEMPERATURE_KEY, 1.0), ("target_pressure", PRESSURE_KEY, GPa)):
        value = data[name] if data.has_field(name) else None
        if value is not None and bool(torch.isfinite(value).all()):
            info[key] = float(value.reshape(()).item()) / unit
    atoms.info.update(info)
    results = {}
    if data.energies is not None:
        results["energy"] = float(data.energies.reshape(()).item())
    if data.forces is not None:
        results["forces"] = _numpy(data.forces)
    if data.stress is not None:
        results["stress"] = full_3x3_to_voigt_6_stress(_numpy(data.stress))
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms
