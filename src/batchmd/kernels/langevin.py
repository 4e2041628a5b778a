"""Langevin (NVT) kernels: the BAOAB splitting of Leimkuhler & Matthews.

One step of length ``h``, with ``f`` the forces at the current positions and ``f'``
those at the new positions (one model evaluation in between)::

    before the force call  (langevin_pre_force_kernel):
        B  v += h/2 f/m
        A  x += h/2 v
        O  v  = c1 v + sqrt((1 - c1^2) kT/m) xi,   c1 = exp(-gamma h),  xi ~ N(0, 1)^3
        A  x += h/2 v
    after the force call   (langevin_post_force_kernel):
        B  v += h/2 f'/m          (and the system's step counter += 1)

BAOAB samples the canonical configurational distribution with O(h^2) error (exact
for harmonic systems) and is exact for free particles (velocities N(0, kT/m)).

Random numbers
--------------
Each atom's three normals depend only on ``(seed, system_id, step, local atom index,
component)``, where ``step`` is the system's random-stream position ``rng_counter`` (it
advances with every Langevin step and survives across runs on the same batch, so a
repeated run draws new noise): these are mixed into a 64-bit key with the splitmix64
finaliser, the key
is folded to 32 bits and handed to Warp's counter-style generator as
``wp.rand_init(key32, component)`` (Warp: state = pcg(seed + pcg(offset))), and one
``wp.randn`` (Box-Muller, two chained PCG draws) is taken per component. A Warp
stream is thus used for only two draws, so streams of different (system, step, atom)
tuples do not run into each other; independence rests on the hash, with the usual
32-bit-state caveat (two tuples share a stream with probability ~2^-32). Nothing
depends on the slot, the batch size or the other systems, so a trajectory is
reproducible bitwise however systems are batched. ``wp.randn`` is float32; in float64
runs the normals are float32 values cast up (a resolution of ~1e-7, statistically
irrelevant).

Units: ``dt`` fs, ``friction`` 1/fs (so ``gamma h = friction * dt`` is dimensionless),
temperature K, ``kB`` eV/K, ``fs`` = ``ase.units.fs`` (ASE time units per fs); ``v`` in
Å/ASE time unit, masses amu, forces eV/Å.

Example
-------
See :class:`batchmd.dynamics.langevin.NVTLangevin`, which shapes the arguments and launches these.
"""

from __future__ import annotations

from typing import Any

import warp as wp

wp.set_module_options({"enable_backward": False})

__all__ = [
    "langevin_noise_key",
    "langevin_pre_force_kernel",
    "langevin_post_force_kernel",
    "langevin_pre_force_kernel_overloads",
    "langevin_post_force_kernel_overloads",
]

_MIX1 = wp.constant(wp.uint64(0xBF58476D1CE4E5B9))
_MIX2 = wp.constant(wp.uint64(0x94D049BB133111EB))
_GOLDEN = wp.constant(wp.uint64(0x9E3779B97F4A7C15))


@wp.func
def _splitmix64(z: wp.uint64) -> wp.uint64:
    z = z + _GOLDEN
    z = (z ^ (z >> wp.uint64(30))) * _MIX1
    z = (z ^ (z >> wp.uint64(27))) * _MIX2
    return z ^ (z >> wp.uint64(31))


@wp.func
def langevin_noise_key(seed: wp.int64, system_id: wp.int64, step: wp.int32, local_index: wp.int32) -> wp.int32:
    """32-bit Warp seed for one atom at one step: a hash of (seed, system_id, step, local index)."""
    h = _splitmix64(wp.uint64(seed))
    h = _splitmix64(h ^ wp.uint64(system_id))
    h = _splitmix64(h ^ wp.uint64(step))
    h = _splitmix64(h ^ wp.uint64(local_index))
    return wp.int32((h ^ (h >> wp.uint64(32))) & wp.uint64(0xFFFFFFFF))


@wp.kernel
def langevin_pre_force_kernel(
    batch_idx: wp.array(dtype=wp.int32),
    ptr: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    fs: Any,
    kB: Any,
    seed: wp.int64,
    system_id: wp.array(dtype=wp.int64),
    step: wp.array(dtype=wp.int32),
    dt_fs: wp.array(dtype=Any),
    temperature: wp.array(dtype=Any),
    friction: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    positions: wp.array(dtype=Any),
    fixed: wp.array(dtype=wp.bool),
):
    """B (half) A (half) O A (half) for one atom (an atom with ``fixed[i]`` does not move).

    Parameters
    ----------
    batch_idx : int32 [N] atom -> system;  ptr : int32 [B+1] system offsets.
    stage, status : int32 [B] loop fields;  stage_index : the stage being stepped.
    fs : float ``ase.units.fs``;  kB : float ``ase.units.kB`` (eV/K).
    seed : int64 user seed;  system_id : int64 [B] stable system identity.
    step : int32 [B] the system's random-stream position (``rng_counter``; advances every
        step and is never reset between runs, so repeated runs draw new noise).
    dt_fs : [B] fs;  temperature : [B] K;  friction : [B] 1/fs.
    masses : [N] amu;  forces : vec3 [N] eV/Å (at the current positions).
    velocities, positions : vec3 [N], in/out.
    fixed : bool [N]  ``FixAtoms`` mask: such atoms get no kick, drift or noise.
    """
    i = wp.tid()
    s = batch_idx[i]
    if stage[s] != stage_index or status[s] != 0 or fixed[i]:
        return
    m = masses[i]
    half = dt_fs[s] * fs * m.dtype(0.5)
    v = velocities[i] + (half / m) * forces[i]
    x = positions[i] + half * v
    gamma_h = friction[s] * dt_fs[s]
    c1 = wp.exp(-gamma_h)
    # 1 - c1^2 = 1 - exp(-2 gamma h), by its Taylor series when small (no cancellation).
    y = m.dtype(2.0) * gamma_h
    one = m.dtype(1.0)
    fluct = one - wp.exp(-y)
    if y < m.dtype(0.01):
        series = one - y / m.dtype(4.0) * (one - y / m.dtype(5.0))
        fluct = y * (one - y / m.dtype(2.0) * (one - y / m.dtype(3.0) * series))
    c2 = wp.sqrt(fluct * kB * temperature[s] / m)
    key = langevin_noise_key(seed, system_id[s], step[s], i - ptr[s])
    r0 = wp.rand_init(key, 0)
    r1 = wp.rand_init(key, 1)
    r2 = wp.rand_init(key, 2)
    xi = velocities.dtype(m.dtype(wp.randn(r0)), m.dtype(wp.randn(r1)), m.dtype(wp.randn(r2)))
    v = c1 * v + c2 * xi
    velocities[i] = v
    positions[i] = x + half * v


@wp.kernel
def langevin_post_force_kernel(
    batch_idx: wp.array(dtype=wp.int32),
    ptr: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    fs: Any,
    dt_fs: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    step: wp.array(dtype=wp.int32),
    counter: wp.array(dtype=wp.int32),
):
    """Closing B half kick ``v += h/2 f'/m``; the system's first atom advances ``step[s]`` and
    the system's random-stream position ``counter[s]``.

    No other thread of this launch reads ``step`` or ``counter``, so the increments are race-free.
    """
    i = wp.tid()
    s = batch_idx[i]
    if stage[s] != stage_index or status[s] != 0:
        return
    half = dt_fs[s] * fs * masses.dtype(0.5)
    velocities[i] = velocities[i] + (half / masses[i]) * forces[i]
    if i == ptr[s]:
        step[s] = step[s] + 1
        counter[s] = counter[s] + 1


#: Concrete float32 / float64 overloads keyed by Warp scalar type; launching one of these
#: directly skips Warp's per-launch type inference of the generic kernel.
langevin_pre_force_kernel_overloads = {}
langevin_post_force_kernel_overloads = {}

for _scalar, _vec in ((wp.float32, wp.vec3f), (wp.float64, wp.vec3d)):
    _i32 = wp.array(dtype=wp.int32)
    _i64 = wp.array(dtype=wp.int64)
    _f = wp.array(dtype=_scalar)
    _v = wp.array(dtype=_vec)
    langevin_pre_force_kernel_overloads[_scalar] = wp.overload(
        langevin_pre_force_kernel,
        [_i32, _i32, _i32, _i32, wp.int32, _scalar, _scalar, wp.int64, _i64, _i32, _f, _f, _f, _f, _v, _v, _v,
         wp.array(dtype=wp.bool)],
    )
    langevin_post_force_kernel_overloads[_scalar] = wp.overload(
        langevin_post_force_kernel, [_i32, _i32, _i32, _i32, wp.int32, _scalar, _f, _f, _v, _v, _i32, _i32]
    )
