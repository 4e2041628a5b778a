"""Warp kernels for the dynamics loop's per-system bookkeeping.

``system_force_stats``
    One thread per system: the maximum per-atom force norm (eV/Å), whether the system's
    energy and forces are all finite, and the runaway guards that need the evaluation
    (:mod:`batchmd.dynamics.guards`). Sums and maxima run over the system's own
    atoms in order, so the result never depends on the other systems of the batch.
``advance_status``
    One thread per system: step counters, convergence and step-budget checks, and stage
    transitions, all on the device (no host synchronisation).
"""

from __future__ import annotations

from typing import Any

import warp as wp

wp.set_module_options({"enable_backward": False})

ACTIVE = wp.constant(0)
CONVERGED = wp.constant(1)
OUT_OF_STEPS = wp.constant(2)
FAILED = wp.constant(3)
PENDING = wp.constant(4)
EMPTY = wp.constant(5)  # a slot's padding rows in a padded live batch (batchmd.dynamics.slot_layout)
# Failure bits (batchmd.dynamics.status.FailureReason).
FAILURE_ENERGY = wp.constant(1)
FAILURE_FORCES = wp.constant(2)
FAILURE_POSITIONS = wp.constant(32)
FAILURE_CELL = wp.constant(64)
FAILURE_VELOCITIES = wp.constant(128)
FAILURE_STRESS = wp.constant(256)
FAILURE_DENSITY = wp.constant(512)
FAILURE_DISPLACEMENT = wp.constant(1024)
FAILURE_ENERGY_DROP = wp.constant(2048)
# Bits set before the model is called (FailureReason.before_evaluation()): energy and stress become NaN.
BEFORE_EVALUATION = wp.constant(64 | 512)


@wp.func
def finite_vec(a: Any):
    return wp.isfinite(a[0]) and wp.isfinite(a[1]) and wp.isfinite(a[2])


@wp.func
def atom_guard_bits(i: int, x: wp.array(dtype=Any), v: wp.array(dtype=Any), has_v: int):
    """Runaway-guard bits of atom i: non-finite position (Å) or velocity."""
    bits = int(0)
    if not finite_vec(x[i]):
        bits = FAILURE_POSITIONS
    if has_v != 0:
        if not finite_vec(v[i]):
            bits = bits | FAILURE_VELOCITIES
    return bits


@wp.func
def atom_displacement(i: int, f: Any, v: wp.array(dtype=Any), has_v: int, masses: wp.array(dtype=Any),
                      t: wp.float64):
    """Bound ``|v| t + |f| t^2 / m`` (Å) of atom i's next velocity Verlet step (``t``: ASE time units); 0 if not finite."""
    d = wp.float64(wp.length(f)) / wp.float64(masses[i]) * t * t
    if has_v != 0:
        d = d + wp.float64(wp.length(v[i])) * t
    if not wp.isfinite(d):  # non-finite forces or velocities are reported as such, never as a displacement
        d = wp.float64(0.0)
    return d


@wp.kernel
def system_force_stats_chunks(
    forces: wp.array(dtype=Any),
    ptr: wp.array(dtype=wp.int32),
    chunk: int,
    part_max_sq: wp.array2d(dtype=Any),
    part_finite: wp.array2d(dtype=wp.int32),
    part_disp: wp.array2d(dtype=wp.float64),
    guard: int,
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    has_v: int,
    masses: wp.array(dtype=Any),
    stage: wp.array(dtype=wp.int32),
    stage_time: wp.array(dtype=wp.float64),
):
    """Thread (s, k): largest squared force norm, failure bits and displacement bound of atoms ``k*chunk ..`` of system s."""
    s, k = wp.tid()
    start = ptr[s] + k * chunk
    end = wp.min(start + chunk, ptr[s + 1])
    if start >= end:
        return
    bad = int(0)
    m2 = part_max_sq.dtype(0.0)
    dm = wp.float64(0.0)
    t = stage_time[stage[s]]
    for i in range(start, end):
        f = forces[i]
        n2 = wp.dot(f, f)
        if not wp.isfinite(n2):
            bad = bad | FAILURE_FORCES
        m2 = wp.max(m2, n2)
        if guard != 0:
            bad = bad | atom_guard_bits(i, x, v, has_v)
            if t > wp.float64(0.0):
                dm = wp.max(dm, atom_displacement(i, f, v, has_v, masses, t))
    part_max_sq[s, k] = m2
    part_finite[s, k] = bad
    part_disp[s, k] = dm


@wp.kernel
def system_force_stats(
    forces: wp.array(dtype=Any),
    energies: wp.array(dtype=Any),
    ptr: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    stage_fmax: wp.array(dtype=wp.float64),
    chunk: int,
    part_max_sq: wp.array2d(dtype=Any),
    part_finite: wp.array2d(dtype=wp.int32),
    part_disp: wp.array2d(dtype=wp.float64),
    fmax: wp.array(dtype=Any),
    finite: wp.array(dtype=wp.int32),
    force_converged: wp.array(dtype=wp.bool),
    status: wp.array(dtype=wp.int32),
    failure: wp.array(dtype=wp.int32),
    guard: int,
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    has_v: int,
    masses: wp.array(dtype=Any),
    stage_time: wp.array(dtype=wp.float64),
    stress: wp.array(dtype=Any),
    has_stress: int,
    energy_ref: wp.array(dtype=Any),
    max_energy_drop: wp.float64,
    max_displacement: wp.float64,
):
    """Per system: fmax (eV/Å), failure bits (0: all finite), and ``fmax <= stage_fmax[stage]`` (a threshold < 0: no force criterion).

    ``chunk > 0``: combine the per-chunk results of ``system_force_stats_chunks`` (GPUs, large
    systems); maxima and bit unions do not depend on the order, so both paths give the same numbers.

    Runaway guards (``guard != 0``, :mod:`batchmd.dynamics.guards`), in the same pass over
    the atoms: non-finite positions (Å) or velocities; the bound ``|v| t + |f| t^2 / m`` (Å)
    of the next MD step (``stage_time[k]``: stage k's dt in ASE time units, 0 outside MD)
    above ``max_displacement`` (> 0); ``has_stress``: the stress (eV/Å^3) must be finite;
    ``max_energy_drop >= 0`` (eV/atom): the first finite energy of an ACTIVE or PENDING
    system is kept in ``energy_ref`` (NaN until then); later, ``E/N < min(E_ref, 0)/N -
    max_energy_drop`` fails it. A system FAILED before the evaluation (bits
    ``BEFORE_EVALUATION``: the model did not see it) gets a NaN energy and stress, never a
    number of another geometry.
    """
    s = wp.tid()
    e = energies[s]
    bad = int(0)
    m2 = type(e)(0.0)
    dm = wp.float64(0.0)
    t = stage_time[stage[s]]
    if chunk > 0:
        for k in range((ptr[s + 1] - ptr[s] + chunk - 1) // chunk):
            bad = bad | part_finite[s, k]
            m2 = wp.max(m2, part_max_sq[s, k])
            dm = wp.max(dm, part_disp[s, k])
    else:
        for i in range(ptr[s], ptr[s + 1]):
            f = forces[i]
            n2 = wp.dot(f, f)
            if not wp.isfinite(n2):
                bad = bad | FAILURE_FORCES
            m2 = wp.max(m2, n2)
            if guard != 0:
                bad = bad | atom_guard_bits(i, x, v, has_v)
                if t > wp.float64(0.0):
                    dm = wp.max(dm, atom_displacement(i, f, v, has_v, masses, t))
    m = wp.sqrt(m2)
    fmax[s] = m
    if not wp.isfinite(e):
        bad = bad | FAILURE_ENERGY
    st = status[s]
    if st == FAILED and (failure[s] & BEFORE_EVALUATION) != 0:
        energies[s] = type(e)(wp.nan)
        if has_stress != 0:
            stress[s] = stress.dtype(wp.nan)
    elif guard != 0 and (st == ACTIVE or st == PENDING):
        if has_stress != 0:
            w = stress[s]
            for r in range(3):
                if not (wp.isfinite(w[r, 0]) and wp.isfinite(w[r, 1]) and wp.isfinite(w[r, 2])):
                    bad = bad | FAILURE_STRESS
        if max_energy_drop >= wp.float64(0.0) and wp.isfinite(e):
            ref = energy_ref[s]
            if wp.isnan(ref):
                energy_ref[s] = e
            else:
                n = wp.float64(ptr[s + 1] - ptr[s])
                if wp.float64(e) / n < wp.min(wp.float64(ref), wp.float64(0.0)) / n - max_energy_drop:
                    bad = bad | FAILURE_ENERGY_DROP
        if max_displacement > wp.float64(0.0) and dm > max_displacement:
            bad = bad | FAILURE_DISPLACEMENT
    finite[s] = bad
    threshold = stage_fmax[stage[s]]
    force_converged[s] = threshold >= wp.float64(0.0) and wp.float64(m) <= threshold


system_force_stats_overloads = {}
system_force_stats_chunks_overloads = {}
for _vec, _scalar, _mat in ((wp.vec3f, wp.float32, wp.mat33f), (wp.vec3d, wp.float64, wp.mat33d)):
    _common = {"forces": wp.array(dtype=_vec), "part_max_sq": wp.array2d(dtype=_scalar), "x": wp.array(dtype=_vec),
               "v": wp.array(dtype=_vec), "masses": wp.array(dtype=_scalar)}
    system_force_stats_overloads[_scalar] = wp.overload(
        system_force_stats, dict(_common, energies=wp.array(dtype=_scalar), fmax=wp.array(dtype=_scalar),
                                 stress=wp.array(dtype=_mat), energy_ref=wp.array(dtype=_scalar)))
    system_force_stats_chunks_overloads[_scalar] = wp.overload(system_force_stats_chunks, _common)


@wp.kernel
def advance_status(
    increment: wp.int32,
    converged: wp.array(dtype=wp.bool),
    finite: wp.array(dtype=wp.int32),
    stage_budget: wp.array(dtype=wp.int32),
    stage_has_criterion: wp.array(dtype=wp.int32),
    num_stages: wp.int32,
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_steps: wp.array(dtype=wp.int32),
    n_steps: wp.array(dtype=wp.int32),
    entered: wp.array(dtype=wp.bool),
    ptr: wp.array(dtype=wp.int32),
    active_atom_steps: wp.array(dtype=wp.int64),
    failure: wp.array(dtype=wp.int32),
):
    """Advance one system's counters and decide its next stage or graduation.

    ``stage_budget[k] < 0`` means stage k has no step budget. A stage with a criterion
    ends when the criterion holds (then the next stage, or CONVERGED after the last) or
    when its budget runs out (OUT_OF_STEPS, graduates at once). A stage without a
    criterion ends when its budget runs out (then the next stage, or CONVERGED).
    ``finite[s] != 0`` (failure bits from the force statistics) marks the system FAILED
    and ORs the bits into ``failure[s]``.
    A PENDING system (just inserted) becomes ACTIVE without counting a step: this
    evaluation was its priming one.
    ``active_atom_steps[0]`` accumulates the atoms of systems that took this step and
    ``active_atom_steps[1]`` those of systems whose evaluation was useful work (a step
    or a PENDING system's priming evaluation): the live batch's atoms in use. Integer
    sums, so their order does not matter.
    """
    s = wp.tid()
    entered[s] = False
    inc = increment
    if status[s] == PENDING:  # inserted at the last refill: its first evaluation is done, it did not move
        status[s] = ACTIVE
        inc = 0
        if increment != 0:
            wp.atomic_add(active_atom_steps, 1, wp.int64(ptr[s + 1] - ptr[s]))
    elif status[s] != ACTIVE:
        return
    if inc != 0:
        stage_steps[s] = stage_steps[s] + 1
        n_steps[s] = n_steps[s] + 1
        wp.atomic_add(active_atom_steps, 0, wp.int64(ptr[s + 1] - ptr[s]))
        wp.atomic_add(active_atom_steps, 1, wp.int64(ptr[s + 1] - ptr[s]))
    if finite[s] != 0:
        status[s] = FAILED
        failure[s] = failure[s] | finite[s]
        return
    k = stage[s]
    budget = stage_budget[k]
    done = False
    if stage_has_criterion[k] != 0:
        if converged[s]:
            done = True
        elif budget >= 0 and stage_steps[s] >= budget:
            status[s] = OUT_OF_STEPS
            return
    elif budget >= 0 and stage_steps[s] >= budget:
        done = True
    if done:
        if k + 1 < num_stages:
            stage[s] = k + 1
            stage_steps[s] = 0
            entered[s] = True
        else:
            status[s] = CONVERGED


#: advance_status has no floating arguments: the same kernel serves both dtypes.
advance_status_overloads = {wp.float32: advance_status, wp.float64: advance_status}
