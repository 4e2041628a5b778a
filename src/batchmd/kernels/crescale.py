"""Stochastic cell rescaling (C-rescale, isotropic) with a Nosé-Hoover chain thermostat.

The barostat of M. Bernetti and G. Bussi, J. Chem. Phys. 153, 114107 (2020), for
``eps = ln V``::

    d eps = -(beta_T / tau_p) (P0 - P_int - kT/V) dt + sqrt(2 kT beta_T / (V tau_p)) dW

applied as a scaling of positions and cell by ``exp(d eps / 3)`` and of velocities by
``exp(-d eps / 3)``; ``P_int = -tr(stress_total)/3`` includes the kinetic term.

One step of a system (one model evaluation), the barostat in the middle of the velocity
Verlet step so that the forces and stress used are always those of the current
configuration::

    v = NHC(v, dt/2)                       (batchmd.kernels.nose_hoover)
    v += dt/2 F/m
    P_int from the stress at (x, h) and the kinetic tensor of v;  d eps drawn
    x, h *= exp(d eps / 3);  v *= exp(-d eps / 3)
    x += dt v
    --- model evaluation ---
    v += dt/2 F'/m;  v = NHC(v, dt/2)       (nhc_system_kernel / nhc_post_atom_kernel)

Random numbers: one normal per system and step from ``wp.randn`` seeded with
``langevin_noise_key(seed, system_id, rng_counter, -1)``, so a system's noise depends only
on its identity and its own stream position (batch invariance).

Units: ``dt``, ``tdamp``, ``taup`` fs; temperature K; pressure eV/Å^3; compressibility
``beta_T`` Å^3/eV (1/GPa = 160.2 Å^3/eV).
"""

from __future__ import annotations

from typing import Any

import warp as wp

from batchmd.kernels.langevin import langevin_noise_key
from batchmd.kernels.nose_hoover import kick, nhc_integrate

wp.set_module_options({"enable_backward": False})

__all__ = ["crescale_system_kernel", "crescale_atom_kernel"]


@wp.kernel
def crescale_system_kernel(
    ptr: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    fs: Any,
    kB: Any,
    seed: wp.int64,
    system_id: wp.array(dtype=wp.int64),
    rng_counter: wp.array(dtype=wp.int32),
    dt_fs: wp.array(dtype=Any),
    temperature: wp.array(dtype=Any),
    tdamp_fs: wp.array(dtype=Any),
    tchain: wp.array(dtype=wp.int32),
    tloop: wp.array(dtype=wp.int32),
    pressure: wp.array(dtype=Any),
    taup_fs: wp.array(dtype=Any),
    compressibility: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    dof: wp.array(dtype=Any),
    stress: wp.array(dtype=Any),
    cell: wp.array(dtype=Any),
    eta: wp.array2d(dtype=Any),
    p_eta: wp.array2d(dtype=Any),
    scale: wp.array(dtype=Any),
    stretch: wp.array(dtype=Any),
):
    """One thread per system: thermostat half step, barostat step; writes ``scale[s]``, ``stretch[s]``, the cell.

    ``scale``: the thermostat factor of the velocities; ``stretch = exp(d eps / 3)``.
    ``dof`` [B]: the degrees of freedom ``g`` the thermostat targets (``g kT``; ``3N - 3``
    with FixCom). Advances ``rng_counter[s]`` by one.
    """
    s = wp.tid()
    if stage[s] != stage_index or status[s] != 0:
        return
    start = ptr[s]
    end = ptr[s + 1]
    half_dt = dt_fs[s] * fs * type(fs)(0.5)
    k2 = type(fs)(0.0)
    for i in range(start, end):
        v = velocities[i]
        k2 = k2 + masses[i] * wp.dot(v, v)
    kT = kB * temperature[s]
    tau = tdamp_fs[s] * fs
    g_kT = dof[s] * kT
    st = nhc_integrate(s, k2, g_kT, kT, g_kT * tau * tau, kT * tau * tau, half_dt, tchain[s], tloop[s], eta, p_eta)
    scale[s] = st
    trace_kin = type(fs)(0.0)
    for i in range(start, end):
        v = kick(st * velocities[i], forces[i], half_dt, masses[i])
        trace_kin = trace_kin + masses[i] * wp.dot(v, v)
    h = cell[s]
    volume = wp.abs(wp.determinant(h))
    p_int = (trace_kin / volume - wp.trace(stress[s])) / type(fs)(3.0)
    dt = half_dt + half_dt
    rate = compressibility[s] / (taup_fs[s] * fs)
    key = langevin_noise_key(seed, system_id[s], rng_counter[s], -1)
    noise = type(fs)(wp.randn(wp.rand_init(key, 0)))
    rng_counter[s] = rng_counter[s] + 1
    d_eps = -rate * (pressure[s] - p_int - kT / volume) * dt + wp.sqrt(type(fs)(2.0) * kT * rate * dt / volume) * noise
    mu = wp.exp(d_eps / type(fs)(3.0))
    stretch[s] = mu
    cell[s] = h * mu


@wp.kernel
def crescale_atom_kernel(
    batch_idx: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    fs: Any,
    dt_fs: wp.array(dtype=Any),
    scale: wp.array(dtype=Any),
    stretch: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    positions: wp.array(dtype=Any),
):
    """Thermostat scaling, half kick, rescaling (``x *= mu``, ``v /= mu``) and drift for one atom."""
    i = wp.tid()
    s = batch_idx[i]
    if stage[s] != stage_index or status[s] != 0:
        return
    dt = dt_fs[s] * fs
    mu = stretch[s]
    v = kick(scale[s] * velocities[i], forces[i], dt * type(fs)(0.5), masses[i]) / mu
    velocities[i] = v
    positions[i] = positions[i] * mu + dt * v


def _overload_all() -> None:
    """Concrete float32/float64 overloads (ahead-of-time compilation; launches infer the same ones)."""
    for scalar, vec, mat in ((wp.float32, wp.vec3f, wp.mat33f), (wp.float64, wp.vec3d, wp.mat33d)):
        f, v, m, f2 = wp.array(dtype=scalar), wp.array(dtype=vec), wp.array(dtype=mat), wp.array2d(dtype=scalar)
        wp.overload(crescale_system_kernel, {"fs": scalar, "kB": scalar, "dt_fs": f, "temperature": f, "tdamp_fs": f,
                                             "pressure": f, "taup_fs": f, "compressibility": f, "masses": f,
                                             "forces": v, "velocities": v, "dof": f, "stress": m, "cell": m, "eta": f2,
                                             "p_eta": f2, "scale": f, "stretch": f})
        wp.overload(crescale_atom_kernel, {"fs": scalar, "dt_fs": f, "scale": f, "stretch": f, "masses": f,
                                           "forces": v, "velocities": v, "positions": v})


_overload_all()
