"""Nosé-Hoover chain kernels (NVT), in the order of ``ase.md.nose_hoover_chain.NoseHooverChainNVT``.

One step of length ``dt`` of a system with momenta ``p = m v`` (ASE's ``step``)::

    p = NHC(p, dt/2)          thermostat chain, tloop x 3 Suzuki-Yoshida sub-steps
    p += dt/2 F               forces at the current positions
    q += dt p/m
    --- one model evaluation: F' at the new positions ---
    p += dt/2 F'
    p = NHC(p, dt/2)

``NHC`` only rescales every momentum of a system by one factor, so it needs one
per-system sum, ``K2 = sum_i p_i^2/m_i`` (twice the kinetic energy), which is tracked
through the chain's sub-steps as ``K2 *= f^2`` for each scaling ``f`` (ASE re-sums the
rescaled momenta; the two differ by rounding only).

Launches (one thread per system walks its own atoms in order, so a system's result does
not depend on its slot or on the other systems: batch invariance):

* before the force call: :func:`nhc_system_kernel` (``K2`` of ``v``, the chain, the scale
  ``f``), then :func:`nhc_pre_atom_kernel` (``v = f v + dt/2 F/m``; ``x += dt v``);
* after it: :func:`nhc_system_kernel` with ``kicked=1`` (``K2`` of the kicked velocities
  ``v + dt/2 F'/m``, recomputed by the same :func:`kick` expression the atom kernel uses),
  then :func:`nhc_post_atom_kernel` (``v = f (v + dt/2 F'/m)``).

The chain (``ase.md.nose_hoover_chain.NoseHooverChainThermostat``), with ``M = tchain``
variables ``eta_j`` and momenta ``p_eta_j``, masses ``Q_0 = g kT tdamp^2`` and
``Q_j = kT tdamp^2`` (``g`` the system's degrees of freedom, the ``dof`` field of
:mod:`batchmd.dynamics.constraints`: ``3N`` without constraints, as ASE), is advanced by
:func:`nhc_integrate`; the same function drives the MTK barostat's chain in
:mod:`batchmd.kernels.npt` (with ``K2 = |p_cell|^2 / W``).

References: G. J. Martyna, M. L. Klein, M. E. Tuckerman, J. Chem. Phys. 97, 2635 (1992);
M. E. Tuckerman, J. Alejandre, R. López-Rendón, A. L. Jochim, G. J. Martyna, J. Phys. A
39, 5629 (2006); H. Yoshida, Phys. Lett. A 150, 262 (1990) (fourth-order weights).

Units: ``dt`` and ``tdamp`` in fs, converted with ``fs = ase.units.fs``; temperature K,
``kB`` eV/K; ``v`` Å/ASE time unit, masses amu, forces eV/Å, ``p_eta`` eV·(ASE time).
Only systems with ``stage[s] == stage_index and status[s] == 0`` move.

Example
-------
See :class:`batchmd.dynamics.nose_hoover.NoseHooverChainNVT`, which shapes the arguments.
"""

from __future__ import annotations

from typing import Any

import warp as wp

wp.set_module_options({"enable_backward": False})

__all__ = [
    "YOSHIDA_WEIGHTS",
    "nhc_integrate",
    "kick",
    "exprel",
    "nhc_system_kernel",
    "nhc_pre_atom_kernel",
    "nhc_post_atom_kernel",
]

#: Fourth-order Suzuki-Yoshida weights (w1, w2, w1), as ``ase.md.nose_hoover_chain.FOURTH_ORDER_COEFFS``.
YOSHIDA_WEIGHTS = (1 / (2 - 2 ** (1 / 3)), -(2 ** (1 / 3)) / (2 - 2 ** (1 / 3)), 1 / (2 - 2 ** (1 / 3)))
_W_OUTER = wp.constant(wp.float64(YOSHIDA_WEIGHTS[0]))
_W_MIDDLE = wp.constant(wp.float64(YOSHIDA_WEIGHTS[1]))


@wp.func
def exprel(x: Any):
    """``(exp(x) - 1) / x`` (1 at 0), as ``scipy.special.exprel``: Taylor series for ``|x| < 1e-2``.

    Elsewhere ``exp(x/2) sinh(x/2) / (x/2)``, which has no cancellation (relative error a
    few ulp in float32 and float64).
    """
    one = type(x)(1.0)
    if wp.abs(x) < type(x)(1.0e-2):
        # 1 + x/2 + x^2/6 + x^3/24 + x^4/120 + x^5/720 (next term < 2e-16 relative here)
        return one + x / type(x)(2.0) * (one + x / type(x)(3.0) * (one + x / type(x)(4.0) * (
            one + x / type(x)(5.0) * (one + x / type(x)(6.0)))))
    y = x * type(x)(0.5)
    return wp.exp(y) * wp.sinh(y) / y


@wp.func
def kick(v: Any, f: Any, half_dt: Any, m: Any):
    """Half kick of one atom: ``v + (dt/2) f / m`` (the single expression every NHC kernel uses)."""
    return v + (half_dt / m) * f


@wp.func
def _chain_momentum(
    s: int, j: int, nchain: int, k2: Any, g_kT: Any, kT: Any, q0: Any, qj: Any, d2: Any, d4: Any,
    p_eta: wp.array2d(dtype=Any),
):
    """``NoseHooverChainThermostat._integrate_p_eta_j``: advance chain momentum ``j`` of system ``s``."""
    pj = p_eta[s, j]
    if j < nchain - 1:
        pj = pj * wp.exp(-d4 * p_eta[s, j + 1] / qj)
    g = k2 - g_kT
    if j > 0:
        prev = p_eta[s, j - 1]
        q_prev = qj
        if j == 1:
            q_prev = q0
        g = prev * prev / q_prev - kT
    pj = pj + d2 * g
    if j < nchain - 1:
        pj = pj * wp.exp(-d4 * p_eta[s, j + 1] / qj)
    p_eta[s, j] = pj


@wp.func
def nhc_integrate(
    s: int, k2: Any, g_kT: Any, kT: Any, q0: Any, qj: Any, delta: Any, nchain: int, nloop: int,
    eta: wp.array2d(dtype=Any), p_eta: wp.array2d(dtype=Any),
):
    """Integrate ``exp(i L_NHC delta)`` for the chain of system ``s``; returns the momentum scale factor.

    Parameters
    ----------
    s : system row of ``eta`` / ``p_eta`` (``[B, width]``, ``width >= nchain``).
    k2 : twice the kinetic energy of the driven momenta (eV): ``sum p^2/m`` or ``|p_cell|^2/W``.
    g_kT : ``g kT``, the target of ``k2`` (eV): ``g`` the system's degrees of freedom for particles.
    kT : eV;  q0, qj : chain masses ``Q_0`` and ``Q_{j>0}`` (eV·ASE time^2).
    delta : the time to integrate (ASE time units), split into ``nloop`` x 3 Yoshida sub-steps.

    Follows ``NoseHooverChainThermostat.integrate_nhc`` / ``_integrate_nhc_loop`` (and the
    identical ``IsotropicMTKBarostat`` / ``MTKBarostat`` chains) operation for operation.
    """
    scale = type(k2)(1.0)
    for _loop in range(nloop):
        for c in range(3):
            # (wp.where, not an if: a variable reassigned under an if in a dynamic loop is unreliable)
            w = wp.where(c == 1, type(k2)(_W_MIDDLE), type(k2)(_W_OUTER))
            d = w * delta / type(k2)(float(nloop))
            d2 = d / type(k2)(2.0)
            d4 = d / type(k2)(4.0)
            for jj in range(nchain):
                _chain_momentum(s, nchain - 1 - jj, nchain, k2, g_kT, kT, q0, qj, d2, d4, p_eta)
            for j in range(nchain):
                eta[s, j] = eta[s, j] + d * p_eta[s, j] / wp.where(j == 0, q0, qj)
            f = wp.exp(-d * p_eta[s, 0] / q0)
            scale = scale * f
            k2 = k2 * f * f
            for j in range(nchain):
                _chain_momentum(s, j, nchain, k2, g_kT, kT, q0, qj, d2, d4, p_eta)
    return scale


@wp.kernel
def nhc_system_kernel(
    ptr: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    kicked: wp.int32,
    fs: Any,
    kB: Any,
    dt_fs: wp.array(dtype=Any),
    temperature: wp.array(dtype=Any),
    tdamp_fs: wp.array(dtype=Any),
    tchain: wp.array(dtype=wp.int32),
    tloop: wp.array(dtype=wp.int32),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    dof: wp.array(dtype=Any),
    eta: wp.array2d(dtype=Any),
    p_eta: wp.array2d(dtype=Any),
    scale: wp.array(dtype=Any),
):
    """One thread per system: ``K2`` over its atoms, half a step (``dt/2``) of its chain, ``scale[s]``.

    ``kicked = 1``: ``K2`` of ``v + dt/2 F/m`` (after the force call), else of ``v``.
    Shapes: ``ptr`` [B+1]; per-system arrays [B] (dt, tdamp fs; temperature K); ``eta``,
    ``p_eta`` [B, width]; ``masses`` [N] amu; ``forces``, ``velocities`` vec3 [N];
    ``dof`` [B] the degrees of freedom ``g = 3N - 3 N_fixed - 3 [fix_com]`` (fixed atoms
    have zero velocity and force, so they add nothing to ``K2``). A system with ``g = 0`` has no
    kinetic energy and ``Q_0 = 0``: its chain stays at rest and ``scale[s] = 1`` (the step is
    velocity Verlet, as NVE).
    """
    s = wp.tid()
    if stage[s] != stage_index or status[s] != 0:
        return
    if dof[s] <= masses.dtype(0.0):
        # No degrees of freedom (every atom fixed, or one atom under FixCom): no kinetic energy
        # to thermostat and Q_0 = 0; the chain stays at rest and the momenta are not scaled.
        scale[s] = masses.dtype(1.0)
        return
    start = ptr[s]
    end = ptr[s + 1]
    half_dt = dt_fs[s] * fs * masses.dtype(0.5)
    k2 = masses.dtype(0.0)
    for i in range(start, end):
        v = velocities[i]
        if kicked != 0:
            v = kick(v, forces[i], half_dt, masses[i])
        k2 = k2 + masses[i] * wp.dot(v, v)
    kT = kB * temperature[s]
    tau = tdamp_fs[s] * fs
    g_kT = dof[s] * kT
    qj = kT * tau * tau
    q0 = g_kT * tau * tau
    scale[s] = nhc_integrate(s, k2, g_kT, kT, q0, qj, half_dt, tchain[s], tloop[s], eta, p_eta)


@wp.kernel
def nhc_pre_atom_kernel(
    batch_idx: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    fs: Any,
    dt_fs: wp.array(dtype=Any),
    scale: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    positions: wp.array(dtype=Any),
):
    """Thermostat scaling, half kick and drift: ``v = f v + dt/2 F/m``, ``x += dt v``."""
    i = wp.tid()
    s = batch_idx[i]
    if stage[s] != stage_index or status[s] != 0:
        return
    dt = dt_fs[s] * fs
    v = kick(scale[s] * velocities[i], forces[i], dt * masses.dtype(0.5), masses[i])
    velocities[i] = v
    positions[i] = positions[i] + dt * v


@wp.kernel
def nhc_post_atom_kernel(
    batch_idx: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    fs: Any,
    dt_fs: wp.array(dtype=Any),
    scale: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
):
    """Closing half kick with the new forces, then the thermostat scaling: ``v = f (v + dt/2 F'/m)``."""
    i = wp.tid()
    s = batch_idx[i]
    if stage[s] != stage_index or status[s] != 0:
        return
    half_dt = dt_fs[s] * fs * masses.dtype(0.5)
    velocities[i] = scale[s] * kick(velocities[i], forces[i], half_dt, masses[i])


def _overload_all() -> None:
    """Concrete float32/float64 overloads (ahead-of-time compilation; launches infer the same ones)."""
    for scalar, vec in ((wp.float32, wp.vec3f), (wp.float64, wp.vec3d)):
        f, v, f2 = wp.array(dtype=scalar), wp.array(dtype=vec), wp.array2d(dtype=scalar)
        wp.overload(nhc_system_kernel, {"fs": scalar, "kB": scalar, "dt_fs": f, "temperature": f, "tdamp_fs": f,
                                        "masses": f, "forces": v, "velocities": v, "dof": f, "eta": f2, "p_eta": f2, "scale": f})
        atom = {"fs": scalar, "dt_fs": f, "scale": f, "masses": f, "forces": v, "velocities": v}
        wp.overload(nhc_pre_atom_kernel, {**atom, "positions": v})
        wp.overload(nhc_post_atom_kernel, atom)


_overload_all()
