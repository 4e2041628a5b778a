"""Warp kernels recording each system's outcome per stage of a :class:`~batchmd.dynamics.FusedStage`.

Per system ``s`` and stage ``k`` (row-major ``[B, K]`` arrays, ``K`` stages):

``stage_start[s, k]``
    The system's total step count (``n_steps``) when it entered stage ``k``.
``stage_fmax[s, k]``
    Its largest atomic force (eV/Å) when it left stage ``k`` (written at the exit).
``stage_tsum[s, k]``
    Running mean over the MD steps it took in stage ``k`` of its instantaneous kinetic
    temperature ``T = 2 KE / (g kB)`` (K; ``g`` the system's degrees of freedom, the ``dof``
    field: ``3N - 3 N_fixed - 3 [fix_com]``, as ``ase.Atoms.get_temperature``; 0 when
    ``g = 0``), sampled after each step (after the FixCom projection) and updated as
    ``mean += (T - mean) / n`` (stable in float32 for any number of steps).

One thread per system; no host synchronisation. Both kernels are dtype-generic: the float
arrays are in the batch's dtype (sums are taken in float64).
"""

from __future__ import annotations

from typing import Any

import warp as wp

from batchmd.kernels.bookkeeping import ACTIVE

wp.set_module_options({"enable_backward": False})


@wp.kernel
def accumulate_md_temperature(
    increment: wp.int32,
    ptr: wp.array(dtype=wp.int32),
    velocities: wp.array(dtype=Any),
    masses: wp.array(dtype=Any),
    dof: wp.array(dtype=Any),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_steps: wp.array(dtype=wp.int32),
    stage_is_md: wp.array(dtype=wp.int32),
    num_stages: wp.int32,
    kB: wp.float64,
    stage_tsum: wp.array(dtype=Any),
):
    """Fold this step's temperature into the running mean of every ACTIVE system in an MD stage.

    Called before ``advance_status``: ``stage_steps[s] + 1`` is the number of steps taken in
    the stage with this one.
    """
    s = wp.tid()
    k = stage[s]
    if increment == 0 or status[s] != ACTIVE or stage_is_md[k] == 0:
        return
    start = ptr[s]
    end = ptr[s + 1]
    ke = wp.float64(0.0)
    for i in range(start, end):
        v = velocities[i]
        ke = ke + wp.float64(0.5) * wp.float64(masses[i]) * wp.float64(wp.dot(v, v))
    g = wp.float64(dof[s])
    t = wp.float64(0.0)
    if g > wp.float64(0.0):
        t = wp.float64(2.0) * ke / (g * kB)
    mean = wp.float64(stage_tsum[s * num_stages + k])
    count = wp.float64(stage_steps[s] + 1)
    stage_tsum[s * num_stages + k] = stage_tsum.dtype(mean + (t - mean) / count)


@wp.kernel
def record_stage_entry(
    entered: wp.array(dtype=wp.bool),
    stage: wp.array(dtype=wp.int32),
    n_steps: wp.array(dtype=wp.int32),
    fmax: wp.array(dtype=Any),
    num_stages: wp.int32,
    stage_start: wp.array(dtype=wp.int32),
    stage_fmax: wp.array(dtype=Any),
):
    """For systems that just entered stage k > 0: its start step, and fmax at the exit of stage k - 1."""
    s = wp.tid()
    if not entered[s]:
        return
    k = stage[s]
    stage_start[s * num_stages + k] = n_steps[s]
    stage_fmax[s * num_stages + k - 1] = fmax[s]


accumulate_md_temperature_overloads = {}
record_stage_entry_overloads = {}
for _scalar, _vec in ((wp.float32, wp.vec3f), (wp.float64, wp.vec3d)):
    accumulate_md_temperature_overloads[_scalar] = wp.overload(
        accumulate_md_temperature, {"velocities": wp.array(dtype=_vec), "masses": wp.array(dtype=_scalar),
                                    "dof": wp.array(dtype=_scalar), "stage_tsum": wp.array(dtype=_scalar)})
    record_stage_entry_overloads[_scalar] = wp.overload(
        record_stage_entry, {"fmax": wp.array(dtype=_scalar), "stage_fmax": wp.array(dtype=_scalar)})
