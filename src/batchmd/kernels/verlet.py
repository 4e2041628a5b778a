"""Velocity Verlet kernels (NVE), in the order of ``ase.md.verlet.VelocityVerlet``.

One step, with ``f`` the forces at the current positions and ``f'`` those at the new
ones (one model evaluation in between)::

    before the force call  (verlet_pre_force_kernel):   v += dt/2 f/m ;  x += dt v
    after the force call   (verlet_post_force_kernel):  v += dt/2 f'/m

Units: ``dt`` in fs, converted in the kernel with ``fs`` (``ase.units.fs``, ASE time
units per fs); ``v`` Å/ASE time unit, ``m`` amu, ``f`` eV/Å, ``x`` Å. One thread per
atom; only atoms of systems with ``stage[s] == stage_index and status[s] == 0`` move.

Example
-------
See :class:`batchmd.dynamics.verlet.NVE`, which shapes the arguments and launches these.
"""

from __future__ import annotations

from typing import Any

import warp as wp

wp.set_module_options({"enable_backward": False})

__all__ = [
    "verlet_pre_force_kernel",
    "verlet_post_force_kernel",
    "verlet_pre_force_kernel_overloads",
    "verlet_post_force_kernel_overloads",
]


@wp.kernel
def verlet_pre_force_kernel(
    batch_idx: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    fs: Any,
    dt_fs: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    positions: wp.array(dtype=Any),
):
    """Half kick then drift: ``v += dt/2 f/m``, ``x += dt v``.

    Parameters
    ----------
    batch_idx : int32 [N]  atom -> system.
    stage, status : int32 [B]  loop fields; stage_index : the stage being stepped.
    fs : float  ``ase.units.fs`` (ASE time units per fs).
    dt_fs : float [B]  time step per system, fs.
    masses : float [N] amu;  forces : vec3 [N] eV/Å.
    velocities, positions : vec3 [N], in/out.
    """
    i = wp.tid()
    s = batch_idx[i]
    if stage[s] != stage_index or status[s] != 0:
        return
    dt = dt_fs[s] * fs
    v = velocities[i] + (dt * masses.dtype(0.5) / masses[i]) * forces[i]
    velocities[i] = v
    positions[i] = positions[i] + dt * v


@wp.kernel
def verlet_post_force_kernel(
    batch_idx: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    fs: Any,
    dt_fs: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
):
    """Closing half kick with the new forces: ``v += dt/2 f/m`` (arguments as the pre-force kernel)."""
    i = wp.tid()
    s = batch_idx[i]
    if stage[s] != stage_index or status[s] != 0:
        return
    dt = dt_fs[s] * fs
    velocities[i] = velocities[i] + (dt * masses.dtype(0.5) / masses[i]) * forces[i]


#: Concrete float32 / float64 overloads keyed by Warp scalar type; launching one of these
#: directly skips Warp's per-launch type inference of the generic kernel.
verlet_pre_force_kernel_overloads = {}
verlet_post_force_kernel_overloads = {}

for _scalar, _vec in ((wp.float32, wp.vec3f), (wp.float64, wp.vec3d)):
    _i32 = wp.array(dtype=wp.int32)
    _f = wp.array(dtype=_scalar)
    _v = wp.array(dtype=_vec)
    verlet_pre_force_kernel_overloads[_scalar] = wp.overload(
        verlet_pre_force_kernel, [_i32, _i32, _i32, wp.int32, _scalar, _f, _f, _v, _v, _v]
    )
    verlet_post_force_kernel_overloads[_scalar] = wp.overload(
        verlet_post_force_kernel, [_i32, _i32, _i32, wp.int32, _scalar, _f, _f, _v, _v]
    )
