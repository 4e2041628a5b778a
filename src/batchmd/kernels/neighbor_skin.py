"""Rebuild decisions of the batched neighbor list: the strain-aware Verlet skin test.

The first two launches of every :class:`~batchmd.models.neighbors.NeighborList` update
(see :mod:`batchmd.kernels.neighbor_list` for the build kernels that follow them):

``nl_flag_systems``   one thread per system: flag if the list cutoff differs from the
                      reference (NaN reference = refilled slot), ``force`` is set, or its
                      cell changed too much for the skin; writes the affine map
                      ``M = h0^-1 h`` and the squared skin margin of the system.
``nl_flag_atoms``     one thread per atom: flag its system if it moved more than the margin
                      from its affinely deformed reference ``x0 M`` (or its reference is
                      NaN, or it overflowed and ``check_overflow``, or it overflowed in a
                      system whose cell changed).

Why the test is exact: a pair vector with lattice image ``n`` is ``d = x_j - x_i + n h``;
with ``w_i = x_i - x0_i M``, ``d = d0 M + (w_j - w_i)``, and ``|d0 M| >= (1 - |E|_F) |d0|``
(``E = M - I``). Every pair left out of the list had ``|d0| >= r_list``, so while every
``|w| <= (r_list (1 - |E|_F) - cutoff) / 2`` none of them is within the cutoff. With an
unchanged cell this is the plain ``skin / 2`` test.
"""

from __future__ import annotations

from typing import Any

import warp as wp

wp.set_module_options({"enable_backward": False})

__all__ = ["nl_flag_systems", "nl_flag_atoms"]


@wp.kernel
def nl_flag_systems(
    cell: wp.array(dtype=Any),
    ref_cell: wp.array(dtype=Any),
    ref_cutoff: wp.array(dtype=Any),
    pbc: wp.array2d(dtype=wp.bool),
    list_code: Any,
    r_list: Any,
    cutoff: Any,
    force: int,
    rebuild: wp.array(dtype=wp.int32),
    affine: wp.array(dtype=Any),
    margin_sq: wp.array(dtype=Any),
):
    """Per system: rebuild flag from the list cutoff and the cell; the strain-aware skin test's inputs.

    With the cell unchanged: ``affine = I`` and ``margin = skin / 2`` (the plain Verlet test).
    A fully periodic cell changed in place (barostat, cell filter) from ``h0`` to ``h`` keeps
    its list while every atom stays within ``margin = (r_list (1 - |E|_F) - cutoff) / 2`` of
    the *affinely moved* reference ``x0 M`` (``M = h0^-1 h``, ``E = M - I``): a pair vector
    is then ``d = d0 M + (w_j - w_i)`` with ``|w| <= margin``, so every pair missing from the
    list (``|d0| >= r_list``) is still beyond the cutoff. A non-periodic or degenerate cell
    that changed is rebuilt.
    """
    s = wp.tid()
    flag = force
    if ref_cutoff[s] != list_code:  # also true for NaN (refilled slot)
        flag = 1
    h = cell[s]
    r = ref_cell[s]
    changed = int(0)
    for a in range(3):
        for b in range(3):
            if h[a, b] != r[a, b]:
                changed = 1
    one = type(r_list)(1.0)
    half_skin = (r_list - cutoff) / type(r_list)(2.0)
    m = wp.diag(wp.vector(one, one, one))
    margin = half_skin
    if changed != 0:
        periodic = pbc[s, 0] and pbc[s, 1] and pbc[s, 2]
        det = wp.determinant(r)
        if periodic and wp.abs(det) > r_list * r_list * r_list * type(r_list)(1.0e-12):
            m = wp.inverse(r) * h
            e = m - wp.diag(wp.vector(one, one, one))
            strain = wp.sqrt(wp.ddot(e, e))
            margin = (r_list * (one - strain) - cutoff) / type(r_list)(2.0)
        else:
            margin = -one
    if not (margin > type(r_list)(0.0)):  # also NaN
        flag = 1
        margin = type(r_list)(0.0)
    affine[s] = m
    margin_sq[s] = margin * margin
    rebuild[s] = flag


@wp.kernel
def nl_flag_atoms(
    x: wp.array(dtype=Any),
    ref_x: wp.array(dtype=Any),
    count: wp.array(dtype=wp.int32),
    batch_idx: wp.array(dtype=wp.int32),
    affine: wp.array(dtype=Any),
    margin_sq: wp.array(dtype=Any),
    capacity: int,
    check_overflow: int,
    rebuild: wp.array(dtype=wp.int32),
):
    """Flag atom ``i``'s system if it left its skin: ``|x - x0 M| > margin`` (see :func:`nl_flag_systems`).

    Also flags a NaN reference, an overflowed row when ``check_overflow`` is set, and an
    overflowed row of a system whose cell changed (such rows walk the build's bins).
    """
    i = wp.tid()
    s = batch_idx[i]
    m = affine[s]
    d = x[i] - ref_x[i] * m
    d2 = wp.dot(d, d)
    flag = 0
    if not (d2 <= margin_sq[s]):  # NaN reference -> rebuild
        flag = 1
    if check_overflow != 0 and (count[i] < 0 or count[i] > capacity):
        flag = 1
    if count[i] < 0:
        strained = int(0)
        for a in range(3):
            for b in range(3):
                if m[a, b] != wp.where(a == b, type(d2)(1.0), type(d2)(0.0)):
                    strained = 1
        if strained != 0:
            flag = 1
    if flag != 0:
        wp.atomic_max(rebuild, s, 1)


def _overload_all() -> None:
    for scalar, vec, mat in ((wp.float32, wp.vec3f, wp.mat33f), (wp.float64, wp.vec3d, wp.mat33d)):
        vec_a, mat_a, sc_a = wp.array(dtype=vec), wp.array(dtype=mat), wp.array(dtype=scalar)
        wp.overload(nl_flag_systems, {"cell": mat_a, "ref_cell": mat_a, "ref_cutoff": sc_a, "list_code": scalar,
                                      "r_list": scalar, "cutoff": scalar, "affine": mat_a, "margin_sq": sc_a})
        wp.overload(nl_flag_atoms, {"x": vec_a, "ref_x": vec_a, "affine": mat_a, "margin_sq": sc_a})


_overload_all()
