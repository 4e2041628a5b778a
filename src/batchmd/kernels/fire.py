"""FIRE (Fast Inertial Relaxation Engine) kernels, step for step as ``ase.optimize.FIRE``.

One FIRE step of a system, given the forces ``f`` at its current positions
(ASE's ``FIRE.step``; sums over the whole system, masses not used)::

    if first step:            v = 0                         (ASE: vel is None)
    elif v·f > 0:             v = (1-a) v + a |v|/|f| f
                              if Nsteps > Nmin: dt = min(dt*finc, dtmax); a *= fa
                              Nsteps += 1
    else:                     v = 0; a = astart; dt *= fdec; Nsteps = 0
    v += dt f
    dr = dt v;  if |dr| > maxstep: dr *= maxstep/|dr|     (|dr| over the whole system)
    x += dr

Split into two launches:

1. ``fire_system_kernel`` (one thread per system) reduces ``v·f``, ``|f|^2``,
   ``|v|^2`` over the system's atoms in order (deterministic, batch-invariant),
   updates ``dt``, ``a``, ``Nsteps`` and writes three coefficients
   ``coef = (c_v, c_f, c_x)`` so that the whole update is the affine map
   ``v' = c_v v + c_f f``, ``x' = x + c_x v'``. The clipped step norm uses
   ``|v'|^2 = c_v^2 |v|^2 + 2 c_v c_f v·f + c_f^2 |f|^2`` (all terms non-negative on
   the mixing branch, so no cancellation).
2. ``fire_atom_kernel`` (one thread per atom) applies it.

The first step of a system is flagged by ``nsteps < 0`` (set by the dynamics class's
``init_state``); it is turned into ``Nsteps = 0`` as in ASE.

Units are those of ASE's FIRE: ``dt`` in ASE internal time units (not fs), ``maxstep``
in Å, forces eV/Å; the "velocity" is FIRE's fictitious one (Å per ASE time unit, mass 1).

Only systems with ``stage[s] == stage_index and status[s] == 0`` move.

Example
-------
See :class:`batchmd.dynamics.fire.FIRE`, which shapes the arguments and launches these.
"""

from __future__ import annotations

from typing import Any

import warp as wp

from batchmd.kernels.reductions import fire_sums

wp.set_module_options({"enable_backward": False})

__all__ = ["fire_update", "fire_system_kernel_overloads", "fire_atom_kernel_overloads", "fire_system_kernel", "fire_atom_kernel"]


@wp.func
def fire_update(
    s: wp.int32,
    vf: Any,
    f2: Any,
    v2: Any,
    dt: wp.array(dtype=Any),
    alpha: wp.array(dtype=Any),
    nsteps: wp.array(dtype=wp.int32),
    maxstep: wp.array(dtype=Any),
    dtmax: wp.array(dtype=Any),
    nmin: wp.array(dtype=wp.int32),
    finc: wp.array(dtype=Any),
    fdec: wp.array(dtype=Any),
    astart: wp.array(dtype=Any),
    fa: wp.array(dtype=Any),
):
    """One FIRE parameter update of system ``s`` from its sums ``v·f``, ``|f|^2``, ``|v|^2``.

    Updates ``dt``, ``alpha``, ``nsteps`` of ``s`` and returns ``vec3(c_v, c_f, c_x)`` (see the
    module docstring); shared by the plain and the cell-filter FIRE kernels.
    """
    one = dt.dtype(1.0)
    zero = dt.dtype(0.0)
    h = dt[s]
    a = alpha[s]
    n = nsteps[s]
    c_v = zero
    c_mix = zero
    if n < 0:
        # First step: ASE starts from vel = 0 and changes neither dt, a nor Nsteps.
        n = 0
    elif vf > zero:
        c_v = one - a
        c_mix = a * wp.sqrt(v2) / wp.sqrt(f2)
        if n > nmin[s]:
            h = wp.min(h * finc[s], dtmax[s])
            a = a * fa[s]
        n = n + 1
    else:
        a = astart[s]
        h = h * fdec[s]
        n = 0
    c_f = c_mix + h
    # |dt v'|^2 with v' = c_v v + c_f f.
    norm_dr = h * wp.sqrt(c_v * c_v * v2 + dt.dtype(2.0) * c_v * c_f * vf + c_f * c_f * f2)
    c_x = h
    if norm_dr > maxstep[s]:
        c_x = h * maxstep[s] / norm_dr
    dt[s] = h
    alpha[s] = a
    nsteps[s] = n
    return wp.vector(c_v, c_f, c_x)


@wp.kernel
def fire_system_kernel(
    ptr: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    velocities: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    dt: wp.array(dtype=Any),
    alpha: wp.array(dtype=Any),
    nsteps: wp.array(dtype=wp.int32),
    maxstep: wp.array(dtype=Any),
    dtmax: wp.array(dtype=Any),
    nmin: wp.array(dtype=wp.int32),
    finc: wp.array(dtype=Any),
    fdec: wp.array(dtype=Any),
    astart: wp.array(dtype=Any),
    fa: wp.array(dtype=Any),
    coef: wp.array(dtype=Any),
):
    """Per system: reduce, update ``dt``/``alpha``/``nsteps`` and write ``coef[s] = (c_v, c_f, c_x)``.

    Parameters (all ``[B]`` unless noted; floats share one dtype)
    ----------
    ptr : int32 [B+1]  system offsets.
    stage, status : int32  loop fields; a system moves iff ``stage == stage_index`` and ``status == 0``.
    velocities : vec3 [N]  FIRE velocity (Å per ASE time unit).
    forces : vec3 [N]  forces (eV/Å).
    dt, alpha : float, in/out  FIRE time step (ASE time units) and mixing parameter.
    nsteps : int32, in/out  steps since the last uphill reset (``< 0``: first step).
    maxstep, dtmax, nmin, finc, fdec, astart, fa : per-system ASE FIRE parameters.
    coef : vec3 [B], out  update coefficients (``(1, 0, 0)`` for a frozen system).
    """
    s = wp.tid()
    one = dt.dtype(1.0)
    zero = dt.dtype(0.0)
    if stage[s] != stage_index or status[s] != 0:
        coef[s] = coef.dtype(one, zero, zero)
        return
    sums = fire_sums(ptr[s], ptr[s + 1], velocities, forces)
    coef[s] = fire_update(s, sums[0], sums[1], sums[2], dt, alpha, nsteps, maxstep, dtmax, nmin, finc, fdec, astart, fa)


@wp.kernel
def fire_atom_kernel(
    batch_idx: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    coef: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    positions: wp.array(dtype=Any),
):
    """Per atom: ``v = c_v v + c_f f``, ``x += c_x v`` with its system's ``coef``.

    Parameters
    ----------
    batch_idx : int32 [N]  atom -> system.
    stage, status, stage_index : as in ``fire_system_kernel``.
    coef : vec3 [B]  from ``fire_system_kernel``.
    forces : vec3 [N]  eV/Å.
    velocities, positions : vec3 [N], in/out  Å/time and Å.
    """
    i = wp.tid()
    s = batch_idx[i]
    if stage[s] != stage_index or status[s] != 0:
        return
    c = coef[s]
    v = c[0] * velocities[i] + c[1] * forces[i]
    velocities[i] = v
    positions[i] = positions[i] + c[2] * v


#: Concrete float32 / float64 overloads keyed by Warp scalar type; launching one of these
#: directly skips Warp's per-launch type inference of the generic kernel.
fire_system_kernel_overloads = {}
fire_atom_kernel_overloads = {}

for _scalar, _vec in ((wp.float32, wp.vec3f), (wp.float64, wp.vec3d)):
    _i32 = wp.array(dtype=wp.int32)
    _f = wp.array(dtype=_scalar)
    _v = wp.array(dtype=_vec)
    fire_system_kernel_overloads[_scalar] = wp.overload(
        fire_system_kernel,
        [_i32, _i32, _i32, wp.int32, _v, _v, _f, _f, _i32, _f, _f, _i32, _f, _f, _f, _f, _v],
    )
    fire_atom_kernel_overloads[_scalar] = wp.overload(fire_atom_kernel, [_i32, _i32, _i32, wp.int32, _v, _v, _v, _v])
