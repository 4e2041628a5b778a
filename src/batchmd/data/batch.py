"""Batch: many atomic systems stored as concatenated tensors on one device.

Atoms of all systems are concatenated (``positions`` [N, 3]); ``ptr`` [B+1]
(int32) gives each system's first atom and ``batch_idx`` [N] (int32) each
atom's system. Every field has a level (see :mod:`batchmd.data.fields`) and one
generic implementation (:mod:`batchmd.data.slots`) moves every field through
:meth:`Batch.index_select`, :meth:`Batch.append`, :meth:`Batch.remove` and
:meth:`Batch.replace_slots`. Units as in :class:`~batchmd.data.AtomicData`.

Example
-------
>>> import torch
>>> from ase.build import bulk, molecule
>>> from batchmd.data import Batch
>>> batch = Batch.from_ase([molecule("H2O"), bulk("Cu", cubic=True)], dtype=torch.float32)
>>> batch.num_graphs, batch.num_nodes, batch.ptr.tolist(), batch.cell.shape
(2, 7, [0, 3, 7], torch.Size([2, 3, 3]))
>>> small = batch.index_select(torch.tensor([1]))
>>> small.num_nodes
4
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from batchmd.data.atomic_data import AtomicData
from batchmd.data.fields import KNOWN_FIELDS, LEVELS, FieldSpec, FieldStore, coerce_dtype, field_spec, user_field_spec

__all__ = ["Batch"]

_REQUIRED = ("positions", "atomic_numbers", "atomic_masses", "cell", "pbc")
_STRUCTURE = frozenset({"ptr", "batch_idx", "edge_ptr"})
_INTERNAL = frozenset({"_fields", "_specs", "_ptr", "_batch_idx", "_edge_ptr", "_infos"})


class Batch(FieldStore):
    """Many systems in concatenated tensors (see the module docstring for an example).

    Build one with :meth:`from_data_list` or :meth:`from_ase`; the constructor
    is the low-level path used by the slot operations.

    Parameters
    ----------
    fields : dict of str -> torch.Tensor
        Every field (must include positions, atomic_numbers, atomic_masses, cell, pbc).
    specs : dict of str -> FieldSpec
        Level and layout of every field.
    ptr : torch.Tensor
        [B+1] system offsets into the atom axis.
    edge_ptr : torch.Tensor, optional
        [B+1] system offsets into the edge axis (default: all zeros).
    batch_idx : torch.Tensor, optional
        [N] atom -> system (computed from ``ptr`` when omitted).
    infos : list of dict, optional
        Per-system non-numeric metadata (``AtomicData.info``); ``None`` when empty.

    Attributes
    ----------
    positions, atomic_numbers, atomic_masses, velocities, forces, energies, stress,
    cell, pbc, system_id, edge_index
        Known fields (``None`` when absent); any other field via ``batch[name]``
        or ``getattr(batch, name)``.
    """

    _INTERNAL_NAMES = _INTERNAL

    def __init__(
        self,
        fields: dict[str, torch.Tensor],
        specs: dict[str, FieldSpec],
        ptr: torch.Tensor,
        edge_ptr: torch.Tensor | None = None,
        batch_idx: torch.Tensor | None = None,
        infos: list[dict] | None = None,
    ) -> None:
        missing = [n for n in _REQUIRED if n not in fields]
        if missing:
            raise ValueError(f"batchmd: Batch needs fields {missing}")
        device = fields["positions"].device
        ptr = ptr.to(device=device, dtype=torch.int32)
        num_nodes = fields["positions"].shape[0]
        if batch_idx is None:
            counts = (ptr[1:] - ptr[:-1]).long()
            batch_idx = torch.repeat_interleave(torch.arange(len(counts), device=device), counts,
                                                output_size=num_nodes)
        if edge_ptr is None:
            edge_ptr = torch.zeros_like(ptr)
        object.__setattr__(self, "_fields", dict(fields))
        object.__setattr__(self, "_specs", dict(specs))
        object.__setattr__(self, "_ptr", ptr.contiguous())
        object.__setattr__(self, "_batch_idx", batch_idx.to(device=device, dtype=torch.int32).contiguous())
        object.__setattr__(self, "_edge_ptr", edge_ptr.to(device=device, dtype=torch.int32).contiguous())
        object.__setattr__(self, "_infos", infos if infos and any(infos) else None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_data_list(cls, data_list: Sequence[AtomicData], device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> Batch:
        """Concatenate systems into a Batch.

        Parameters
        ----------
        data_list : sequence of AtomicData
            At least one system. A field missing from some systems gets the
            default of :func:`~batchmd.data.fields.default_fill` for them.
        device, dtype : optional
            Target device / floating dtype (default: those of the first system).

        Example
        -------
        >>> batch = Batch.from_data_list([AtomicData.from_ase(a) for a in atoms_list])  # doctest: +SKIP
        """
        from batchmd.data.slots import concat_parts

        if len(data_list) == 0:
            raise ValueError("batchmd: Batch.from_data_list needs at least one AtomicData")
        device = torch.device(device) if device is not None else data_list[0].device
        dtype = dtype or data_list[0].dtype
        parts = [d.to(device, dtype) for d in data_list]
        rows = [{"atom": d.num_nodes, "edge": d.num_edges, "system": 1} for d in parts]
        tensors = []
        for d in parts:
            item = {}
            for name, spec in d.specs.items():
                t = d[name]
                if spec.level == "system":
                    t = t.reshape(1, *spec.item_shape) if spec.item_shape is not None else t.unsqueeze(0)
                item[name] = t
            tensors.append(item)
        specs = [d.specs for d in parts]
        fields, merged_specs = concat_parts(tensors, specs, rows)
        counts = torch.tensor([r["atom"] for r in rows], dtype=torch.int64)
        edge_counts = torch.tensor([r["edge"] for r in rows], dtype=torch.int64)
        ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        edge_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), edge_counts.cumsum(0)])
        return cls(fields, merged_specs, ptr.to(device), edge_ptr.to(device), infos=[dict(d.info) for d in parts])

    @classmethod
    def from_ase(cls, atoms_list: Sequence, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, ignore_constraints: bool = False) -> Batch:
        """Build from a list of ``ase.Atoms`` (float64 unless ``dtype`` is given).

        See :meth:`AtomicData.from_ase` for what is read (``FixAtoms`` becomes ``fixed``;
        other constraints are refused unless ``ignore_constraints``). A bad frame raises
        ``ValueError`` starting with ``"frame k: "``. Example in the module docstring.
        """
        data = []
        for index, atoms in enumerate(atoms_list):
            try:
                data.append(AtomicData.from_ase(atoms, dtype=dtype, device=device,
                                                ignore_constraints=ignore_constraints))
            except ValueError as error:
                raise ValueError(f"frame {index}: {error}") from error
        return cls.from_data_list(data)

    def to_data_list(self) -> list[AtomicData]:
        """Split into one :class:`AtomicData` per system (one host sync).

        ``edge_index`` becomes system-local again; global-level fields are dropped. Values
        are not re-validated: a system that failed in a run (NaN positions) still splits.
        """
        ptr = self._ptr.tolist()
        eptr = self._edge_ptr.tolist()
        infos = self._infos or [{}] * self.num_graphs
        out = []
        for i in range(self.num_graphs):
            kwargs: dict[str, Any] = {}
            extra = []
            for name, spec in self._specs.items():
                t = self._fields[name]
                if spec.level == "global":
                    continue
                if spec.level == "atom":
                    part = t.narrow(spec.dim, ptr[i], ptr[i + 1] - ptr[i])
                elif spec.level == "edge":
                    part = t.narrow(spec.dim, eptr[i], eptr[i + 1] - eptr[i])
                else:
                    part = t[i]
                if spec.atom_index:
                    part = torch.where(part >= 0, part - ptr[i], part)
                if name in KNOWN_FIELDS:
                    kwargs[name] = part.clone()
                else:
                    extra.append((name, spec.level, part.clone()))
            data = AtomicData(**kwargs, info=dict(infos[i]), dtype=self.dtype, validate=False)
            for name, level, part in extra:
                data._add(name, part, level)
            out.append(data)
        return out

    def to_ase(self) -> list:
        """Convert to a list of ``ase.Atoms`` (see :meth:`AtomicData.to_ase`).

        This is the *raw* state: every non-``_`` field is kept (in ``info`` or arrays),
        including the dynamics' own state (``fire_*``, ``filter_*``, ``stage``, integer
        ``status``), so that a run can be inspected or continued exactly. For clean result
        structures (the input's info and arrays, new positions/cell/momenta, results,
        status names) use :func:`batchmd.ase.run_frames` / :func:`batchmd.ase.relax`, or
        :func:`batchmd.ase.results_to_atoms` on these frames.
        """
        return [d.to_ase() for d in self.to_data_list()]

    # ------------------------------------------------------------------ sizes, device
    @property
    def num_graphs(self) -> int:
        """Number of systems B."""
        return self._ptr.shape[0] - 1



    @property
    def ptr(self) -> torch.Tensor:
        """[B+1] int32 offsets: atoms of system i are ``ptr[i]:ptr[i+1]``."""
        return self._ptr

    @property
    def batch_idx(self) -> torch.Tensor:
        """[N] int32 system index of every atom."""
        return self._batch_idx

    @property
    def edge_ptr(self) -> torch.Tensor:
        """[B+1] int32 offsets into the edge axis (all zeros without edges)."""
        return self._edge_ptr

    @property
    def num_atoms_per_system(self) -> torch.Tensor:
        """[B] int32 number of atoms of each system."""
        return self._ptr[1:] - self._ptr[:-1]


    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype shared by every floating field."""
        return self._fields["positions"].dtype

    @property
    def infos(self) -> list[dict]:
        """Per-system non-numeric metadata (list of B dicts; copies)."""
        return [dict(i) for i in self._infos] if self._infos else [{} for _ in range(self.num_graphs)]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Batch:
        """Copy to ``device`` and/or floating ``dtype``; integer and bool fields keep their dtype.

        Returns ``self``'s tensors unchanged (no copy) when nothing changes.
        """
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise ValueError(f"batchmd: dtype must be torch.float32 or torch.float64, got {dtype}")

        def move(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device) if device is not None else t
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        return Batch({n: move(t) for n, t in self._fields.items()}, self._specs, move(self._ptr),
                     move(self._edge_ptr), move(self._batch_idx), self._infos)

    # ------------------------------------------------------------------ field access
    @property
    def fields(self) -> dict[str, str]:
        """Mapping field name -> level."""
        return {name: spec.level for name, spec in self._specs.items()}

    @property
    def specs(self) -> dict[str, FieldSpec]:
        """Mapping field name -> :class:`~batchmd.data.fields.FieldSpec`."""
        return dict(self._specs)


    def _rows(self, level: str) -> int | None:
        return {"atom": self.num_nodes, "system": self.num_graphs, "edge": self.num_edges}.get(level)

    def set_field(self, name: str, tensor: torch.Tensor, level: str | None = None, atom_index: bool = False) -> None:
        """Add or replace a field in place (no copy when device and dtype already match).

        Parameters
        ----------
        name : str
            Field name (a Python identifier; ``_``-prefixed names are caches).
        tensor : torch.Tensor
            ``[N, ...]`` (atom), ``[B, ...]`` (system), ``[E, ...]`` (edge) or
            any shape (global). Moved to the batch device; floating tensors take
            the batch dtype; integer/bool tensors keep theirs (known fields use
            their declared dtype).
        level : str, optional
            One of ``"atom"``, ``"system"``, ``"edge"``, ``"global"``. Known
            fields and existing fields default to their level.
        atom_index : bool
            New user field whose non-negative values are global atom indices,
            re-offset by slot operations.

        Raises
        ------
        ValueError
            On a bad name, a level conflict or a wrong shape.

        Example
        -------
        >>> batch.set_field("fire_dt", torch.full((batch.num_graphs,), 0.1), "system")  # doctest: +SKIP
        """
        if name in _STRUCTURE or name in _INTERNAL or not name.isidentifier():
            raise ValueError(f"batchmd: {name!r} is not a valid field name")
        spec = field_spec(name) or self._specs.get(name)
        if spec is None:
            if level is None:
                raise ValueError(f"batchmd: new field {name!r} needs a level, one of {LEVELS}")
            spec = user_field_spec(level, atom_index)
        if level is not None and level != spec.level:
            raise ValueError(f"batchmd: field {name!r} is {spec.level}-level, not {level}-level")
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(tensor)
        tensor = coerce_dtype(name, tensor.to(self.device), spec, self.dtype)
        if spec.level != "global":
            if tensor.dim() <= spec.dim:
                raise ValueError(f"batchmd: field {name!r} ({spec.level} level) needs at least {spec.dim + 1} dims")
            rows = self._rows(spec.level)
            others = [n for n, s in self._specs.items() if s.level == "edge" and n != name]
            if spec.level == "edge" and not others:
                rows = int(self._edge_ptr[-1]) if self.num_graphs else 0
            if tensor.shape[spec.dim] != rows:
                raise ValueError(f"batchmd: field {name!r} needs {rows} rows ({spec.level} level) along dim "
                                 f"{spec.dim}, got shape {list(tensor.shape)}")
            if spec.item_shape is not None:
                rest = tuple(tensor.shape[: spec.dim] + tensor.shape[spec.dim + 1 :])
                if rest != spec.item_shape:
                    raise ValueError(f"batchmd: field {name!r} rows must have shape {list(spec.item_shape)}, "
                                     f"got {list(tensor.shape)}")
        self._fields[name] = tensor.contiguous()
        self._specs[name] = spec

    def without_fields(self, names=None, prefix: str | None = None) -> Batch:
        """A shallow copy without some fields (no tensor is copied).

        Parameters
        ----------
        names : iterable of str, optional
            Fields to leave out (required fields cannot be left out).
        prefix : str, optional
            Also leave out every field whose name starts with ``prefix`` (e.g. ``"_"``
            for the caches models and dynamics keep in the batch).

        Example
        -------
        >>> light = batch.without_fields(prefix="_")   # doctest: +SKIP
        """
        drop = set(names or ())
        if prefix:
            drop |= {n for n in self._fields if n.startswith(prefix)}
        required = drop & set(_REQUIRED)
        if required:
            raise ValueError(f"batchmd: without_fields cannot drop required fields {sorted(required)}")
        fields = {n: t for n, t in self._fields.items() if n not in drop}
        specs = {n: s for n, s in self._specs.items() if n not in drop}
        return Batch(fields, specs, self._ptr, self._edge_ptr, self._batch_idx, self._infos)

    def set_edges(self, edge_index: torch.Tensor, edge_ptr: torch.Tensor) -> None:
        """Replace the edge set in place: ``edge_index`` [2, E] and its per-system offsets.

        Edges must be grouped system by system: edges of system i are
        ``edge_ptr[i]:edge_ptr[i+1]``, and ``edge_index`` holds global atom
        indices (atoms of the same system). Other edge-level fields are dropped
        (their row count no longer matches); add new ones with :meth:`set_field`.
        One host sync (checks ``edge_ptr[-1] == E``).

        Example
        -------
        >>> batch.set_edges(torch.tensor([[0, 1], [1, 0]]), torch.tensor([0, 2, 2]))  # doctest: +SKIP
        """
        edge_index = torch.as_tensor(edge_index, device=self.device).to(torch.int64)
        edge_ptr = torch.as_tensor(edge_ptr, device=self.device).to(torch.int32)
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"batchmd: field 'edge_index' must have shape [2, E], got {list(edge_index.shape)}")
        if edge_ptr.shape != (self.num_graphs + 1,):
            raise ValueError(f"batchmd: edge_ptr must have shape [{self.num_graphs + 1}], got {list(edge_ptr.shape)}")
        if int(edge_ptr[-1]) != edge_index.shape[1] or (self.num_graphs and int(edge_ptr[0]) != 0):
            raise ValueError(f"batchmd: edge_ptr must run from 0 to E={edge_index.shape[1]}")
        for name in [n for n, s in self._specs.items() if s.level == "edge"]:
            del self._fields[name], self._specs[name]
        object.__setattr__(self, "_edge_ptr", edge_ptr.contiguous())
        self._fields["edge_index"] = edge_index.contiguous()
        self._specs["edge_index"] = KNOWN_FIELDS["edge_index"]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in _STRUCTURE:
            return getattr(self, name)
        return self._fields[name]

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        self.set_field(name, tensor)

    def __contains__(self, name: str) -> bool:
        return name in self._fields

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._fields or name in KNOWN_FIELDS:
            self.set_field(name, value)
        else:
            raise AttributeError(f"Batch: cannot set {name!r}; add a new field with set_field(name, tensor, level)")

    def __repr__(self) -> str:
        by_level = {lvl: [n for n, s in self._specs.items() if s.level == lvl] for lvl in LEVELS}
        levels = ", ".join(f"{lvl}={names}" for lvl, names in by_level.items() if names)
        return (f"Batch(num_graphs={self.num_graphs}, num_nodes={self.num_nodes}, "
                f"dtype={str(self.dtype).replace('torch.', '')}, device={self.device}, {levels})")

    def __len__(self) -> int:
        return self.num_graphs

    # ------------------------------------------------------------------ slot operations
    def index_select(self, system_indices: torch.Tensor | Sequence[int]) -> Batch:
        """New Batch of the systems ``system_indices`` (LongTensor [k] or bool mask [B]), in that order.

        Negative indices count from the end; repeats are allowed. One host sync
        (two with a non-empty :attr:`infos`). Example in the module docstring.
        """
        from batchmd.data.slots import select_systems

        return select_systems(self, system_indices)

    def remove(self, system_indices: torch.Tensor | Sequence[int]) -> Batch:
        """New Batch without the systems ``system_indices`` (LongTensor [k] or bool mask [B]).

        The remaining systems keep their order. One host sync (two with a
        non-empty :attr:`infos`).

        Example: ``batch.remove(torch.tensor([0, 2]))``.
        """
        from batchmd.data.slots import remove_systems

        return remove_systems(self, system_indices)

    def append(self, other: Batch) -> Batch:
        """New Batch with ``other``'s systems after ``self``'s (``other`` is moved to this device/dtype).

        A field present in only one of the two is added and filled for the
        other's systems by :func:`~batchmd.data.fields.default_fill` (zeros /
        False; NaN for floating ``_`` caches; -1 for atom-index fields); global
        fields take ``self``'s value. No host sync.
        Example: ``batch.append(Batch.from_ase(new_atoms))``.
        """
        from batchmd.data.slots import concat_batches

        return concat_batches([self, other])

    def select_and_append(self, keep: torch.Tensor | Sequence[int], other: Batch) -> Batch:
        """New Batch of the systems ``keep`` (LongTensor [k] or bool mask [B]) followed by all of ``other``'s.

        The same result as ``self.index_select(keep).append(other)`` in one pass: every
        row of every field is written once, straight into the new tensors (the inflight
        refill: survivors stay, graduated systems leave, newcomers enter at the end).
        Missing fields are filled as in :meth:`append`. One host sync (two with a
        non-empty :attr:`infos`).

        Example: ``batch = batch.select_and_append(~graduated_mask, Batch.from_ase(new_atoms))``.
        """
        from batchmd.data.slots import select_and_append

        return select_and_append(self, keep, other)

    def overwrite_systems(self, slots: Sequence[int], other: Batch) -> None:
        """Write ``other``'s systems into slots ``slots`` *in place* (each of the same atom count).

        Unlike :meth:`replace_slots` no tensor is reallocated: every field's rows of those
        systems are overwritten (``index_copy_``), so views of the fields (Warp arrays,
        captured CUDA graphs) stay valid. Fields the new systems lack get the defaults of
        :meth:`append`; a field only they have is added. Cache fields (names starting with
        ``_``) are left as they are: their owner must refresh them for the replaced systems.
        No edges. One host sync.

        Raises
        ------
        ValueError
            If slots repeat or are out of range, a size differs, or a field's dtype or row
            shape differs between the batches.

        Example: ``batch.overwrite_systems([3, 0], Batch.from_ase([a, b]))`` (a has the atom count of slot 3).
        """
        from batchmd.data.slots import overwrite_systems

        overwrite_systems(self, slots, other)

    def replace_slots(self, slots: torch.Tensor | Sequence[int], other: Batch) -> Batch:
        """New Batch where the system at ``slots[j]`` is replaced by ``other``'s system ``j``.

        Systems may change size; all other systems keep their slot. Missing
        fields are filled as in :meth:`append`. One host sync.

        Parameters
        ----------
        slots : LongTensor [k]
            Distinct slot indices (``k == other.num_graphs``).
        other : Batch
            The k incoming systems.

        Example: ``batch = batch.replace_slots(torch.tensor([3, 0]), Batch.from_ase([a, b]))``.
        """
        from batchmd.data.slots import replace_slots

        return replace_slots(self, slots, other)


def _known_field_property(name: str) -> property:
    spec = KNOWN_FIELDS[name]

    def get(self: Batch) -> torch.Tensor | None:
        return self._fields.get(name)

    def put(self: Batch, value: torch.Tensor) -> None:
        self.set_field(name, value)

    doc = f"{spec.level}-level field {name!r}" + (f" ({spec.unit})" if spec.unit else "") + "; None when absent."
    return property(get, put, doc=doc)


for _name in KNOWN_FIELDS:
    setattr(Batch, _name, _known_field_property(_name))
del _name
