"""Velocity initialisation at MD stage entry: Maxwell-Boltzmann draws and the velocity policy.

One thread per system (:func:`velocity_policy_kernel`); a system not entering the stage
returns at once, so the launch is cheap when nobody enters. For an entering system:

``mode == KEEP``
    velocities kept; atoms with ``fixed`` get zero velocity.
``mode == DRAW``
    every free atom gets ``v = sqrt(kB T / m) xi`` with ``xi ~ N(0, 1)^3``, then the
    centre-of-mass velocity of the free atoms is removed. Without FixCom (``dof`` equal to
    ``3 N_free``) the velocities are then rescaled to the kinetic energy they had before the
    removal -- what ASE's ``MaxwellBoltzmannDistribution(atoms, temperature_K=T)`` followed
    by ``Stationary(atoms)`` (``preserve_temperature=True``) does. With FixCom (``dof = 3
    N_free - 3``) they are not rescaled: the centre-of-mass-free part of a Gaussian draw is
    the canonical distribution of the ``3 N_free - 3`` degrees of freedom left (mean
    kinetic energy ``dof kT/2``), as ASE gives for atoms carrying ``FixCom`` (whose
    ``set_momenta`` removes the centre-of-mass velocity). ``T = 0`` gives zeros.
``mode == AUTO``
    KEEP if any atom of the system has a non-zero velocity, else DRAW.

Random numbers: atom ``j`` (local index) of a system draws from the key
``(seed ^ MB_TAG, system_id, counter, j)`` (the hash of
``batchmd.kernels.langevin.langevin_noise_key``), where ``counter`` is the system's
random-stream position ``rng_counter``; a draw advances it by one. Nothing depends on the
slot, the batch or the serving order: the draw of a system is the same alone or in any batch.

Units: temperature K, ``kB`` eV/K, masses amu, velocities Å / ASE time unit.

Example
-------
See :func:`batchmd.dynamics.velocities.apply_velocity_policy`, which shapes the arguments.
"""

from __future__ import annotations

from typing import Any

import warp as wp

from batchmd.kernels.langevin import langevin_noise_key

wp.set_module_options({"enable_backward": False})

__all__ = ["KEEP", "DRAW", "AUTO", "MB_TAG", "velocity_policy_kernel", "velocity_policy_kernel_overloads"]

KEEP = 0
DRAW = 1
AUTO = 2
_DRAW = wp.constant(1)
_AUTO = wp.constant(2)
#: Mixed into the seed so that Maxwell-Boltzmann draws never share a stream with Langevin noise.
MB_TAG = 0x4D42_5645_4C4F_4349  # "MBVELOCI"


@wp.kernel
def velocity_policy_kernel(
    ptr: wp.array(dtype=wp.int32),
    enter: wp.array(dtype=wp.bool),
    mode: wp.int32,
    kB: Any,
    seed: wp.int64,
    system_id: wp.array(dtype=wp.int64),
    counter: wp.array(dtype=wp.int32),
    temperature: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    fixed: wp.array(dtype=wp.bool),
    dof: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
):
    """Apply the velocity policy ``mode`` to system ``s`` if ``enter[s]`` (see the module docstring).

    Parameters
    ----------
    ptr : int32 [B+1]  system offsets;  enter : bool [B]  systems entering the stage.
    mode : KEEP, DRAW or AUTO.  kB : ``ase.units.kB`` (eV/K);  seed : int64 (already tagged).
    system_id : int64 [B];  counter : int32 [B] in/out random-stream position.
    temperature : [B] K;  masses : [N] amu;  fixed : bool [N] ``FixAtoms`` mask.
    dof : [B] degrees of freedom (``3 N_free``; ``3 N_free - 3`` with FixCom: no rescaling).
    velocities : vec3 [N] in/out, Å / ASE time unit.
    """
    s = wp.tid()
    if not enter[s]:
        return
    start = ptr[s]
    end = ptr[s + 1]
    zero = temperature.dtype(0.0)
    draw = int(0)
    if mode == _DRAW:
        draw = int(1)
    if mode == _AUTO:
        draw = int(1)
        for i in range(start, end):
            if not fixed[i] and wp.length_sq(velocities[i]) > zero:
                draw = int(0)
    if draw == 0:
        for i in range(start, end):
            if fixed[i]:
                velocities[i] = velocities.dtype(zero, zero, zero)
        return
    kT = kB * temperature[s]
    n = counter[s]
    momentum = velocities.dtype(zero, zero, zero)
    mass = zero
    ke0 = zero
    free = int(0)
    for i in range(start, end):
        v = velocities.dtype(zero, zero, zero)
        if not fixed[i] and kT > zero:
            key = langevin_noise_key(seed, system_id[s], n, i - start)
            r0 = wp.rand_init(key, 0)
            r1 = wp.rand_init(key, 1)
            r2 = wp.rand_init(key, 2)
            m = masses[i]
            sigma = wp.sqrt(kT / m)
            xi = velocities.dtype(temperature.dtype(wp.randn(r0)), temperature.dtype(wp.randn(r1)),
                                  temperature.dtype(wp.randn(r2)))
            v = sigma * xi
            momentum = momentum + m * v
            mass = mass + m
            ke0 = ke0 + m * wp.length_sq(v)
            free = free + 1
        velocities[i] = v
    counter[s] = n + 1
    if free < 2:
        return
    v0 = momentum / mass
    ke1 = zero
    for i in range(start, end):
        if not fixed[i]:
            v = velocities[i] - v0
            velocities[i] = v
            ke1 = ke1 + masses[i] * wp.length_sq(v)
    if ke1 > zero and dof[s] >= temperature.dtype(3 * free):  # no FixCom: ASE's Stationary keeps the energy
        scale = wp.sqrt(ke0 / ke1)
        for i in range(start, end):
            velocities[i] = scale * velocities[i]


velocity_policy_kernel_overloads = {}
for _scalar, _vec in ((wp.float32, wp.vec3f), (wp.float64, wp.vec3d)):
    velocity_policy_kernel_overloads[_scalar] = wp.overload(
        velocity_policy_kernel,
        [wp.array(dtype=wp.int32), wp.array(dtype=wp.bool), wp.int32, _scalar, wp.int64, wp.array(dtype=wp.int64),
         wp.array(dtype=wp.int32), wp.array(dtype=_scalar), wp.array(dtype=_scalar), wp.array(dtype=wp.bool),
         wp.array(dtype=_scalar), wp.array(dtype=_vec)],
    )
