"""Warp kernel of the runaway guards run before the model (:mod:`batchmd.dynamics.guards`).

``guard_systems``
    One thread per ACTIVE or PENDING system, after every stage's ``pre_force``:
    ``NONFINITE_CELL`` (a non-finite cell, Å) and ``DENSITY`` (a fully periodic system with
    more than ``max_density`` atoms per Å^3: a collapsing cell) mark it FAILED
    (``failure |= bits``; a step it took is counted). The neighbor list and the edge list
    skip FAILED systems, so a collapsed or non-finite cell never reaches the bin walk and
    never allocates edges.

The guards that need the evaluation (non-finite positions, velocities and stress, the MD
displacement bound, the energy drop) run in the same pass over the atoms as the force
statistics: ``system_force_stats`` in :mod:`batchmd.kernels.bookkeeping`.
"""

from __future__ import annotations

from typing import Any

import warp as wp

wp.set_module_options({"enable_backward": False})

# Statuses and FailureReason bits (batchmd.dynamics.status), defined once in the bookkeeping kernels.
from batchmd.kernels.bookkeeping import ACTIVE, FAILED, PENDING  # noqa: E402
from batchmd.kernels.bookkeeping import FAILURE_CELL as NONFINITE_CELL  # noqa: E402
from batchmd.kernels.bookkeeping import FAILURE_DENSITY as DENSITY  # noqa: E402


@wp.func
def finite3(a: Any):
    return wp.isfinite(a[0]) and wp.isfinite(a[1]) and wp.isfinite(a[2])


@wp.kernel
def guard_systems(
    increment: int,
    cell: wp.array(dtype=Any),
    pbc: wp.array2d(dtype=wp.bool),
    ptr: wp.array(dtype=wp.int32),
    max_density: wp.float64,
    status: wp.array(dtype=wp.int32),
    stage_steps: wp.array(dtype=wp.int32),
    n_steps: wp.array(dtype=wp.int32),
    failure: wp.array(dtype=wp.int32),
    active_atom_steps: wp.array(dtype=wp.int64),
):
    """Cell (Å) finite and density (atoms/Å^3, ``max_density <= 0``: off); FAILED on any bit."""
    s = wp.tid()
    st = status[s]
    b = int(0)
    if st != ACTIVE and st != PENDING:
        return
    h = cell[s]
    if not (finite3(h[0]) and finite3(h[1]) and finite3(h[2])):
        b = b | NONFINITE_CELL
    elif max_density > wp.float64(0.0) and pbc[s, 0] and pbc[s, 1] and pbc[s, 2]:
        volume = wp.abs(wp.float64(wp.determinant(h)))
        if wp.float64(ptr[s + 1] - ptr[s]) > max_density * volume:
            b = b | DENSITY
    if b == 0:
        return
    if st == ACTIVE and increment != 0:  # it moved in this step: count the step it failed in
        stage_steps[s] = stage_steps[s] + 1
        n_steps[s] = n_steps[s] + 1
        wp.atomic_add(active_atom_steps, 0, wp.int64(ptr[s + 1] - ptr[s]))
        wp.atomic_add(active_atom_steps, 1, wp.int64(ptr[s + 1] - ptr[s]))
    status[s] = FAILED
    failure[s] = failure[s] | b


guard_systems_overloads = {}
for _mat, _scalar in ((wp.mat33f, wp.float32), (wp.mat33d, wp.float64)):
    guard_systems_overloads[_scalar] = wp.overload(guard_systems, {"cell": wp.array(dtype=_mat)})
