"""Deterministic per-system reductions over atoms.

Every reduction here runs one thread per system, which walks its own atoms
``ptr[s] .. ptr[s+1]-1`` in order. A system's result therefore depends only on
that system's atoms: it is bitwise identical whichever other systems share the
batch, whatever its slot and whatever the batch size (batch invariance), and it
is reproducible from run to run (no atomics).

The ``@wp.func`` building blocks (:func:`fire_sums`, :func:`kinetic_energy_sum`,
:func:`max_norm`) are reused inside the integrator kernels so that a reduction and
the per-system update that consumes it run in one launch. The kernels and the thin
tensor-level wrappers below serve hooks and convergence checks.

All kernels are dtype-generic (float32 / float64 via ``typing.Any`` + ``wp.overload``).

Example
-------
>>> import torch
>>> from batchmd.kernels.reductions import system_kinetic_energy
>>> v = torch.ones(3, 3, dtype=torch.float64)          # Å / ASE time unit
>>> m = torch.full((3,), 2.0, dtype=torch.float64)     # amu
>>> ptr = torch.tensor([0, 1, 3], dtype=torch.int32)
>>> system_kinetic_energy(v, m, ptr).tolist()          # eV
[3.0, 6.0]
"""

from __future__ import annotations

from typing import Any

import torch
import warp as wp

from batchmd.runtime import launch, to_warp

wp.set_module_options({"enable_backward": False})

__all__ = [
    "REDUCE_CHUNK",
    "chunk_plan",
    "fire_sums",
    "kinetic_energy_sum",
    "max_norm",
    "system_fire_sums_kernel",
    "system_kinetic_energy_kernel",
    "system_max_norm_kernel",
    "system_fire_sums",
    "system_kinetic_energy",
    "system_max_force_norm",
]

_FLOAT_TYPES = ((wp.float32, wp.vec3f), (wp.float64, wp.vec3d))

#: Atoms per partial result of the chunked per-system reductions (GPUs, large systems).
REDUCE_CHUNK = 256


def chunk_plan(largest: int, device: torch.device, force: bool | None = None) -> tuple[int, int]:
    """``(chunk, count)`` for a per-system reduction over systems of at most ``largest`` atoms.

    One GPU thread walking a 32,000-atom system costs ~2 ms per step (H100), so on GPUs a
    system above ``REDUCE_CHUNK`` atoms is reduced in ``count`` chunks of ``chunk`` atoms
    (in order: deterministic), then the chunk results are combined in chunk order. On the
    CPU (threads run one after the other anyway) and for systems of at most one chunk,
    ``chunk`` is 0: one thread walks each system, exactly as before. ``force`` True/False
    overrides the device rule (tests run the chunked path on the CPU). ``count >= 1`` always
    (the size of the partial-result buffers).

    Example
    -------
    >>> chunk_plan(32000, torch.device("cuda"))
    (256, 125)
    >>> chunk_plan(32000, torch.device("cpu"))
    (0, 1)
    """
    chunked = force if force is not None else device.type != "cpu"
    count = -(-int(largest) // REDUCE_CHUNK) if chunked else 0
    chunk = REDUCE_CHUNK if count > 1 or (chunked and force) else 0
    return chunk, max(count, 1)


@wp.func
def fire_sums(start: wp.int32, end: wp.int32, v: wp.array(dtype=Any), f: wp.array(dtype=Any)):
    """FIRE's three system sums in one pass: ``(v·f, |f|^2, |v|^2)`` packed in a vec3.

    Atoms ``start .. end-1`` are visited in order (deterministic).
    """
    acc = v.dtype()
    for i in range(start, end):
        vi = v[i]
        fi = f[i]
        acc = acc + v.dtype(wp.dot(vi, fi), wp.dot(fi, fi), wp.dot(vi, vi))
    return acc


@wp.func
def kinetic_energy_sum(start: wp.int32, end: wp.int32, v: wp.array(dtype=Any), m: wp.array(dtype=Any)):
    """``sum_i 0.5 m_i |v_i|^2`` over atoms ``start .. end-1`` (eV for amu, Å/ASE time)."""
    acc = m.dtype(0.0)
    for i in range(start, end):
        acc = acc + m.dtype(0.5) * m[i] * wp.dot(v[i], v[i])
    return acc


@wp.func
def max_norm(start: wp.int32, end: wp.int32, x: wp.array(dtype=Any)):
    """Largest Euclidean norm of the vectors ``x[start .. end-1]`` (0 for an empty range)."""
    best = wp.length_sq(x.dtype())
    for i in range(start, end):
        best = wp.max(best, wp.length_sq(x[i]))
    return wp.sqrt(best)


@wp.kernel
def system_fire_sums_kernel(
    ptr: wp.array(dtype=wp.int32), v: wp.array(dtype=Any), f: wp.array(dtype=Any), out: wp.array(dtype=Any)
):
    """One thread per system: ``out[s] = (v·f, |f|^2, |v|^2)`` over the system's atoms."""
    s = wp.tid()
    out[s] = fire_sums(ptr[s], ptr[s + 1], v, f)


@wp.kernel
def system_kinetic_energy_kernel(
    ptr: wp.array(dtype=wp.int32), v: wp.array(dtype=Any), m: wp.array(dtype=Any), out: wp.array(dtype=Any)
):
    """One thread per system: kinetic energy ``out[s] = sum 0.5 m |v|^2``."""
    s = wp.tid()
    out[s] = kinetic_energy_sum(ptr[s], ptr[s + 1], v, m)


@wp.kernel
def system_max_norm_kernel(ptr: wp.array(dtype=wp.int32), x: wp.array(dtype=Any), out: wp.array(dtype=Any)):
    """One thread per system: ``out[s] = max_i |x_i|`` over the system's atoms."""
    s = wp.tid()
    out[s] = max_norm(ptr[s], ptr[s + 1], x)


for _scalar, _vec in _FLOAT_TYPES:
    _i32 = wp.array(dtype=wp.int32)
    wp.overload(system_fire_sums_kernel, [_i32, wp.array(dtype=_vec), wp.array(dtype=_vec), wp.array(dtype=_vec)])
    wp.overload(
        system_kinetic_energy_kernel, [_i32, wp.array(dtype=_vec), wp.array(dtype=_scalar), wp.array(dtype=_scalar)]
    )
    wp.overload(system_max_norm_kernel, [_i32, wp.array(dtype=_vec), wp.array(dtype=_scalar)])


def system_fire_sums(velocities: torch.Tensor, forces: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """Per-system ``(v·f, |f|^2, |v|^2)``.

    Parameters
    ----------
    velocities : torch.Tensor
        ``[N, 3]`` float32 or float64, FIRE's velocities (Å per ASE time unit).
    forces : torch.Tensor
        ``[N, 3]`` of the same dtype, eV/Å.
    ptr : torch.Tensor
        ``[B+1]`` int32 system offsets.

    Returns
    -------
    torch.Tensor
        ``[B, 3]`` of the same dtype: columns ``v·f``, ``|f|^2``, ``|v|^2``.
    """
    out = torch.empty(ptr.shape[0] - 1, 3, dtype=forces.dtype, device=forces.device)
    launch(
        system_fire_sums_kernel,
        out.shape[0],
        [to_warp(ptr), to_warp(velocities, vector=True), to_warp(forces, vector=True), to_warp(out, vector=True)],
        forces.device,
    )
    return out


def system_kinetic_energy(velocities: torch.Tensor, masses: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """Per-system kinetic energy ``sum_i 0.5 m_i |v_i|^2``.

    Parameters
    ----------
    velocities : torch.Tensor
        ``[N, 3]`` Å / ASE time unit.
    masses : torch.Tensor
        ``[N]`` amu, same dtype as ``velocities``.
    ptr : torch.Tensor
        ``[B+1]`` int32 system offsets.

    Returns
    -------
    torch.Tensor
        ``[B]`` kinetic energies, eV. See the module example.
    """
    out = torch.empty(ptr.shape[0] - 1, dtype=velocities.dtype, device=velocities.device)
    launch(
        system_kinetic_energy_kernel,
        out.shape[0],
        [to_warp(ptr), to_warp(velocities, vector=True), to_warp(masses), to_warp(out)],
        velocities.device,
    )
    return out


def system_max_force_norm(forces: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """Per-system largest atomic force norm (``fmax`` in ASE's optimizers).

    Parameters
    ----------
    forces : torch.Tensor
        ``[N, 3]`` eV/Å.
    ptr : torch.Tensor
        ``[B+1]`` int32 system offsets.

    Returns
    -------
    torch.Tensor
        ``[B]`` eV/Å (0 for a system without atoms).

    Example
    -------
    >>> import torch
    >>> f = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    >>> system_max_force_norm(f, torch.tensor([0, 2], dtype=torch.int32)).tolist()
    [5.0]
    """
    out = torch.empty(ptr.shape[0] - 1, dtype=forces.dtype, device=forces.device)
    inputs = [to_warp(ptr), to_warp(forces, vector=True), to_warp(out)]
    launch(system_max_norm_kernel, out.shape[0], inputs, forces.device)
    return out
