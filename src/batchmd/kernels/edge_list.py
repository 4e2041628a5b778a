"""Warp kernels compacting the per-atom Verlet rows of a neighbor list into a COO edge list.

The neighbor list (:mod:`batchmd.kernels.neighbor_list`) keeps, for each atom ``i``, a row of
up to ``K`` candidates within ``r_list = cutoff + skin`` at the last rebuild. Graph models
want instead the pairs within their cutoff *now*, as one flat list. Two launches of
:func:`edge_atoms`, one thread per atom, produce it:

1. ``write = 0``: count the candidates of atom ``i`` that pass the filter (``counts[i]``);
2. (host/torch) exclusive prefix sum ``offsets`` of the counts, total ``E``;
3. ``write = 1``: write atom ``i``'s edges at ``offsets[i] ..``: ``edge_index[:, e] = (i, j)``
   (global atom indices), the integer lattice image ``unit_shifts[e] = n`` and, when asked,
   the vector ``r_ij = x_j - x_i + n @ cell`` (Å) and its length.

Filter: ``|r_ij| < cutoff[s]`` (strict, as ``ase.neighborlist.neighbor_list``), with a
per-system cutoff ``cutoff[s] <= r_list``; for a half list also ``i < j``, or ``i == j`` and
``n`` lexicographically positive (an atom's own periodic images: ``n`` and ``-n`` are the
same pair). A NaN distance passes the filter, so a non-finite geometry gives NaN edges (and a
NaN model output), never an isolated atom. Atoms of EMPTY (padding) and FAILED systems (the
loop's runaway guards) get no edges, when the batch carries ``status``. A row that overflowed its capacity (count stored negated) is re-walked over the
system's bins with the build's own acceptance test, so no pair is ever lost. The edges of
an atom appear in its row order (same-image neighbors, then periodic images), atoms in
ascending order: edges are grouped by ``i`` and therefore by system, and the result is
deterministic and independent of the other systems in the batch.
"""

from __future__ import annotations

from typing import Any

import warp as wp

from batchmd.kernels.bookkeeping import EMPTY, FAILED
from batchmd.kernels.neighbor_list import image_shift, in_phase, is_candidate, stencil_bin, unpack_image

wp.set_module_options({"enable_backward": False})


@wp.func
def lex_positive(k: wp.vec3i):
    """Whether lattice image ``k`` is lexicographically > 0."""
    if k[0] != 0:
        return k[0] > 0
    if k[1] != 0:
        return k[1] > 0
    return k[2] > 0


@wp.func
def keep_edge(i: int, j: int, k: wp.vec3i, d2: Any, rc_sq: Any, half: int):
    if d2 >= rc_sq:  # a NaN distance is kept: a non-finite geometry must give a NaN result, never "no pair"
        return False
    if half != 0:
        if j < i:
            return False
        if j == i:
            return lex_positive(k)
    return True


@wp.func
def put_edge(e: int, i: int, j: int, k: wp.vec3i, d: Any, want_vectors: int,
             edge_index: wp.array2d(dtype=wp.int64), unit_shifts: wp.array2d(dtype=wp.int64),
             vectors: wp.array(dtype=Any), lengths: wp.array(dtype=Any)):
    edge_index[0, e] = wp.int64(i)
    edge_index[1, e] = wp.int64(j)
    unit_shifts[e, 0] = wp.int64(k[0])
    unit_shifts[e, 1] = wp.int64(k[1])
    unit_shifts[e, 2] = wp.int64(k[2])
    if want_vectors != 0:
        vectors[e] = d
        lengths[e] = wp.length(d)


@wp.kernel
def edge_atoms(
    x: wp.array(dtype=Any),
    batch_idx: wp.array(dtype=wp.int32),
    ptr: wp.array(dtype=wp.int32),
    cell: wp.array(dtype=Any),
    neighbors: wp.array2d(dtype=wp.int32),
    images: wp.array2d(dtype=wp.int32),
    count: wp.array(dtype=wp.int32),
    cutoff: wp.array(dtype=Any),
    half: int,
    status: wp.array(dtype=wp.int32),
    use_status: int,
    write: int,
    want_vectors: int,
    # bin walk for rows that overflowed (the list's own tables)
    pbc: wp.array2d(dtype=wp.bool),
    nbins: wp.array(dtype=wp.vec3i),
    bin_offset: wp.array(dtype=wp.int32),
    search: wp.array(dtype=wp.vec3i),
    atom_bin: wp.array(dtype=wp.vec3i),
    atom_wrap: wp.array(dtype=wp.vec3i),
    bin_start: wp.array(dtype=wp.int32),
    bin_count: wp.array(dtype=wp.int32),
    bin_atoms: wp.array(dtype=wp.int32),
    wrapped: wp.array(dtype=Any),
    r_list_sq: Any,
    # outputs
    counts: wp.array(dtype=wp.int32),
    offsets: wp.array(dtype=wp.int64),
    edge_index: wp.array2d(dtype=wp.int64),
    unit_shifts: wp.array2d(dtype=wp.int64),
    vectors: wp.array(dtype=Any),
    lengths: wp.array(dtype=Any),
):
    i = wp.tid()
    s = batch_idx[i]
    base = ptr[s]
    xi = x[i]
    h = cell[s]
    rc = cutoff[s]
    rc_sq = rc * rc
    n = count[i]
    e = int(0)
    if write != 0:
        e = int(offsets[i])
    m = int(0)
    if use_status != 0 and (status[s] == EMPTY or status[s] == FAILED):
        n = 0  # padding, or a failed system (runaway guards): no edges
    if n >= 0:
        for t in range(n):
            j = base + neighbors[i, t]
            k = wp.vec3i(0, 0, 0)
            if j < base:
                j = base - 1 - neighbors[i, t]
                k = unpack_image(images[i, t])
            d = x[j] - xi + image_shift(k, h)
            if keep_edge(i, j, k, wp.dot(d, d), rc_sq, half):
                if write != 0:
                    put_edge(e + m, i, j, k, d, want_vectors, edge_index, unit_shifts, vectors, lengths)
                m += 1
    else:
        nb = nbins[s]
        sr = search[s]
        bi = atom_bin[i]
        wi = atom_wrap[i]
        xr = wrapped[i]
        off = bin_offset[s]
        p0 = int(pbc[s, 0])
        p1 = int(pbc[s, 1])
        p2 = int(pbc[s, 2])
        for phase in range(2):  # the row's order: same-image neighbors first, then periodic images
            for o0 in range(-sr[0], sr[0] + 1):
                for o1 in range(-sr[1], sr[1] + 1):
                    for o2 in range(-sr[2], sr[2] + 1):
                        valid, cell_index, kb = stencil_bin(bi, o0, o1, o2, nb, p0, p1, p2, 0)
                        if not valid:
                            continue
                        own_bin = o0 == 0 and o1 == 0 and o2 == 0
                        xb = xr - image_shift(kb, h)
                        c = off + cell_index
                        start = bin_start[c]
                        for q in range(start, start + bin_count[c]):
                            j = bin_atoms[q]
                            if is_candidate(i, j, own_bin, 0, wrapped, xb, r_list_sq):
                                k = kb + wi - atom_wrap[j]
                                if not in_phase(k, phase):
                                    continue
                                d = x[j] - xi + image_shift(k, h)
                                if keep_edge(i, j, k, wp.dot(d, d), rc_sq, half):
                                    if write != 0:
                                        put_edge(e + m, i, j, k, d, want_vectors, edge_index, unit_shifts,
                                                 vectors, lengths)
                                    m += 1
    if write == 0:
        counts[i] = m


def _overload_all() -> None:
    for scalar, vec, mat in ((wp.float32, wp.vec3f, wp.mat33f), (wp.float64, wp.vec3d, wp.mat33d)):
        vec_a, mat_a, sc_a = wp.array(dtype=vec), wp.array(dtype=mat), wp.array(dtype=scalar)
        wp.overload(edge_atoms, {"x": vec_a, "cell": mat_a, "cutoff": sc_a, "wrapped": vec_a, "r_list_sq": scalar,
                                 "vectors": vec_a, "lengths": sc_a})


_overload_all()
