"""Field registry: every field's level (atom, system, edge, global) declared once.

A *field* is a named tensor carried by :class:`~batchmd.data.AtomicData` and
:class:`~batchmd.data.Batch`. Its *level* says which axis of the batch it
follows through selection, concatenation and slot replacement:

``"atom"``
    one row per atom; Batch shape ``[N, ...]``.
``"system"``
    one row per system; Batch shape ``[B, ...]`` (AtomicData stores the
    per-system shape, e.g. ``cell`` ``[3, 3]``).
``"edge"``
    one row per edge; edges are stored system by system, Batch shape ``[E, ...]``
    (``edge_index`` is ``[2, E]``: its edge axis is dimension 1).
``"global"``
    shared by all systems of a Batch; never sliced.

Known fields (:data:`KNOWN_FIELDS`) carry their level, dtype kind and shape;
a user field declares its level when it is added. A field may be flagged
``atom_index``: its non-negative values are global atom indices (in a Batch)
and are re-offset whenever atoms move (``edge_index`` is such a field;
negative values are padding and never shifted).

Example
-------
>>> from batchmd.data.fields import field_spec
>>> field_spec("cell").level, field_spec("cell").item_shape
('system', (3, 3))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LEVELS", "FieldSpec", "KNOWN_FIELDS", "field_spec", "user_field_spec", "default_fill", "default_value",
           "coerce_dtype"]

LEVELS = ("atom", "system", "edge", "global")


@dataclass(frozen=True)
class FieldSpec:
    """How one field is stored and how it follows systems through slot operations.

    Parameters
    ----------
    level : str
        One of :data:`LEVELS`.
    kind : str
        ``"float"`` (cast to the batch floating dtype), ``"int"`` (stored as
        ``int64``), ``"bool"``, or ``"any"`` (user fields: dtype kept as given,
        except that floating tensors follow the batch dtype).
    item_shape : tuple of int or None
        Shape of one row (one atom / system / edge), ``None`` for "any".
    single_shape : tuple of int or None
        Shape in :class:`AtomicData` for system fields (``energies`` is
        ``(1, 1)`` while its row shape is ``(1,)``); ``None`` means ``item_shape``.
    dim : int
        Axis that indexes rows (``1`` for ``edge_index`` ``[2, E]``, else ``0``).
    atom_index : bool
        Values are atom indices, re-offset by slot operations.
    unit : str
        Physical unit, for documentation.
    missing : float, optional
        Value of the field for systems that do not carry it (e.g. NaN: "not given"),
        instead of the policy of :func:`default_value`.
    """

    level: str
    kind: str = "any"
    item_shape: tuple[int, ...] | None = None
    single_shape: tuple[int, ...] | None = None
    dim: int = 0
    atom_index: bool = False
    unit: str = ""
    missing: float | None = None

    @property
    def atomic_data_shape(self) -> tuple[int, ...] | None:
        """Shape of this field in a single-system :class:`AtomicData` (system level)."""
        return self.single_shape if self.single_shape is not None else self.item_shape


KNOWN_FIELDS: dict[str, FieldSpec] = {
    "positions": FieldSpec("atom", "float", (3,), unit="Å"),
    "atomic_numbers": FieldSpec("atom", "int", ()),
    "atomic_masses": FieldSpec("atom", "float", (), unit="amu"),
    "velocities": FieldSpec("atom", "float", (3,), unit="Å / ASE time unit"),
    "forces": FieldSpec("atom", "float", (3,), unit="eV/Å"),
    "energies": FieldSpec("system", "float", (1,), single_shape=(1, 1), unit="eV"),
    "stress": FieldSpec("system", "float", (3, 3), unit="eV/Å^3"),
    "cell": FieldSpec("system", "float", (3, 3), unit="Å"),
    "pbc": FieldSpec("system", "bool", (3,)),
    "system_id": FieldSpec("system", "int", (1,), single_shape=(1, 1)),
    # ASE's FixAtoms: True for atoms that never move (see batchmd.dynamics.constraints).
    "fixed": FieldSpec("atom", "bool", ()),
    # ASE's FixCom: the system's centre of mass never moves.
    "fix_com": FieldSpec("system", "bool", (), single_shape=()),
    "edge_index": FieldSpec("edge", "int", (2,), dim=1, atom_index=True),
    # The sample's own thermostat / barostat targets (atoms.info "temperature_K" / "pressure_GPa"):
    # they replace the stage's temperature / pressure for this system; NaN (absent): the stage's.
    "target_temperature": FieldSpec("system", "float", (), single_shape=(), unit="K", missing=float("nan")),
    "target_pressure": FieldSpec("system", "float", (), single_shape=(), unit="eV/Å^3", missing=float("nan")),
    # Total charge and spin multiplicity (atoms.info "charge" / "spin", as fairchem's calculator reads
    # them; models that take them, e.g. UMA's omol task): NaN (absent) means the model's default.
    "charge": FieldSpec("system", "float", (), single_shape=(), unit="e", missing=float("nan")),
    "spin": FieldSpec("system", "float", (), single_shape=(), unit="multiplicity 2S+1", missing=float("nan")),
}
"""Registry of the fields every layer may rely on (see ``docs/design_contracts.md``)."""


def field_spec(name: str) -> FieldSpec | None:
    """Spec of a known field, or ``None`` for a user field."""
    return KNOWN_FIELDS.get(name)


def user_field_spec(level: str, atom_index: bool = False) -> FieldSpec:
    """Spec for a user field of the given level (any dtype, any row shape).

    Raises
    ------
    ValueError
        If ``level`` is not one of :data:`LEVELS`.
    """
    if level not in LEVELS:
        raise ValueError(f"batchmd: field level must be one of {LEVELS}, got {level!r}")
    return FieldSpec(level, "any", None, atom_index=atom_index)


def coerce_dtype(name: str, tensor: torch.Tensor, spec: FieldSpec, float_dtype: torch.dtype) -> torch.Tensor:
    """Cast ``tensor`` to the dtype its spec requires (no copy when it already has it).

    Floating tensors (any kind) take ``float_dtype``; ``"int"`` fields become
    ``int64``; ``"bool"`` fields ``bool``. Integer and bool user fields keep
    their dtype.

    Raises
    ------
    ValueError
        If a ``"float"`` field is given as bool, or an ``"int"`` field holds
        non-integral floating values.
    """
    if spec.kind == "float":
        if tensor.dtype == torch.bool or tensor.is_complex():
            raise ValueError(f"batchmd: field {name!r} must be real floating, got dtype {tensor.dtype}")
        return tensor.to(float_dtype)
    if spec.kind == "int":
        if tensor.is_floating_point():
            if not bool(torch.all(tensor == torch.round(tensor))):
                raise ValueError(f"batchmd: field {name!r} must hold integers, got non-integral values")
        return tensor.to(torch.int64)
    if spec.kind == "bool":
        return tensor.to(torch.bool)
    if tensor.is_floating_point():
        return tensor.to(float_dtype)
    return tensor


def default_value(name: str, dtype: torch.dtype, atom_index: bool = False) -> float | int | bool:
    """The value :func:`default_fill` uses for field ``name``: -1, NaN, or zero/False.

    A known field declaring ``missing`` (``target_temperature``, ``target_pressure``: NaN,
    "not given") gets that value.

    Example
    -------
    >>> default_value("_nl_ref_positions", torch.float32)
    nan
    """
    if atom_index:
        return -1
    spec = KNOWN_FIELDS.get(name)
    if spec is not None and spec.missing is not None:
        return spec.missing
    if name.startswith("_") and dtype.is_floating_point:
        return float("nan")
    return False if dtype == torch.bool else 0


def default_fill(name: str, like: torch.Tensor, dim: int, rows: int, atom_index: bool = False) -> torch.Tensor:
    """Default value for a field absent from some systems (used by concat and slot ops).

    Policy (:func:`default_value`): a known field's ``missing`` value where it declares one
    (NaN for ``target_temperature`` / ``target_pressure``: "not given"); floating fields whose
    name starts with ``_`` (caches) are NaN so an
    absent cache is recognisably invalid; ``atom_index`` fields are -1 (padding,
    "no atom"); every other field is zero (``False`` for bool).

    Parameters
    ----------
    name : str
        Field name (decides the cache policy).
    like : torch.Tensor
        A tensor of the field from another source: gives dtype, device and row shape.
    dim : int
        Row axis of the field.
    rows : int
        Number of rows to create.
    atom_index : bool
        The field holds atom indices (filled with -1).
    """
    shape = list(like.shape)
    shape[dim] = rows
    return torch.full(shape, default_value(name, like.dtype, atom_index), dtype=like.dtype, device=like.device)


class FieldStore:
    """Accessors shared by :class:`~batchmd.data.AtomicData` and :class:`~batchmd.data.Batch`.

    Both keep their tensors in ``_fields`` (name -> tensor) and their layouts in ``_specs``
    (name -> :class:`FieldSpec`); ``positions`` is always present.
    """

    _fields: dict
    _specs: dict
    #: Attribute names that are never fields (looked up normally, never through the fields).
    _INTERNAL_NAMES: frozenset = frozenset()

    def __getattr__(self, name: str):
        """A field by attribute (``data.positions``); None for a known field that is absent."""
        if name.startswith("__") or name in self._INTERNAL_NAMES:
            raise AttributeError(name)
        fields = self.__dict__.get("_fields", {})
        if name in fields:
            return fields[name]
        if name in KNOWN_FIELDS:
            return None
        raise AttributeError(f"{type(self).__name__} has no field {name!r} (fields: {list(fields)})")

    def has_field(self, name: str) -> bool:
        """Whether field ``name`` is present."""
        return name in self._fields

    @property
    def num_nodes(self) -> int:
        """Number of atoms N (all systems together, for a Batch)."""
        return self._fields["positions"].shape[0]

    @property
    def num_edges(self) -> int:
        """Number of edges E (0 without edge fields)."""
        for name, spec in self._specs.items():
            if spec.level == "edge":
                return self._fields[name].shape[spec.dim]
        return 0

    @property
    def device(self) -> torch.device:
        """Device of every tensor."""
        return self._fields["positions"].device
