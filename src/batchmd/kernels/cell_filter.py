"""Cell-filter kernels: ASE's ``UnitCellFilter`` and ``FrechetCellFilter`` degrees of freedom, batched.

A filter turns a system of ``N`` atoms and its cell into ``N + 3`` "rows" that an optimizer
moves together (``ase.filters`` / ``ase._4.optimize.cellutil.CellUtility``). With ``C0``
the reference cell (the cell when the filter was attached), ``C`` the current one,
``F = (C0^{-1} C)^T`` the deformation gradient, ``f_i`` the forces (eV/Å), ``sigma`` the
stress (eV/Å^3), ``V = |det C|``, ``P`` the scalar pressure (eV/Å^3) and ``c`` the cell
factor (``cell_factor`` / ``exp_cell_factor``, default ``N``):

- atom rows: positions ``F^{-1} x_i`` (the undeformed frame), forces ``F^T f_i``;
- virial ``W = -V (sigma + P I)``;
- ``UnitCellFilter`` (``kind[s] = 0``): cell rows ``c F``; cell forces ``W'/c`` with
  ``W' = W F^{-T}``, then (in this order) ``hydrostatic_strain``: ``W' = tr(W')/3 I``; ``mask``:
  ``W' = W' * mask`` elementwise; ``constant_volume``: ``diag(W') -= tr(W')/3``;
- ``FrechetCellFilter`` (``kind[s] = 1``): cell rows ``c log(F)`` (ASE adds the constant
  ``c log(N) I``, which no optimizer step sees); ``W`` first made hydrostatic and masked, then
  ``G = W F^{-T}``, cell forces ``D/c`` with ``D = L_exp(log(F)^T, G)`` (the adjoint of the
  Fréchet derivative of ``expm``, which is ASE's nine directional derivatives
  ``D_mn = <L_exp(log F, e_m e_n^T), G>`` at once) and ``constant_volume``: ``diag(D) -= tr(D)/3``.

Setting new rows ``(X_i, Xc)``: ``F' = Xc/c`` (unit) or ``expm(Xc/c)`` (Fréchet);
``T = I + mask * (F' - I)^T``; cell ``C0 T``; positions ``X_i T`` (row vectors), exactly ASE's
``set_positions``. ASE's convergence criterion through a filter is the largest row norm
of the ``N + 3`` force rows (``filter_system_kernel`` writes it to ``fmax``).

Per-system inputs are ``[B]`` arrays; ``mask`` is a ``mat33`` of 0/1 (ASE's ``mask3x3``),
flags and ``kind`` (0 unit, 1 Fréchet) are int32. Only systems with ``stage == stage_index`` (and ``status == 0`` when
``active_only``) are touched.

Example
-------
See :class:`~batchmd.dynamics.FrechetCellFilter`, which shapes the arguments and
launches these kernels, and :mod:`batchmd.kernels.fire` / :mod:`batchmd.kernels.lbfgs`
for the optimizers that consume the rows.
"""

from __future__ import annotations

from typing import Any

import warp as wp

from batchmd.kernels.bookkeeping import EMPTY
from batchmd.kernels.cell import cell_volume, deform_grad, expm3, expm_frechet3, logm3
from batchmd.kernels.fire import fire_update

wp.set_module_options({"enable_backward": False})

__all__ = ["UNIT", "FRECHET", "filter_system_kernel", "filter_transform", "fire_filter_system_kernel",
           "fire_filter_atom_kernel"]

UNIT = 0
FRECHET = 1


@wp.func
def filter_transform(kind: wp.int32, x_cell: Any, factor: Any, mask: Any):
    """``T = I + mask * (F' - I)^T`` from new cell rows ``x_cell`` (new cell = ``C0 T``, positions ``X T``)."""
    eye = wp.identity(n=3, dtype=x_cell.dtype)
    f_new = x_cell / factor
    if kind == 1:
        f_new = expm3(f_new)
    return eye + wp.cw_mul(wp.transpose(f_new - eye), mask)


@wp.kernel
def filter_system_kernel(
    ptr: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    active_only: wp.int32,
    kind: wp.array(dtype=wp.int32),
    cell: wp.array(dtype=Any),
    ref_cell: wp.array(dtype=Any),
    stress: wp.array(dtype=Any),
    pressure: wp.array(dtype=Any),
    hydrostatic: wp.array(dtype=wp.int32),
    constant_volume: wp.array(dtype=wp.int32),
    mask: wp.array(dtype=Any),
    factor: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    deform: wp.array(dtype=Any),
    inv_deform: wp.array(dtype=Any),
    cell_x: wp.array(dtype=Any),
    cell_f: wp.array(dtype=Any),
    fmax: wp.array(dtype=Any),
    write_loop_fmax: wp.int32,
    loop_fmax: wp.array(dtype=Any),
    pbc: wp.array2d(dtype=wp.bool),
    failure: wp.array(dtype=wp.int32),
):
    """Per system: ``F``, ``F^{-1}``, cell rows, cell forces and the filter's ``fmax`` (eV/Å).

    Parameters (``[B]`` unless noted)
    ----------
    ptr : int32 [B+1];  stage, status : int32;  stage_index (-1: every stage), active_only : int32.
    kind : int32  0 = UnitCellFilter, 1 = FrechetCellFilter.
    cell, ref_cell : mat33 (Å);  stress : mat33 (eV/Å^3);  pressure : float (eV/Å^3).
    hydrostatic, constant_volume : int32 flags;  mask : mat33 0/1;  factor : float (cell factor).
    forces : vec3 [N] (eV/Å).
    deform, inv_deform, cell_x, cell_f : mat33, out.
    fmax : float, out  largest norm over the ``N`` atom rows ``F^T f_i`` and the 3 cell-force rows.
    write_loop_fmax : int32;  loop_fmax : float, out  when set, ``fmax`` is also written there (the
        loop's reported ``fmax`` then is ASE's ``fmax`` through the filter, as ASE's optimizer logs).
    pbc : bool [B, 3];  failure : int32, out  a system that is not periodic in all directions, has
        a zero-volume cell or a non-finite stress gets ``fmax = NaN`` (never converged); with
        ``write_loop_fmax`` it is also marked FAILED (``status = 3``, ``failure |= 16``, CELL).
    """
    s = wp.tid()
    if (stage_index >= 0 and stage[s] != stage_index) or (active_only != 0 and status[s] != 0):
        return
    if status[s] == EMPTY:  # padding rows of a padded live batch: no system
        return
    c = cell[s]
    f = deform_grad(ref_cell[s], c)
    f_inv = wp.inverse(f)
    eye = wp.identity(n=3, dtype=c.dtype)
    third = c.dtype(1.0) / c.dtype(3.0)
    virial = -cell_volume(c) * (stress[s] + eye * pressure[s])
    cf = factor[s]
    if kind[s] == 0:
        w = virial * wp.transpose(f_inv)
        if hydrostatic[s] != 0:
            w = eye * (wp.trace(w) * third)
        w = wp.cw_mul(w, mask[s])
        if constant_volume[s] != 0:
            w = w - eye * (wp.trace(w) * third)
        cell_f[s] = w / cf
        cell_x[s] = f * cf
    else:
        log_f = logm3(f)
        w = virial
        if hydrostatic[s] != 0:
            w = eye * (wp.trace(w) * third)
        w = wp.cw_mul(w, mask[s])
        d = expm_frechet3(wp.transpose(log_f), w * wp.transpose(f_inv))
        if constant_volume[s] != 0:
            d = d - eye * (wp.trace(d) * third)
        cell_f[s] = d / cf
        cell_x[s] = log_f * cf
    deform[s] = f
    inv_deform[s] = f_inv
    ft = wp.transpose(f)
    largest = c.dtype(0.0)
    for i in range(ptr[s], ptr[s + 1]):
        largest = wp.max(largest, wp.length(ft * forces[i]))
    rows = cell_f[s]
    for r in range(3):
        largest = wp.max(largest, wp.length(rows[r]))
    valid = pbc[s, 0] and pbc[s, 1] and pbc[s, 2]
    if wp.determinant(ref_cell[s]) == c.dtype(0.0) or wp.determinant(c) == c.dtype(0.0):
        valid = False
    if not wp.isfinite(largest):
        valid = False
    if not valid:
        largest = c.dtype(wp.nan)
    fmax[s] = largest
    if write_loop_fmax != 0:
        loop_fmax[s] = largest
        if not valid:
            status[s] = 3
            failure[s] = failure[s] | 16


@wp.kernel
def fire_filter_system_kernel(
    ptr: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    kind: wp.array(dtype=wp.int32),
    velocities: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    deform: wp.array(dtype=Any),
    cell_x: wp.array(dtype=Any),
    cell_f: wp.array(dtype=Any),
    cell_v: wp.array(dtype=Any),
    ref_cell: wp.array(dtype=Any),
    mask: wp.array(dtype=Any),
    factor: wp.array(dtype=Any),
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
    cell: wp.array(dtype=Any),
    transform: wp.array(dtype=Any),
    coef: wp.array(dtype=Any),
):
    """Per system: FIRE over the ``N + 3`` filter rows; moves the cell rows and the cell.

    Sums ``v·f``, ``|f|^2``, ``|v|^2`` over atom rows (forces ``F^T f_i``) and the cell rows,
    updates ``dt``/``alpha``/``nsteps`` (``fire_update``), moves the
    cell velocity ``cell_v`` and rows, writes the new ``cell`` and ``transform[s] = T``, and
    ``coef[s] = (c_v, c_f, c_x)`` for ``fire_filter_atom_kernel``.
    """
    s = wp.tid()
    if stage[s] != stage_index or status[s] != 0:
        return
    ft = wp.transpose(deform[s])
    vf = dt.dtype(0.0)
    f2 = dt.dtype(0.0)
    v2 = dt.dtype(0.0)
    for i in range(ptr[s], ptr[s + 1]):
        fi = ft * forces[i]
        vi = velocities[i]
        vf = vf + wp.dot(vi, fi)
        f2 = f2 + wp.dot(fi, fi)
        v2 = v2 + wp.dot(vi, vi)
    fc = cell_f[s]
    vc = cell_v[s]
    vf = vf + wp.ddot(vc, fc)
    f2 = f2 + wp.ddot(fc, fc)
    v2 = v2 + wp.ddot(vc, vc)
    k = fire_update(s, vf, f2, v2, dt, alpha, nsteps, maxstep, dtmax, nmin, finc, fdec, astart, fa)
    vc = vc * k[0] + fc * k[1]
    cell_v[s] = vc
    t = filter_transform(kind[s], cell_x[s] + vc * k[2], factor[s], mask[s])
    transform[s] = t
    cell[s] = ref_cell[s] * t
    coef[s] = k


@wp.kernel
def fire_filter_atom_kernel(
    batch_idx: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    coef: wp.array(dtype=Any),
    deform: wp.array(dtype=Any),
    inv_deform: wp.array(dtype=Any),
    transform: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    velocities: wp.array(dtype=Any),
    positions: wp.array(dtype=Any),
):
    """Per atom: ``v = c_v v + c_f F^T f``; ``X = F^{-1} x + c_x v``; ``x = X T`` (row vector)."""
    i = wp.tid()
    s = batch_idx[i]
    if stage[s] != stage_index or status[s] != 0:
        return
    k = coef[s]
    v = k[0] * velocities[i] + k[1] * (wp.transpose(deform[s]) * forces[i])
    velocities[i] = v
    x = inv_deform[s] * positions[i] + k[2] * v
    positions[i] = wp.transpose(transform[s]) * x


def concrete_overloads(kernel, matrices, vectors):
    """Register float32 and float64 overloads of a dtype-generic kernel (for ahead-of-time CUDA builds).

    Array arguments of generic dtype are ``mat33`` when named in ``matrices``, ``vec3`` when
    named in ``vectors``, scalars otherwise (1-D or 2-D as annotated). Returns
    ``{wp.float32: kernel32, wp.float64: kernel64}``.
    """
    out = {}
    for scalar, vec, mat in ((wp.float32, wp.vec3f, wp.mat33f), (wp.float64, wp.vec3d, wp.mat33d)):
        types = {}
        for arg in kernel.adj.args:
            name, ann = arg.label, arg.type
            if not (hasattr(ann, "dtype") and hasattr(ann, "ndim")) or ann.dtype is not Any:
                continue
            dtype = mat if name in matrices else vec if name in vectors else scalar
            types[name] = wp.array(dtype=dtype, ndim=ann.ndim)
        out[scalar] = wp.overload(kernel, types)
    return out


filter_system_kernel_overloads = concrete_overloads(
    filter_system_kernel, {"cell", "ref_cell", "stress", "mask", "deform", "inv_deform", "cell_x", "cell_f"}, {"forces"})
fire_filter_system_kernel_overloads = concrete_overloads(
    fire_filter_system_kernel, {"deform", "cell_x", "cell_f", "cell_v", "ref_cell", "mask", "cell", "transform"},
    {"velocities", "forces", "coef"})
fire_filter_atom_kernel_overloads = concrete_overloads(
    fire_filter_atom_kernel, {"deform", "inv_deform", "transform"}, {"coef", "forces", "velocities", "positions"})
