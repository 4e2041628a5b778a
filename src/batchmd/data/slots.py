"""Generic system selection, concatenation and slot replacement for :class:`Batch`.

One implementation serves every field, user fields and ``_`` caches included:
a field moves by its level (atom rows by the atom gather index, system rows by
the system index, edge rows by the edge gather index, global fields unchanged),
and a field flagged ``atom_index`` has its non-negative values re-offset to the
new atom numbering. Everything is done with device-side torch ops
(``repeat_interleave``, ``cumsum``, ``index_select``); the only host syncs read
the new atom/edge totals (one per operation) and, when systems carry a
non-empty ``info`` dict, the selected indices.

Default policy for a field present in only some of the concatenated sources
(:func:`~batchmd.data.fields.default_fill`): zeros (``False`` for bool) for
the systems lacking it, NaN for floating fields whose name starts with ``_``,
-1 ("no atom", padding) for ``atom_index`` fields. This applies in both
directions: the live batch lacking a field of the incoming systems (the field
is added, the live systems get the default) and the reverse. Exception: an
``atom_index`` edge field (``edge_index``) cannot be invented for systems that
have edges; that raises ``ValueError``.

Example
-------
>>> import torch
>>> from ase.build import molecule
>>> from batchmd.data import Batch
>>> live = Batch.from_ase([molecule("H2O"), molecule("CH4"), molecule("NH3")])
>>> new = live.replace_slots(torch.tensor([1]), Batch.from_ase([molecule("C6H6")]))
>>> new.num_atoms_per_system.tolist()
[3, 12, 4]
"""

from __future__ import annotations

from typing import Sequence

import torch

from batchmd.data.fields import FieldSpec, default_fill, default_value

__all__ = ["concat_parts", "concat_batches", "select_systems", "remove_systems", "replace_slots",
           "select_and_append", "overwrite_systems", "write_systems", "spread_systems"]


def _shift_index(t: torch.Tensor, shift: torch.Tensor | int, dim: int, subtract: bool) -> torch.Tensor:
    """Add (or subtract) a per-row shift to the non-negative entries of an atom-index field."""
    if isinstance(shift, torch.Tensor):
        shape = [1] * t.dim()
        shape[dim] = -1
        shift = shift.reshape(shape).to(t.dtype)
    moved = t - shift if subtract else t + shift
    return torch.where(t >= 0, moved, t)


def _merged_specs(a: dict[str, FieldSpec], b: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
    """``a``'s specs then ``b``'s new ones; a field whose level or row axis differs is an error."""
    merged = dict(a)
    for name, spec in b.items():
        if name in merged and (merged[name].level, merged[name].dim) != (spec.level, spec.dim):
            raise ValueError(f"batchmd: field {name!r} is {merged[name].level}-level in one batch "
                             f"and {spec.level}-level in another")
        merged.setdefault(name, spec)
    return merged


def concat_parts(parts: list[dict[str, torch.Tensor]], specs: list[dict[str, FieldSpec]],
                 rows: list[dict[str, int]]) -> tuple[dict[str, torch.Tensor], dict[str, FieldSpec]]:
    """Concatenate field dictionaries of several sources, level by level.

    Parameters
    ----------
    parts : list of dict
        Per source, field name -> tensor (system fields with a leading row axis).
    specs : list of dict
        Per source, field name -> FieldSpec (levels must agree across sources).
    rows : list of dict
        Per source, ``{"atom": n, "system": b, "edge": e}`` row counts.

    Returns
    -------
    fields, specs : dict, dict
        Concatenated fields (``atom_index`` fields re-offset by each source's
        atom offset) and merged specs; missing fields get :func:`default_fill`.

    Raises
    ------
    ValueError
        On a level, dtype or row-shape conflict, or a missing ``atom_index``
        edge field for a source that has edges.
    """
    merged: dict[str, FieldSpec] = {}
    for source_specs in specs:
        merged = _merged_specs(merged, source_specs)
    atom_offsets = [0]
    for r in rows:
        atom_offsets.append(atom_offsets[-1] + r["atom"])
    fields: dict[str, torch.Tensor] = {}
    for name, spec in merged.items():
        present = [p[name] for p in parts if name in p]
        like = present[0]
        if spec.level == "global":
            fields[name] = like
            continue
        pieces = []
        for p, r, offset in zip(parts, rows, atom_offsets):
            t = p.get(name)
            if t is None:
                if spec.atom_index and spec.level == "edge" and r["edge"] > 0:
                    raise ValueError(f"batchmd: edge field {name!r} (atom indices) is missing from a batch "
                                     f"with {r['edge']} edges; edges cannot be invented")
                t = default_fill(name, like, spec.dim, r[spec.level], spec.atom_index)
            else:
                if t.dtype != like.dtype:
                    raise ValueError(f"batchmd: field {name!r} has dtype {like.dtype} in one batch and {t.dtype} "
                                     f"in another")
                if spec.atom_index and offset:
                    t = _shift_index(t, offset, spec.dim, subtract=False)
            pieces.append(t)
        if name.startswith("_") and len(pieces) > 1:
            pieces = _pad_cache_pieces(name, pieces, spec.dim)
        try:
            fields[name] = torch.cat(pieces, dim=spec.dim) if len(pieces) > 1 else pieces[0]
        except RuntimeError as err:
            raise ValueError(f"batchmd: field {name!r} has different row shapes across batches: "
                             f"{[list(t.shape) for t in pieces]}") from err
    return fields, merged


def _pad_cache_pieces(name: str, pieces: list[torch.Tensor], dim: int) -> list[torch.Tensor]:
    """Pad ``_``-prefixed cache fields whose trailing dimensions differ to the largest.

    Caches such as a neighbor matrix [N, K] may have grown to a different width K in
    different batches; the padding holds the cache default (NaN for floating caches,
    0 for integer ones) and the cache's owner ignores entries past its own counts.
    """
    trailing = [tuple(t.shape[dim + 1:]) for t in pieces]
    if len(set(trailing)) == 1 or len({len(s) for s in trailing}) != 1:
        return pieces
    target = tuple(max(sizes) for sizes in zip(*trailing))
    out = []
    for t in pieces:
        if tuple(t.shape[dim + 1:]) == target:
            out.append(t)
            continue
        shape = tuple(t.shape[: dim + 1]) + target
        fill = float("nan") if t.dtype.is_floating_point else 0
        padded = torch.full(shape, fill, dtype=t.dtype, device=t.device)
        padded[tuple(slice(0, n) for n in t.shape)] = t
        out.append(padded)
    return out


def concat_batches(batches: Sequence) -> "Batch":  # noqa: F821 (Batch imported lazily)
    """Concatenate Batches (systems of ``batches[0]`` first); no host sync.

    Later batches are moved to the first one's device and floating dtype.
    See the module docstring for the default policy of missing fields.
    """
    from batchmd.data.batch import Batch

    first = batches[0]
    batches = [first] + [b.to(first.device, first.dtype) for b in batches[1:]]
    rows = [{"atom": b.num_nodes, "system": b.num_graphs, "edge": b.num_edges} for b in batches]
    fields, specs = concat_parts([b._fields for b in batches], [b._specs for b in batches], rows)
    ptrs, eptrs, bidx = [], [], []
    atom_off = edge_off = graph_off = 0
    for b in batches:
        ptrs.append(b.ptr[:-1].long() + atom_off)
        eptrs.append(b.edge_ptr[:-1].long() + edge_off)
        bidx.append(b.batch_idx + graph_off)
        atom_off += b.num_nodes
        edge_off += b.num_edges
        graph_off += b.num_graphs
    end = torch.tensor([atom_off, edge_off], dtype=torch.int64, device=first.device)
    ptr = torch.cat(ptrs + [end[:1]])
    edge_ptr = torch.cat(eptrs + [end[1:]])
    infos = None
    if any(b._infos for b in batches):
        infos = [info for b in batches for info in b.infos]
    return Batch(fields, specs, ptr, edge_ptr, torch.cat(bidx), infos)


def _layout(ptr: torch.Tensor, idx: torch.Tensor, total: int):
    """Gather plan for one axis (atoms or edges) when keeping systems ``idx``.

    Returns the new offsets [k+1], the source row of every new row [total],
    the new owner system of every new row [total] and, per selected system,
    ``old_start - new_start`` [k].
    """
    counts = (ptr[1:] - ptr[:-1]).long().index_select(0, idx)
    new_ptr = torch.zeros(idx.shape[0] + 1, dtype=torch.int64, device=ptr.device)
    torch.cumsum(counts, 0, out=new_ptr[1:])
    shift = ptr[:-1].long().index_select(0, idx) - new_ptr[:-1]
    owner = torch.repeat_interleave(torch.arange(idx.shape[0], device=ptr.device), counts, output_size=total)
    source = torch.arange(total, device=ptr.device) + shift.index_select(0, owner)
    return new_ptr, source, owner, shift


def _take(batch, idx: torch.Tensor, num_nodes: int, num_edges: int, host_idx: list[int] | None = None):
    """Gather systems ``idx`` (valid, on device) given the new atom and edge totals (no sync)."""
    from batchmd.data.batch import Batch

    new_ptr, atom_src, batch_idx, atom_shift = _layout(batch.ptr, idx, num_nodes)
    new_eptr, edge_src, edge_owner, _ = _layout(batch.edge_ptr, idx, num_edges)
    gather = {"atom": atom_src, "system": idx, "edge": edge_src}
    owners = {"atom": batch_idx, "system": None, "edge": edge_owner}
    fields = {}
    for name, spec in batch._specs.items():
        t = batch._fields[name]
        if spec.level == "global":
            fields[name] = t
            continue
        t = t.index_select(spec.dim, gather[spec.level])
        if spec.atom_index:
            owner = owners[spec.level]
            row_shift = atom_shift if owner is None else atom_shift.index_select(0, owner)
            t = _shift_index(t, row_shift, spec.dim, subtract=True)
        fields[name] = t
    infos = None
    if batch._infos is not None:
        host_idx = idx.tolist() if host_idx is None else host_idx
        infos = [dict(batch._infos[i]) for i in host_idx]
    return Batch(fields, batch._specs, new_ptr, new_eptr, batch_idx, infos)


def _as_index(batch, indices, name: str) -> torch.Tensor:
    idx = torch.as_tensor(indices, device=batch.device)
    if idx.dtype == torch.bool:
        if idx.shape != (batch.num_graphs,):
            raise ValueError(f"batchmd: {name} bool mask must have shape [{batch.num_graphs}], got {list(idx.shape)}")
        return idx
    if idx.is_floating_point() or idx.dim() != 1:
        raise ValueError(f"batchmd: {name} must be a 1-D integer tensor or a bool mask [B]")
    return idx.long()


def _sizes_and_check(batch, keep_counts: torch.Tensor, keep_edges: torch.Tensor, extra: list[torch.Tensor]):
    """One host sync: totals of selected atoms/edges plus extra scalars."""
    values = torch.stack([keep_counts.sum(), keep_edges.sum()] + [e.long() for e in extra]).tolist()
    return values[0], values[1], values[2:]


def _select_mask(batch, keep: torch.Tensor, valid: torch.Tensor | None, what: str):
    counts = (batch.ptr[1:] - batch.ptr[:-1]).long()
    ecounts = (batch.edge_ptr[1:] - batch.edge_ptr[:-1]).long()
    extra = [keep.sum()] + ([valid] if valid is not None else [])
    n, e, rest = _sizes_and_check(batch, counts * keep, ecounts * keep, extra)
    if valid is not None and not rest[1]:
        raise ValueError(f"batchmd: {what}: system indices out of range for a batch of {batch.num_graphs}")
    idx = torch.argsort((~keep).to(torch.int8), stable=True)[: rest[0]]
    return _take(batch, idx, n, e)


def select_systems(batch, indices) -> "Batch":  # noqa: F821
    """Implementation of :meth:`Batch.index_select` (see there)."""
    idx = _as_index(batch, indices, "index_select")
    if idx.dtype == torch.bool:
        return _select_mask(batch, idx, None, "index_select")
    b = batch.num_graphs
    valid = ((idx >= -b) & (idx < b)).all()
    idx = torch.where(idx < 0, idx + b, idx).clamp(0, max(b - 1, 0))
    counts = (batch.ptr[1:] - batch.ptr[:-1]).long()
    ecounts = (batch.edge_ptr[1:] - batch.edge_ptr[:-1]).long()
    if b == 0:
        counts, ecounts = counts.new_zeros(1), ecounts.new_zeros(1)
    n, e, rest = _sizes_and_check(batch, counts[idx], ecounts[idx], [valid])
    if not rest[0] or (b == 0 and idx.numel()):
        raise ValueError(f"batchmd: index_select: system indices out of range for a batch of {b}")
    return _take(batch, idx, n, e)


def remove_systems(batch, indices) -> "Batch":  # noqa: F821
    """Implementation of :meth:`Batch.remove` (see there)."""
    idx = _as_index(batch, indices, "remove")
    if idx.dtype == torch.bool:
        return _select_mask(batch, ~idx, None, "remove")
    b = batch.num_graphs
    valid = ((idx >= -b) & (idx < b)).all()
    keep = torch.ones(b, dtype=torch.bool, device=batch.device)
    if b:
        keep[torch.where(idx < 0, idx + b, idx).clamp(0, b - 1)] = False
    return _select_mask(batch, keep, valid, "remove")


def replace_slots(batch, slots, other) -> "Batch":  # noqa: F821
    """Implementation of :meth:`Batch.replace_slots` (see there)."""
    slots = _as_index(batch, slots, "replace_slots slots")
    if slots.dtype == torch.bool:
        raise ValueError("batchmd: replace_slots needs slot indices (LongTensor [k]), not a bool mask")
    b, k = batch.num_graphs, slots.shape[0]
    if other.num_graphs != k:
        raise ValueError(f"batchmd: replace_slots got {k} slots but the incoming batch has {other.num_graphs} systems")
    if k == 0:
        return batch
    if b == 0:
        raise ValueError("batchmd: replace_slots on an empty batch: no slots to replace")
    valid = ((slots >= -b) & (slots < b)).all()
    slots = torch.where(slots < 0, slots + b, slots).clamp(0, b - 1)
    hits = torch.zeros(b, dtype=torch.int64, device=batch.device).index_add_(0, slots, torch.ones_like(slots))
    valid = valid & (hits <= 1).all()
    order = torch.arange(b, device=batch.device).index_put((slots,), b + torch.arange(k, device=batch.device))
    merged = concat_batches([batch, other])
    counts = (merged.ptr[1:] - merged.ptr[:-1]).long().index_select(0, order)
    ecounts = (merged.edge_ptr[1:] - merged.edge_ptr[:-1]).long().index_select(0, order)
    n, e, rest = _sizes_and_check(merged, counts, ecounts, [valid])
    if not rest[0]:
        raise ValueError(f"batchmd: replace_slots: slots must be distinct and within 0..{b - 1}")
    host_order = order.tolist() if merged._infos is not None else None
    return _take(merged, order, n, e, host_order)


def _out_shape(name: str, spec: FieldSpec, ta, tb, rows: int) -> tuple[int, ...]:
    """Shape of the combined field: rows along the row axis; ``_`` caches padded to the wider trailing shape."""
    like = ta if ta is not None else tb
    dim = spec.dim
    shapes = [tuple(t.shape) for t in (ta, tb) if t is not None]
    lead = {s[:dim] for s in shapes}
    trail = {s[dim + 1:] for s in shapes}
    if ta is not None and tb is not None and ta.dtype != tb.dtype:
        raise ValueError(f"batchmd: field {name!r} has dtype {ta.dtype} in one batch and {tb.dtype} in another")
    if len(lead) > 1 or (len(trail) > 1 and not (name.startswith("_") and len({len(t) for t in trail}) == 1)):
        raise ValueError(f"batchmd: field {name!r} has different row shapes across batches: {[list(s) for s in shapes]}")
    target = tuple(max(sizes) for sizes in zip(*trail)) if trail else ()
    return tuple(like.shape[:dim]) + (rows,) + target


def _write_part(part: torch.Tensor, name: str, spec: FieldSpec, source, gather, rows: int) -> None:
    """Fill ``part`` (a slice of the output along the row axis) from ``source`` rows ``gather`` (all if None)."""
    dim = spec.dim
    if source is None:
        if spec.atom_index and spec.level == "edge" and rows > 0:
            raise ValueError(f"batchmd: edge field {name!r} (atom indices) is missing from a batch "
                             f"with {rows} edges; edges cannot be invented")
        part.fill_(default_value(name, part.dtype, spec.atom_index))
        return
    if tuple(source.shape[dim + 1:]) != tuple(part.shape[dim + 1:]):  # a narrower cache: pad
        part.fill_(default_value(name, part.dtype, spec.atom_index))
        part = part[tuple(slice(0, n) for n in part.shape[:dim + 1]) + tuple(slice(0, n) for n in source.shape[dim + 1:])]
    if gather is None:
        part.copy_(source)
    elif dim == 0 and part.is_contiguous():
        torch.index_select(source, 0, gather, out=part)  # each byte moved once
    else:
        part.copy_(source.index_select(dim, gather))


#: Fields smaller than this are gathered and concatenated (fewer torch calls); larger ones
#: are gathered straight into the result, so their rows move once.
_SMALL_FIELD_BYTES = 1 << 18


def select_and_append(batch, keep, other) -> "Batch":  # noqa: F821
    """Implementation of :meth:`Batch.select_and_append` (see there)."""
    from batchmd.data.batch import Batch

    idx = _as_index(batch, keep, "select_and_append")
    other = other.to(batch.device, batch.dtype)
    b = batch.num_graphs
    counts = (batch.ptr[1:] - batch.ptr[:-1]).long()
    ecounts = (batch.edge_ptr[1:] - batch.edge_ptr[:-1]).long()
    if idx.dtype == torch.bool:
        n_a, e_a, rest = _sizes_and_check(batch, counts * idx, ecounts * idx, [idx.sum()])
        idx = torch.argsort((~idx).to(torch.int8), stable=True)[: rest[0]]
    else:
        valid = ((idx >= -b) & (idx < b)).all()
        idx = torch.where(idx < 0, idx + b, idx).clamp(0, max(b - 1, 0))
        if b == 0:
            counts, ecounts = counts.new_zeros(1), ecounts.new_zeros(1)
        n_a, e_a, rest = _sizes_and_check(batch, counts[idx], ecounts[idx], [valid])
        if not rest[0] or (b == 0 and idx.numel()):
            raise ValueError(f"batchmd: select_and_append: system indices out of range for a batch of {b}")
    k = idx.shape[0]
    ptr_a, atom_src, owner_a, atom_shift = _layout(batch.ptr, idx, n_a)
    eptr_a, edge_src, edge_owner_a, _ = _layout(batch.edge_ptr, idx, e_a)
    rows_a = {"atom": n_a, "system": k, "edge": e_a}
    rows_b = {"atom": other.num_nodes, "system": other.num_graphs, "edge": other.num_edges}
    gather = {"atom": atom_src, "system": idx, "edge": edge_src}
    owners = {"atom": owner_a, "system": None, "edge": edge_owner_a}
    specs = _merged_specs(batch._specs, other._specs)
    fields: dict[str, torch.Tensor] = {}
    for name, spec in specs.items():
        ta, tb = batch._fields.get(name), other._fields.get(name)
        if spec.level == "global":
            fields[name] = ta if ta is not None else tb
            continue
        like = ta if ta is not None else tb
        ra, rb = rows_a[spec.level], rows_b[spec.level]
        if (not spec.atom_index and ta is not None and tb is not None and ta.shape[spec.dim + 1:] == tb.shape[spec.dim + 1:]
                and ta.dtype == tb.dtype and ta.numel() * ta.element_size() < _SMALL_FIELD_BYTES):
            # small fields: two torch ops instead of five (the second copy costs nothing here)
            fields[name] = torch.cat([ta.index_select(spec.dim, gather[spec.level]), tb], dim=spec.dim)
            continue
        out = torch.empty(_out_shape(name, spec, ta, tb, ra + rb), dtype=like.dtype, device=batch.device)
        part_a, part_b = out.narrow(spec.dim, 0, ra), out.narrow(spec.dim, ra, rb)
        _write_part(part_a, name, spec, ta, gather[spec.level], ra)
        _write_part(part_b, name, spec, tb, None, rb)
        if spec.atom_index:
            if ta is not None:
                owner = owners[spec.level]
                row_shift = atom_shift if owner is None else atom_shift.index_select(0, owner)
                part_a.copy_(_shift_index(part_a, row_shift, spec.dim, subtract=True))
            if tb is not None and n_a:
                part_b.copy_(_shift_index(part_b, n_a, spec.dim, subtract=False))
        fields[name] = out
    ptr = torch.cat([ptr_a[:-1], other.ptr.long() + n_a])
    edge_ptr = torch.cat([eptr_a[:-1], other.edge_ptr.long() + e_a])
    batch_idx = torch.cat([owner_a, other.batch_idx.long() + k])
    infos = None
    if batch._infos is not None or other._infos is not None:
        mine = [dict(batch._infos[i]) for i in idx.tolist()] if batch._infos is not None else [{} for _ in range(k)]
        infos = mine + other.infos
    return Batch(fields, specs, ptr, edge_ptr, batch_idx, infos)


def _check_in_place(batch, other, what: str) -> dict[str, FieldSpec]:
    """Merged specs of two batches that can be written in place (no edges, no atom-index fields)."""
    specs = _merged_specs(batch._specs, other._specs)
    if batch.num_edges or other.num_edges or any(spec.level == "edge" or spec.atom_index for spec in specs.values()):
        raise ValueError(f"batchmd: {what}: batches with edges or atom-index fields cannot be written in place")
    return specs


def _write_rows(batch, specs: dict[str, FieldSpec], rows: dict[str, torch.Tensor], other, system_rows: list[int],
                what: str) -> None:
    """Copy every non-cache field of ``other`` into ``batch``'s ``rows`` (per level), in place."""
    for name, spec in specs.items():
        if spec.level == "global" or name.startswith("_"):
            continue  # caches stay: their owner refreshes them for the replaced systems
        dst, src = batch._fields.get(name), other._fields.get(name)
        if dst is None:
            dst = default_fill(name, src, spec.dim, batch._rows(spec.level))
            batch.set_field(name, dst, spec.level)
            dst = batch._fields[name]
        if src is None:
            dst.index_fill_(spec.dim, rows[spec.level], default_value(name, dst.dtype))
            continue
        if src.dtype != dst.dtype or tuple(src.shape[spec.dim + 1:]) != tuple(dst.shape[spec.dim + 1:]):
            raise ValueError(f"batchmd: {what}: field {name!r} is {src.dtype} {list(src.shape)} in the "
                             f"new systems and {dst.dtype} {list(dst.shape)} in the batch")
        dst.index_copy_(spec.dim, rows[spec.level], src)
    if batch._infos is not None or other._infos is not None:
        infos = batch.infos
        for s, info in zip(system_rows, other.infos):
            infos[s] = dict(info)
        object.__setattr__(batch, "_infos", infos if any(infos) else None)


def overwrite_systems(batch, slots: Sequence[int], other) -> None:
    """Implementation of :meth:`Batch.overwrite_systems` (see there)."""
    slots = [int(s) for s in slots]
    b = batch.num_graphs
    if len(slots) != other.num_graphs:
        raise ValueError(f"batchmd: overwrite_systems: {len(slots)} slots for {other.num_graphs} systems")
    if len(set(slots)) != len(slots) or any(not 0 <= s < b for s in slots):
        raise ValueError(f"batchmd: overwrite_systems: slots must be distinct and within 0..{b - 1}, got {slots}")
    specs = _check_in_place(batch, other, "overwrite_systems")
    if not slots:
        return
    other = other.to(batch.device, batch.dtype)
    ptr = batch.ptr.tolist()  # the one host read
    sizes = other.num_atoms_per_system.tolist()
    for s, n in zip(slots, sizes):
        if ptr[s + 1] - ptr[s] != n:
            raise ValueError(f"batchmd: overwrite_systems: slot {s} holds {ptr[s + 1] - ptr[s]} atoms, "
                             f"its replacement {n}; sizes must match (use select_and_append)")
    atom_rows = torch.cat([torch.arange(ptr[s], ptr[s + 1]) for s in slots]).to(batch.device)
    rows = {"atom": atom_rows, "system": torch.tensor(slots, device=batch.device)}
    _write_rows(batch, specs, rows, other, slots, "overwrite_systems")


def write_systems(batch, system_rows: Sequence[int], atom_starts: Sequence[int], other) -> None:
    """Write ``other``'s system ``i`` into system row ``system_rows[i]`` and atom rows
    ``atom_starts[i] .. atom_starts[i] + n_i`` of ``batch``, in place; no host sync.

    The caller owns the layout: ``batch.ptr`` and ``batch.batch_idx`` are *not* changed
    (see :class:`batchmd.dynamics.slot_layout.SlotLayout`, which rewrites them). Fields are
    written as by :func:`overwrite_systems` (caches left to their owner, missing fields
    default-filled). No edges, no atom-index fields.

    Raises
    ------
    ValueError
        On mismatched lengths, rows out of range, edges, or a field's dtype/shape mismatch.
    """
    system_rows = [int(s) for s in system_rows]
    atom_starts = [int(a) for a in atom_starts]
    if not (len(system_rows) == len(atom_starts) == other.num_graphs):
        raise ValueError(f"batchmd: write_systems: {len(system_rows)} rows and {len(atom_starts)} starts for "
                         f"{other.num_graphs} systems")
    specs = _check_in_place(batch, other, "write_systems")
    if not system_rows:
        return
    other = other.to(batch.device, batch.dtype)
    sizes = other.num_atoms_per_system.tolist()
    if any(not 0 <= s < batch.num_graphs for s in system_rows) or any(
            a < 0 or a + n > batch.num_nodes for a, n in zip(atom_starts, sizes)):
        raise ValueError("batchmd: write_systems: rows out of range")
    atom_rows = torch.cat([torch.arange(a, a + n) for a, n in zip(atom_starts, sizes)]).to(batch.device)
    rows = {"atom": atom_rows, "system": torch.tensor(system_rows, device=batch.device)}
    _write_rows(batch, specs, rows, other, system_rows, "write_systems")


def spread_systems(batch, system_rows: Sequence[int], ptr: Sequence[int], fill: dict | None = None) -> "Batch":  # noqa: F821
    """A new Batch of ``len(ptr) - 1`` systems and ``ptr[-1]`` atoms holding ``batch``'s system
    ``i`` at system row ``system_rows[i]`` (atom rows ``ptr[r] .. ptr[r + 1]``, which must
    match its size); every other row is default-filled (:func:`default_fill`), then system
    fields named in ``fill`` (name -> value) are set to that value on those other rows.

    Used to lay a live batch out in padded slots (:mod:`batchmd.dynamics.slot_layout`).
    No edges, no atom-index fields. One host read (the sizes).
    """
    from batchmd.data.batch import Batch

    specs = _check_in_place(batch, batch, "spread_systems")
    system_rows = [int(r) for r in system_rows]
    ptr = [int(p) for p in ptr]
    num_rows, num_atoms = len(ptr) - 1, ptr[-1]
    sizes = batch.num_atoms_per_system.tolist()
    if len(system_rows) != batch.num_graphs or any(ptr[r + 1] - ptr[r] != n for r, n in zip(system_rows, sizes)):
        raise ValueError("batchmd: spread_systems: the target rows do not match the systems' sizes")
    device = batch.device
    atom_rows = (torch.cat([torch.arange(ptr[r], ptr[r + 1]) for r in system_rows]) if system_rows
                 else torch.zeros(0, dtype=torch.int64)).to(device)
    rows = {"atom": atom_rows, "system": torch.tensor(system_rows, dtype=torch.int64, device=device)}
    counts = {"atom": num_atoms, "system": num_rows}
    other_rows = torch.ones(num_rows, dtype=torch.bool, device=device)
    other_rows[rows["system"]] = False
    fields = {}
    for name, spec in specs.items():
        t = batch._fields[name]
        if spec.level == "global":
            fields[name] = t
            continue
        out = default_fill(name, t, spec.dim, counts[spec.level])
        out.index_copy_(spec.dim, rows[spec.level], t)
        if fill and name in fill and spec.level == "system":
            out[other_rows] = fill[name]
        fields[name] = out
    ptr_t = torch.tensor(ptr, dtype=torch.int32, device=device)
    infos = None
    if batch._infos is not None:
        infos = [{} for _ in range(num_rows)]
        for r, info in zip(system_rows, batch._infos):
            infos[r] = dict(info)
    return Batch(fields, specs, ptr_t, None, None, infos)
