"""MTK NPT kernels: ``IsotropicMTKNPT`` and ``MTKNPT`` of ``ase.md.nose_hoover_chain``, batched.

One step of a system (ASE's ``step``; ``p = m v``, ``h`` the cell, rows = lattice vectors)::

    p_cell = NHC_baro(p_cell, dt/2)     barostat chain (pchain, ploop)
    p      = NHC(p, dt/2)               thermostat chain (tchain, tloop)
    p_cell += dt/2 G                    G from the stress at the current q, h and the momenta
    p      = A p + dt/2 B F             A, B from p_cell (exact for constant p_cell)
    q      = C q + dt D p/m             C, D from p_cell
    h      = h C                        (isotropic: eps += dt p_eps/W, h = h0 exp(eps))
    --- one model evaluation: F', stress' at the new q, h ---
    p      = A p + dt/2 B F'
    p_cell += dt/2 G'
    p      = NHC(p, dt/2)
    p_cell = NHC_baro(p_cell, dt/2)

Full cell (``MTKNPT``, 9 cell degrees of freedom): with ``p_cell = U diag(l) U^T``,
``kappa = l + tr(p_cell)/(3N)``::

    A = U diag(exp(-kappa dt/2 / W)) U^T      B = U diag(exprel(-kappa dt/2 / W)) U^T
    C = U diag(exp(l dt / W)) U^T             D = U diag(exprel(l dt / W)) U^T
    G = V (sigma - P_ext I) + (sum p^2/m) / (3N) I,   W = (N + 1) kT pdamp^2

Isotropic (``IsotropicMTKNPT``, one volume momentum ``p_eps``)::

    A = exp(-x) I, B = exprel(-x) I,  x = (1 + 1/N) p_eps (dt/2) / W
    C = exp(y) I,  D = exprel(y) I,   y = p_eps dt / W
    G = 3 V (P - P_ext) + (sum p^2/m) / N,   W = (3N + 3) kT pdamp^2

``N`` stands for ``N_f / 3`` with ``N_f`` the system's degrees of freedom (the ``dof``
field, :mod:`batchmd.dynamics.constraints`): ``N_f = 3N`` without constraints (ASE's
formulas exactly), ``3N - 3`` with FixCom (MTK's ``alpha = 1 + d/N_f``, Tuckerman et al.
2006; the thermostat targets ``N_f kT``). ``sigma = -stress_total`` where ``stress_total = stress - sum_i p_i p_i^T / (m_i V)`` is
ASE's ``get_stress(include_ideal_gas=True)`` (the model's stress is symmetrised first, as
ASE's Voigt form does), ``P = tr(sigma)/3`` and ``exprel(x) = (e^x - 1)/x``. The barostat
chain has masses ``R_0 = 9 kT pdamp^2``, ``R_j = kT pdamp^2`` and drives ``|p_cell|^2/W``
(``p_eps^2/W``) towards ``9 kT`` (``kT``); it is ``batchmd.kernels.nose_hoover.nhc_integrate``.

Launches, one thread per system walking its atoms in order (batch invariant) or one per atom:

* before the force call: :func:`npt_pre_system_kernel` (both chains, the kinetic tensor,
  ``G``, the maps ``A, B, C, D`` into ``maps[s, 0..3]``, the new cell), then
  :func:`npt_pre_atom_kernel`;
* after it: :func:`npt_post_system_kernel` (kinetic tensor of the kicked momenta, ``G'``,
  both chains), then :func:`npt_post_atom_kernel`.

``p_cell`` is constant from the first ``G`` update to the second kick, so one
eigendecomposition (``wp.eig3``) per step serves both kicks, the drift and the cell.

References: G. J. Martyna, D. J. Tobias, M. L. Klein, J. Chem. Phys. 101, 4177 (1994);
M. E. Tuckerman et al., J. Phys. A 39, 5629 (2006).

Units: ``dt``, ``tdamp``, ``pdamp`` fs (times ``fs = ase.units.fs``); temperature K;
pressure and stress eV/Å^3; cell Å; ``p_cell``, ``p_eps`` eV·ASE time.
Only systems with ``stage[s] == stage_index and status[s] == 0`` move.
"""

from __future__ import annotations

from typing import Any

import warp as wp

from batchmd.kernels.cell import cell_volume
from batchmd.kernels.nose_hoover import exprel, nhc_integrate

wp.set_module_options({"enable_backward": False})

__all__ = ["npt_pre_system_kernel", "npt_post_system_kernel", "npt_pre_atom_kernel", "npt_post_atom_kernel",
           "npt_kick"]


@wp.func
def npt_kick(a: Any, b: Any, half_dt: Any, m: Any, v: Any, f: Any):
    """Half kick of one atom under the barostat: ``v' = A v + (dt/2) B f / m``."""
    return a * v + (half_dt / m) * (b * f)


@wp.func
def _barostat_masses(n: Any, kT: Any, tau: Any, isotropic: int):
    """``(W, R_0, R_j, g kT)`` of ``IsotropicMTKBarostat`` / ``MTKBarostat`` (no mask: 9 cell dof)."""
    one = type(n)(1.0)
    w_full = (n + one) * kT * tau * tau
    w_iso = (type(n)(3.0) * n + type(n)(3.0)) * kT * tau * tau
    r0 = type(n)(9.0) * kT * tau * tau
    g_full = type(n)(9.0) * kT
    return wp.where(isotropic != 0, w_iso, w_full), r0, kT * tau * tau, wp.where(isotropic != 0, kT, g_full)


@wp.func
def _volume(isotropic: int, h: Any, h0: Any, eps: Any):
    """Cell volume, Å^3: ``V0 exp(3 eps)`` (isotropic, as ASE) or ``|det h|``."""
    if isotropic != 0:
        return cell_volume(h0) * wp.exp(type(eps)(3.0) * eps)
    return cell_volume(h)


@wp.func
def _cell_momentum_kick(
    s: int, isotropic: int, half_dt: Any, kin: Any, n: Any, volume: Any, stress: Any, pressure: Any,
    p_eps: wp.array(dtype=Any), p_cell: wp.array(dtype=Any),
):
    """``_integrate_p_cell``: ``p_cell += dt/2 G`` (or ``p_eps``) from the stress and kinetic tensor ``kin``."""
    sym = (stress + wp.transpose(stress)) * type(n)(0.5)
    total = sym - kin * (type(n)(1.0) / volume)  # ASE's get_stress(include_ideal_gas=True)
    k2 = wp.trace(kin)
    if isotropic != 0:
        p = -wp.trace(total) / type(n)(3.0)
        g = type(n)(3.0) * volume * (p - pressure) + k2 / n
        p_eps[s] = p_eps[s] + half_dt * g
    else:
        eye = wp.diag(wp.vector(type(n)(1.0), type(n)(1.0), type(n)(1.0)))
        g_mat = volume * (-total - pressure * eye) + (k2 / (type(n)(3.0) * n)) * eye
        p_cell[s] = p_cell[s] + half_dt * g_mat


@wp.func
def _barostat_chain(
    s: int, isotropic: int, half_dt: Any, w: Any, r0: Any, rj: Any, g_kT: Any, kT: Any, nchain: int, nloop: int,
    p_eps: wp.array(dtype=Any), p_cell: wp.array(dtype=Any), xi: wp.array2d(dtype=Any), p_xi: wp.array2d(dtype=Any),
):
    """``integrate_nhc_baro`` for ``dt/2``: the barostat chain rescales ``p_eps`` or ``p_cell``."""
    if isotropic != 0:
        pe = p_eps[s]
        p_eps[s] = pe * nhc_integrate(s, pe * pe / w, g_kT, kT, r0, rj, half_dt, nchain, nloop, xi, p_xi)
    else:
        pg = p_cell[s]
        p_cell[s] = pg * nhc_integrate(s, wp.ddot(pg, pg) / w, g_kT, kT, r0, rj, half_dt, nchain, nloop, xi, p_xi)


@wp.func
def _spectral(u: Any, d: Any):
    """``U diag(d) U^T``."""
    return u * wp.diag(d) * wp.transpose(u)


@wp.kernel
def npt_pre_system_kernel(
    ptr: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    isotropic: wp.int32,
    fs: Any,
    kB: Any,
    dt_fs: wp.array(dtype=Any),
    temperature: wp.array(dtype=Any),
    tdamp_fs: wp.array(dtype=Any),
    tchain: wp.array(dtype=wp.int32),
    tloop: wp.array(dtype=wp.int32),
    pdamp_fs: wp.array(dtype=Any),
    pchain: wp.array(dtype=wp.int32),
    ploop: wp.array(dtype=wp.int32),
    pressure: wp.array(dtype=Any),
    dof: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    stress: wp.array(dtype=Any),
    cell: wp.array(dtype=Any),
    cell0: wp.array(dtype=Any),
    eps: wp.array(dtype=Any),
    p_eps: wp.array(dtype=Any),
    p_cell: wp.array(dtype=Any),
    eta: wp.array2d(dtype=Any),
    p_eta: wp.array2d(dtype=Any),
    xi: wp.array2d(dtype=Any),
    p_xi: wp.array2d(dtype=Any),
    maps: wp.array2d(dtype=Any),
    scale: wp.array(dtype=Any),
):
    """One thread per system: everything of the step before the atoms move (see the module docstring).

    Shapes: ``ptr`` [B+1]; per-system scalars [B]; ``stress``, ``cell``, ``cell0``,
    ``p_cell`` mat33 [B]; ``eta``, ``p_eta``, ``xi``, ``p_xi`` [B, width]; ``maps`` mat33
    [B, 4] (out: A, B, C, D); ``scale`` [B] (out: thermostat factor); ``masses`` [N];
    ``velocities`` vec3 [N]; ``dof`` [B] the degrees of freedom ``N_f`` (``3N`` without
    constraints; ``3N - 3`` with FixCom). ``cell`` (and for the isotropic barostat ``eps``) is updated.
    """
    s = wp.tid()
    if stage[s] != stage_index or status[s] != 0:
        return
    start = ptr[s]
    end = ptr[s + 1]
    n = dof[s] / type(fs)(3.0)  # N_f / 3: N without constraints (exactly), N - 1 with FixCom
    kT = kB * temperature[s]
    dt = dt_fs[s] * fs
    half_dt = dt * type(fs)(0.5)
    tau_t = tdamp_fs[s] * fs
    w, r0, rj, g_baro = _barostat_masses(n, kT, pdamp_fs[s] * fs, isotropic)
    _barostat_chain(s, isotropic, half_dt, w, r0, rj, g_baro, kT, pchain[s], ploop[s], p_eps, p_cell, xi, p_xi)
    kin = wp.outer(velocities.dtype(), velocities.dtype())
    for i in range(start, end):
        v = velocities[i]
        kin = kin + masses[i] * wp.outer(v, v)
    g_t = type(fs)(3.0) * n * kT
    st = nhc_integrate(s, wp.trace(kin), g_t, kT, g_t * tau_t * tau_t, kT * tau_t * tau_t, half_dt, tchain[s],
                       tloop[s], eta, p_eta)
    scale[s] = st
    kin = kin * (st * st)
    volume = _volume(isotropic, cell[s], cell0[s], eps[s])
    _cell_momentum_kick(s, isotropic, half_dt, kin, n, volume, stress[s], pressure[s], p_eps, p_cell)
    if isotropic != 0:
        pe = p_eps[s]
        eye = wp.diag(wp.vector(type(fs)(1.0), type(fs)(1.0), type(fs)(1.0)))
        x = (type(fs)(1.0) + type(fs)(1.0) / n) * pe * half_dt / w
        y = dt * pe / w
        maps[s, 0] = wp.exp(-x) * eye
        maps[s, 1] = exprel(-x) * eye
        maps[s, 2] = wp.exp(y) * eye
        maps[s, 3] = exprel(y) * eye
        e = eps[s] + dt * pe / w
        eps[s] = e
        cell[s] = cell0[s] * wp.exp(e)
    else:
        pg = p_cell[s]
        u = wp.diag(wp.vector(type(fs)(1.0), type(fs)(1.0), type(fs)(1.0)))
        lam = wp.vector(type(fs)(0.0), type(fs)(0.0), type(fs)(0.0))
        wp.eig3(pg, u, lam)
        c = wp.trace(pg) / (type(fs)(3.0) * n)
        kx = (-(lam + wp.vector(c, c, c)) * half_dt) / w
        dx = (lam * dt) / w
        maps[s, 0] = _spectral(u, wp.vector(wp.exp(kx[0]), wp.exp(kx[1]), wp.exp(kx[2])))
        maps[s, 1] = _spectral(u, wp.vector(exprel(kx[0]), exprel(kx[1]), exprel(kx[2])))
        drift = _spectral(u, wp.vector(wp.exp(dx[0]), wp.exp(dx[1]), wp.exp(dx[2])))
        maps[s, 2] = drift
        maps[s, 3] = _spectral(u, wp.vector(exprel(dx[0]), exprel(dx[1]), exprel(dx[2])))
        cell[s] = cell[s] * drift


@wp.kernel
def npt_post_system_kernel(
    ptr: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    isotropic: wp.int32,
    fs: Any,
    kB: Any,
    dt_fs: wp.array(dtype=Any),
    temperature: wp.array(dtype=Any),
    tdamp_fs: wp.array(dtype=Any),
    tchain: wp.array(dtype=wp.int32),
    tloop: wp.array(dtype=wp.int32),
    pdamp_fs: wp.array(dtype=Any),
    pchain: wp.array(dtype=wp.int32),
    ploop: wp.array(dtype=wp.int32),
    pressure: wp.array(dtype=Any),
    dof: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    stress: wp.array(dtype=Any),
    cell: wp.array(dtype=Any),
    cell0: wp.array(dtype=Any),
    eps: wp.array(dtype=Any),
    p_eps: wp.array(dtype=Any),
    p_cell: wp.array(dtype=Any),
    eta: wp.array2d(dtype=Any),
    p_eta: wp.array2d(dtype=Any),
    xi: wp.array2d(dtype=Any),
    p_xi: wp.array2d(dtype=Any),
    maps: wp.array2d(dtype=Any),
    scale: wp.array(dtype=Any),
):
    """One thread per system, after the force call: kinetic tensor of the kicked momenta, ``G'``, both chains.

    Arguments as :func:`npt_pre_system_kernel`, plus ``forces`` vec3 [N] (eV/Å, at the new
    positions); ``maps`` is read (the kick of this step), ``scale`` written.
    """
    s = wp.tid()
    if stage[s] != stage_index or status[s] != 0:
        return
    start = ptr[s]
    end = ptr[s + 1]
    n = dof[s] / type(fs)(3.0)  # N_f / 3: N without constraints (exactly), N - 1 with FixCom
    kT = kB * temperature[s]
    half_dt = dt_fs[s] * fs * type(fs)(0.5)
    tau_t = tdamp_fs[s] * fs
    a = maps[s, 0]
    b = maps[s, 1]
    kin = wp.outer(velocities.dtype(), velocities.dtype())
    for i in range(start, end):
        v = npt_kick(a, b, half_dt, masses[i], velocities[i], forces[i])
        kin = kin + masses[i] * wp.outer(v, v)
    volume = _volume(isotropic, cell[s], cell0[s], eps[s])
    _cell_momentum_kick(s, isotropic, half_dt, kin, n, volume, stress[s], pressure[s], p_eps, p_cell)
    g_t = type(fs)(3.0) * n * kT
    scale[s] = nhc_integrate(s, wp.trace(kin), g_t, kT, g_t * tau_t * tau_t, kT * tau_t * tau_t, half_dt,
                             tchain[s], tloop[s], eta, p_eta)
    w, r0, rj, g_baro = _barostat_masses(n, kT, pdamp_fs[s] * fs, isotropic)
    _barostat_chain(s, isotropic, half_dt, w, r0, rj, g_baro, kT, pchain[s], ploop[s], p_eps, p_cell, xi, p_xi)


@wp.kernel
def npt_pre_atom_kernel(
    batch_idx: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    fs: Any,
    dt_fs: wp.array(dtype=Any),
    scale: wp.array(dtype=Any),
    maps: wp.array2d(dtype=Any),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    positions: wp.array(dtype=Any),
):
    """Thermostat scaling, barostat half kick and drift: ``v = A (f v) + dt/2 B F/m``, ``x = C x + dt D v``."""
    i = wp.tid()
    s = batch_idx[i]
    if stage[s] != stage_index or status[s] != 0:
        return
    dt = dt_fs[s] * fs
    m = masses[i]
    v = npt_kick(maps[s, 0], maps[s, 1], dt * type(dt)(0.5), m, scale[s] * velocities[i], forces[i])
    velocities[i] = v
    positions[i] = maps[s, 2] * positions[i] + dt * (maps[s, 3] * v)


@wp.kernel
def npt_post_atom_kernel(
    batch_idx: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    fs: Any,
    dt_fs: wp.array(dtype=Any),
    scale: wp.array(dtype=Any),
    maps: wp.array2d(dtype=Any),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
):
    """Closing barostat half kick with the new forces, then the thermostat scaling."""
    i = wp.tid()
    s = batch_idx[i]
    if stage[s] != stage_index or status[s] != 0:
        return
    half_dt = dt_fs[s] * fs * type(fs)(0.5)
    velocities[i] = scale[s] * npt_kick(maps[s, 0], maps[s, 1], half_dt, masses[i], velocities[i], forces[i])


def _overload_all() -> None:
    """Concrete float32/float64 overloads (ahead-of-time compilation; launches infer the same ones)."""
    for scalar, vec, mat in ((wp.float32, wp.vec3f, wp.mat33f), (wp.float64, wp.vec3d, wp.mat33d)):
        f, v, m = wp.array(dtype=scalar), wp.array(dtype=vec), wp.array(dtype=mat)
        f2, m2 = wp.array2d(dtype=scalar), wp.array2d(dtype=mat)
        system = {"fs": scalar, "kB": scalar, "dt_fs": f, "temperature": f, "tdamp_fs": f, "pdamp_fs": f,
                  "pressure": f, "dof": f, "masses": f, "velocities": v, "stress": m, "cell": m, "cell0": m, "eps": f,
                  "p_eps": f, "p_cell": m, "eta": f2, "p_eta": f2, "xi": f2, "p_xi": f2, "maps": m2, "scale": f}
        wp.overload(npt_pre_system_kernel, system)
        wp.overload(npt_post_system_kernel, {**system, "forces": v})
        atom = {"fs": scalar, "dt_fs": f, "scale": f, "maps": m2, "masses": f, "forces": v, "velocities": v}
        wp.overload(npt_pre_atom_kernel, {**atom, "positions": v})
        wp.overload(npt_post_atom_kernel, atom)


_overload_all()
