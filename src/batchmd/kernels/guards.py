"""Warp kernels of the runaway guards (:mod:`batchmd.dynamics.guards`), all on the device.

Before the model is called (after every stage's ``pre_force``):

``guard_atoms``
    One thread per atom of an ACTIVE or PENDING system: ORs ``NONFINITE_POSITIONS`` /
    ``NONFINITE_VELOCITIES`` into the system's scratch ``bits`` (``wp.atomic_or``: the
    result does not depend on thread order).
``guard_systems``
    One thread per system: adds ``NONFINITE_CELL`` and ``DENSITY`` (a fully periodic system
    with more than ``max_density`` atoms per Å^3), then marks a system with any bit FAILED
    (``failure |= bits``; a step it took is counted) and clears its scratch bits. The
    neighbor list and the edge list skip FAILED systems, so a collapsed or non-finite cell
    never reaches the bin walk and never allocates edges.

After the model is called:

``guard_displacement``
    One thread per atom of an ACTIVE or PENDING system in an MD stage (``stage_dt > 0``,
    fs): the bound ``|v| dt + |f| dt^2 / m`` (Å) of the displacement of its next velocity
    Verlet step (``v`` Å/ASE time unit, ``f`` eV/Å, ``m`` amu, ``dt`` converted with
    ``fs``, ASE time units per fs), reduced per system with ``wp.atomic_max`` into ``disp``
    (order independent). The loop's force statistics compare it with ``max_displacement``.
"""

from __future__ import annotations

from typing import Any

import warp as wp

wp.set_module_options({"enable_backward": False})

ACTIVE = wp.constant(0)
FAILED = wp.constant(3)
PENDING = wp.constant(4)
# FailureReason bits (batchmd.dynamics.status)
NONFINITE_POSITIONS = wp.constant(32)
NONFINITE_CELL = wp.constant(64)
NONFINITE_VELOCITIES = wp.constant(128)
DENSITY = wp.constant(512)


@wp.func
def finite3(a: Any):
    return wp.isfinite(a[0]) and wp.isfinite(a[1]) and wp.isfinite(a[2])


@wp.kernel
def guard_atoms(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    has_v: int,
    batch_idx: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    bits: wp.array(dtype=wp.int32),
):
    """Non-finite positions (Å) or velocities of atom i: bits of its system."""
    i = wp.tid()
    s = batch_idx[i]
    st = status[s]
    if st != ACTIVE and st != PENDING:
        return
    if not finite3(x[i]):
        wp.atomic_or(bits, s, NONFINITE_POSITIONS)
    if has_v != 0:
        if not finite3(v[i]):
            wp.atomic_or(bits, s, NONFINITE_VELOCITIES)


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
    bits: wp.array(dtype=wp.int32),
    active_atom_steps: wp.array(dtype=wp.int64),
):
    """Cell (Å) finite and density (atoms/Å^3, ``max_density <= 0``: off); FAILED on any bit."""
    s = wp.tid()
    st = status[s]
    b = bits[s]
    bits[s] = 0
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


@wp.kernel
def guard_displacement(
    batch_idx: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_dt: wp.array(dtype=wp.float64),
    fs: wp.float64,
    v: wp.array(dtype=Any),
    has_v: int,
    forces: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    disp: wp.array(dtype=wp.float64),
):
    """Per system: the largest next-step displacement bound ``|v| dt + |f| dt^2 / m`` (Å)."""
    i = wp.tid()
    s = batch_idx[i]
    st = status[s]
    if st != ACTIVE and st != PENDING:
        return
    dt = stage_dt[stage[s]]
    if dt <= wp.float64(0.0):
        return
    t = dt * fs
    d = wp.float64(wp.length(forces[i])) / wp.float64(masses[i]) * t * t
    if has_v != 0:
        d = d + wp.float64(wp.length(v[i])) * t
    if wp.isfinite(d):  # non-finite forces or velocities are reported as such, never as a displacement
        wp.atomic_max(disp, s, d)


guard_atoms_overloads = {}
guard_systems_overloads = {}
guard_displacement_overloads = {}
for _vec, _mat, _scalar in ((wp.vec3f, wp.mat33f, wp.float32), (wp.vec3d, wp.mat33d, wp.float64)):
    guard_atoms_overloads[_scalar] = wp.overload(guard_atoms, {"x": wp.array(dtype=_vec), "v": wp.array(dtype=_vec)})
    guard_systems_overloads[_scalar] = wp.overload(guard_systems, {"cell": wp.array(dtype=_mat)})
    guard_displacement_overloads[_scalar] = wp.overload(
        guard_displacement, {"v": wp.array(dtype=_vec), "forces": wp.array(dtype=_vec),
                             "masses": wp.array(dtype=_scalar)})
