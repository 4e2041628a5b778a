"""AtomicData: one atomic system (molecule or periodic crystal) as torch tensors.

Units: positions and cell Å, masses amu, velocities Å per ASE time unit
(``ase.units.fs`` ≈ 0.0982 of them per fs), forces eV/Å, energy eV, stress eV/Å^3.

Example
-------
>>> import torch
>>> from batchmd.data import AtomicData
>>> n = 4
>>> data = AtomicData(positions=torch.randn(n, 3),
...                   atomic_numbers=torch.randint(1, 10, (n,), dtype=torch.long),
...                   atomic_masses=torch.ones(n), forces=torch.zeros(n, 3),
...                   energies=torch.zeros(1, 1))
>>> data.add_node_property("velocities", torch.zeros(n, 3))
>>> data.num_nodes, data.dtype, data.cell.shape
(4, torch.float32, torch.Size([3, 3]))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ase.data import atomic_masses as ase_atomic_masses

from batchmd.data.fields import KNOWN_FIELDS, FieldSpec, FieldStore, coerce_dtype, field_spec, user_field_spec

__all__ = ["AtomicData", "MAX_ATOMIC_NUMBER"]

MAX_ATOMIC_NUMBER = 118
"""Largest accepted atomic number. Atomic number 0 (ASE's dummy ``X``) is rejected."""

_INTERNAL = frozenset({"_fields", "_levels", "_specs", "info"})


def _as_tensor(name: str, value: Any, device: torch.device | None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device) if device is not None else value
    try:
        return torch.as_tensor(np.asarray(value), device=device)
    except (TypeError, ValueError) as err:
        raise ValueError(f"batchmd: field {name!r} cannot be converted to a tensor: {err}") from err


class AtomicData(FieldStore):
    """One atomic system: per-atom, per-system and per-edge fields plus an ``info`` dict.

    Parameters
    ----------
    positions : tensor-like [N, 3]
        Cartesian positions, Å. Its floating dtype becomes the dtype of every
        floating field unless ``dtype`` is given (non-floating input: torch's
        default dtype).
    atomic_numbers : tensor-like [N]
        Integers in 1..118 (stored as int64).
    atomic_masses : tensor-like [N], optional
        Masses in amu, > 0. Default: ``ase.data.atomic_masses[atomic_numbers]``.
    cell : tensor-like [3, 3], optional
        Lattice vectors as rows (ASE convention), Å. Default zeros.
    pbc : bool or tensor-like [3], optional
        Periodic directions. Default ``False``. A periodic direction needs a
        non-zero lattice vector.
    velocities : tensor-like [N, 3], optional
        Atomic velocities, Å per ASE time unit (as ``atoms.get_velocities()``; 1 Å/fs is
        ``1 / ase.units.fs`` ≈ 10.18 of them). Momenta are ``atomic_masses * velocities``.
    forces : tensor-like [N, 3], optional
        Atomic forces, eV/Å (minus the gradient of the energy), e.g. a stored calculator
        result.
    energies : tensor-like [1, 1] (or scalar), optional
        Potential energy, eV.
    stress : tensor-like [3, 3], optional
        Stress, eV/Å^3 (ASE sign convention).
    system_id : int or tensor-like [1, 1], optional
        Identifier of the system (int64).
    edge_index : tensor-like [2, E], optional
        Edges as pairs of system-local atom indices.
    info : dict, optional
        Non-numeric metadata (strings, arrays), carried unchanged.
    fixed : tensor-like [N] of bool, optional
        ASE's ``FixAtoms`` as a mask (True: the atom never moves); honoured by every
        dynamics method, see :mod:`batchmd.dynamics.constraints`.
    fix_com : bool, optional
        ASE's ``FixCom``: the centre of mass never moves (see the same module).
    target_temperature : float, optional
        The system's own thermostat target, K (> 0): replaces the temperature of every
        thermostat stage (and Maxwell-Boltzmann draw) the system meets. From
        ``atoms.info["temperature_K"]``.
    target_pressure : float, optional
        The system's own external pressure, eV/Å^3: replaces the pressure of every barostat
        and cell filter the system meets. From ``atoms.info["pressure_GPa"]`` (x ``ase.units.GPa``).
    charge, spin : float, optional
        Total charge (e) and spin multiplicity of the system, for models that take them (fairchem's
        UMA). From ``atoms.info["charge"]`` / ``atoms.info["spin"]``; absent (NaN in a batch): the
        model's default.
    dtype : torch.dtype, optional
        float32 or float64 for every floating field.
    device : torch.device or str, optional
        Device of every tensor.
    validate : bool
        Run the value checks below (default). :meth:`Batch.to_data_list` skips them: a
        system that failed in a run (NaN positions) must still reach its sink.

    Raises
    ------
    ValueError
        Naming the field and the problem: wrong shape, NaN/inf in positions,
        cell, velocities (naming the atom), masses, non-positive masses, atomic numbers outside 1..118,
        periodic direction with zero lattice vector, mismatched lengths.

    Examples
    --------
    See the module docstring; :meth:`from_ase` builds one from ``ase.Atoms``.
    """

    def __init__(
        self,
        positions: Any,
        atomic_numbers: Any,
        atomic_masses: Any = None,
        cell: Any = None,
        pbc: Any = None,
        velocities: Any = None,
        forces: Any = None,
        energies: Any = None,
        stress: Any = None,
        system_id: Any = None,
        edge_index: Any = None,
        info: dict | None = None,
        fixed: Any = None,
        fix_com: Any = None,
        target_temperature: Any = None,
        target_pressure: Any = None,
        charge: Any = None,
        spin: Any = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        validate: bool = True,
    ) -> None:
        object.__setattr__(self, "_fields", {})
        object.__setattr__(self, "_specs", {})
        object.__setattr__(self, "info", dict(info) if info else {})
        device = torch.device(device) if device is not None else None
        positions = _as_tensor("positions", positions, device)
        if dtype is None:
            dtype = positions.dtype if positions.is_floating_point() else torch.get_default_dtype()
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"batchmd: dtype must be torch.float32 or torch.float64, got {dtype}")
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError(f"batchmd: field 'positions' must have shape [N, 3], got {list(positions.shape)}")
        self._set("positions", positions, dtype)
        device = positions.device
        numbers = _as_tensor("atomic_numbers", atomic_numbers, device)
        self._set("atomic_numbers", numbers, dtype)
        numbers = self._fields["atomic_numbers"]
        if numbers.numel() and (int(numbers.min()) < 1 or int(numbers.max()) > MAX_ATOMIC_NUMBER):
            bad = numbers[(numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)].tolist()
            raise ValueError(
                f"batchmd: field 'atomic_numbers' must lie in 1..{MAX_ATOMIC_NUMBER}, got unknown values {bad[:5]}"
            )
        if atomic_masses is None:
            table = torch.as_tensor(ase_atomic_masses, dtype=dtype, device=device)
            atomic_masses = table[numbers]
        self._set("atomic_masses", _as_tensor("atomic_masses", atomic_masses, device), dtype)
        masses = self._fields["atomic_masses"]
        if not bool(torch.isfinite(masses).all()) or not bool((masses > 0).all()):
            raise ValueError("batchmd: field 'atomic_masses' must be finite and > 0 amu")
        cell = torch.zeros(3, 3) if cell is None else _as_tensor("cell", cell, device)
        self._set("cell", cell, dtype)
        if pbc is None:
            pbc = False
        pbc = _as_tensor("pbc", pbc, device)
        if pbc.dim() == 0:
            pbc = pbc.expand(3).clone()
        self._set("pbc", pbc, dtype)
        optional = {"velocities": velocities, "forces": forces, "energies": energies, "stress": stress,
                    "system_id": system_id, "edge_index": edge_index, "fixed": fixed, "fix_com": fix_com,
                    "target_temperature": target_temperature, "target_pressure": target_pressure,
                    "charge": charge, "spin": spin}
        for name, value in optional.items():
            if value is not None:
                self._set(name, _as_tensor(name, value, device), dtype)
        if validate:
            self._check_values()

    # ------------------------------------------------------------------ validation
    def _rows(self, level: str, exclude: str) -> int | None:
        """Row count other fields of ``level`` impose (None when unconstrained)."""
        for other, spec in self._specs.items():
            if spec.level == level and other != exclude:
                return self._fields[other].shape[spec.dim]
        return None

    def _set(self, name: str, tensor: torch.Tensor, dtype: torch.dtype, spec: FieldSpec | None = None) -> None:
        """Validate shape/dtype of one field and store it (no value checks)."""
        spec = spec or field_spec(name) or self._specs.get(name)
        if spec is None:
            raise ValueError(f"batchmd: unknown field {name!r}: add it with add_node_property / add_system_property")
        if spec.level == "global":
            raise ValueError(f"batchmd: field {name!r}: AtomicData holds no global fields (use Batch.set_field)")
        tensor = coerce_dtype(name, tensor, spec, dtype)
        if "positions" in self._fields:
            tensor = tensor.to(self._fields["positions"].device)
        shape = tuple(tensor.shape)
        if spec.level == "system":
            want = spec.atomic_data_shape
            if want is not None and shape != want:
                if tensor.numel() == int(np.prod(want)) and shape in ((), (1,), (1, *want), tuple(want[1:])):
                    tensor = tensor.reshape(want)
                else:
                    raise ValueError(f"batchmd: field {name!r} must have shape {list(want)}, got {list(shape)}")
        else:
            if tensor.dim() <= spec.dim:
                raise ValueError(f"batchmd: field {name!r} ({spec.level} level) needs at least {spec.dim + 1} dims")
            if spec.item_shape is not None:
                rest = shape[: spec.dim] + shape[spec.dim + 1 :]
                if rest != spec.item_shape:
                    want = list(spec.item_shape)
                    want.insert(spec.dim, "N" if spec.level == "atom" else "E")
                    raise ValueError(f"batchmd: field {name!r} must have shape {want}, got {list(shape)}")
            rows = self._rows(spec.level, exclude=name)
            if rows is not None and tensor.shape[spec.dim] != rows:
                what = "atoms" if spec.level == "atom" else "edges"
                raise ValueError(
                    f"batchmd: field {name!r} has {tensor.shape[spec.dim]} rows but the system has {rows} {what}"
                )
        self._fields[name] = tensor.contiguous()
        self._specs[name] = spec

    def _check_values(self) -> None:
        """Value checks: finite positions/cell, pbc needs non-zero lattice vectors, edge indices in range."""
        for name in ("positions", "cell"):
            if not bool(torch.isfinite(self._fields[name]).all()):
                raise ValueError(f"batchmd: field {name!r} contains NaN or inf")
        if "velocities" in self._fields:
            bad = (~torch.isfinite(self._fields["velocities"]).all(dim=1)).nonzero().flatten()
            if bad.numel():
                raise ValueError(f"batchmd: field 'velocities' contains NaN or inf (atom {int(bad[0])})")
        for name, low in (("target_temperature", 0.0), ("target_pressure", None)):
            if name in self._fields:
                value = self._fields[name]
                if bool(torch.isinf(value).any()) or (low is not None and bool((value <= low).any())):
                    raise ValueError(f"batchmd: field {name!r} must be finite{' and > 0 K' if low is not None else ''}"
                                     " (NaN: not given)")
        lengths = torch.linalg.vector_norm(self._fields["cell"], dim=1)
        bad = (self._fields["pbc"] & (lengths == 0)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"batchmd: field 'cell': periodic direction(s) {bad} have a zero-length lattice vector"
            )
        if "edge_index" in self._fields and self._fields["edge_index"].numel():
            ei = self._fields["edge_index"]
            if int(ei.min()) < 0 or int(ei.max()) >= self.num_nodes:
                raise ValueError(f"batchmd: field 'edge_index' must hold atom indices in 0..{self.num_nodes - 1}")

    # ------------------------------------------------------------------ public API
    def add_node_property(self, name: str, tensor: Any) -> None:
        """Add (or replace) a per-atom field ``[N, ...]``.

        A known per-atom name (e.g. ``"velocities"``) is validated against its
        declared shape and stored; any other name becomes a user atom field.
        Floating values follow this system's dtype.

        Raises
        ------
        ValueError
            If the first dimension is not the atom count, or ``name`` is a
            known field of another level.
        """
        self._add(name, tensor, "atom")

    def add_system_property(self, name: str, tensor: Any) -> None:
        """Add (or replace) a per-system field (any shape, e.g. a scalar ``[]``).

        In a :class:`Batch` the field becomes ``[B, *tensor.shape]``.
        Known names (``energies``, ``stress``, ``cell``...) keep their declared shape.
        """
        self._add(name, tensor, "system")

    def add_edge_property(self, name: str, tensor: Any) -> None:
        """Add (or replace) a per-edge field ``[E, ...]``; all edge fields share ``E``."""
        self._add(name, tensor, "edge")

    def _add(self, name: str, tensor: Any, level: str) -> None:
        if name in _INTERNAL or not name.isidentifier():
            raise ValueError(f"batchmd: {name!r} is not a valid field name")
        spec = field_spec(name) or user_field_spec(level)
        if spec.level != level:
            raise ValueError(f"batchmd: field {name!r} is a {spec.level}-level field, not {level}-level")
        if name in self._specs and self._specs[name].level != level:
            raise ValueError(f"batchmd: field {name!r} already exists at level {self._specs[name].level}")
        self._set(name, _as_tensor(name, tensor, self.device), self.dtype, spec)
        if name in ("positions", "cell", "pbc", "atomic_masses", "atomic_numbers", "edge_index"):
            self._check_values()

    @property
    def fields(self) -> dict[str, str]:
        """Mapping field name -> level (``"atom"``, ``"system"`` or ``"edge"``)."""
        return {name: spec.level for name, spec in self._specs.items()}

    @property
    def specs(self) -> dict[str, FieldSpec]:
        """Mapping field name -> :class:`~batchmd.data.fields.FieldSpec`."""
        return dict(self._specs)





    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype (float32 or float64) shared by every floating field."""
        return self._fields["positions"].dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AtomicData:
        """Copy to ``device`` and/or floating ``dtype`` (integer and bool fields keep their dtype).

        Returns a new AtomicData (tensors are shared when nothing changes).
        """
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise ValueError(f"batchmd: dtype must be torch.float32 or torch.float64, got {dtype}")
        out = object.__new__(AtomicData)
        object.__setattr__(out, "_specs", dict(self._specs))
        object.__setattr__(out, "info", dict(self.info))
        fields = {}
        for name, t in self._fields.items():
            t = t.to(device) if device is not None else t
            fields[name] = t.to(dtype) if (dtype is not None and t.is_floating_point()) else t
        object.__setattr__(out, "_fields", fields)
        return out

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._fields[name]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._specs or name in KNOWN_FIELDS:
            spec = self._specs.get(name) or KNOWN_FIELDS[name]
            self._add(name, value, spec.level)
        elif name == "info":
            object.__setattr__(self, "info", dict(value))
        else:
            raise AttributeError(
                f"AtomicData: cannot set {name!r}; use add_node_property / add_system_property / add_edge_property"
            )

    def __repr__(self) -> str:
        extra = [n for n in self._fields if n not in ("positions", "atomic_numbers", "atomic_masses", "cell", "pbc")]
        pbc = "".join("T" if p else "F" for p in self._fields["pbc"].tolist())
        return (f"AtomicData(num_nodes={self.num_nodes}, pbc={pbc}, dtype={str(self.dtype).replace('torch.', '')}, "
                f"device={self.device}, fields=+{extra})")

    # ------------------------------------------------------------------ ASE
    @classmethod
    def from_ase(cls, atoms, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 ignore_constraints: bool = False) -> AtomicData:
        """Build from an ``ase.Atoms`` (float64 unless ``dtype`` is given).

        Reads positions, numbers, masses, cell, pbc, velocities (momenta/masses),
        the calculator's stored ``energy``/``forces``/``stress`` (never triggers
        a calculation; Voigt stress becomes 3x3), ``atoms.info`` (int/float/bool
        scalars become system properties, ``system_id`` the system id, anything
        else stays in :attr:`info`) and extra numeric per-atom arrays (user atom
        fields). ``FixAtoms`` becomes the atom field ``fixed`` and ``FixCom`` the
        system field ``fix_com``; any other ASE constraint raises ``ValueError`` naming it, unless ``ignore_constraints=True``
        (then it is dropped).

        Example
        -------
        >>> from ase.build import molecule
        >>> AtomicData.from_ase(molecule("H2O")).num_nodes
        3
        """
        from batchmd.data.ase_convert import atoms_to_kwargs

        kwargs, node_props, system_props = atoms_to_kwargs(atoms, ignore_constraints=ignore_constraints)
        data = cls(**kwargs, dtype=dtype or torch.float64, device=device)
        for name, value in node_props.items():
            data.add_node_property(name, value)
        for name, value in system_props.items():
            data.add_system_property(name, value)
        return data

    def to_ase(self):
        """Convert to ``ase.Atoms`` (inverse of :meth:`from_ase`).

        Energy, forces and stress go to a ``SinglePointCalculator``; velocities
        to momenta; scalar user system fields (not ``_``-prefixed) and
        ``system_id`` to ``atoms.info``, non-scalar ones to ``info`` as arrays;
        user atom fields to ``atoms.arrays``. Edge fields are not exported.
        """
        from batchmd.data.ase_convert import data_to_atoms

        return data_to_atoms(self)
