"""LBFGS kernel, step for step as ``ase.optimize.LBFGS`` (without line search).

One step of a system with coordinates ``x`` and forces ``f`` (ASE's ``LBFGS.step`` and
``ase._4.optimize.lbfgs.LBFGSMethod``; vectors run over every row of the system, i.e. its
atoms and, with a cell filter, the 3 cell rows)::

    if iteration > 0:   s = x - x0;  y = f0 - f;  rho = 1 / (y·s);  store (s, y, rho),
                        keeping the last `memory` pairs
    q = -f                                   (the gradient)
    for the stored pairs, newest first:  a_i = rho_i s_i·q;  q -= a_i y_i
    z = q / alpha                            (initial inverse Hessian I/alpha, ASE's alpha = 70)
    for the stored pairs, oldest first:  b = rho_i y_i·z;  z += s_i (a_i - b)
    p = -z;  iteration += 1
    longest = max row norm of p;  if longest >= maxstep: p *= maxstep / longest
    x0 = x;  f0 = f;  x += damping p

No determinant, no line search: the first step is ``f / alpha`` (clipped to ``maxstep``).

One thread per system (``lbfgs_system_kernel``) walks its atoms in order for every
sum, so a system's numbers do not depend on the rest of the batch (deterministic, batch
invariant) and nothing synchronises with the host. The per-atom history is stored in atom
fields of shape ``[N, M, 3]`` (``M``: the largest memory), so it follows each system through
refills; the cell rows' history in ``[B, M, 3, 3]``. A ring buffer: pair ``k`` (0-based, in
storage order) sits in slot ``k mod memory``.

With a cell filter (``use_cell = 1``) the atom rows are ``X_i = F^{-1} x_i`` with forces
``F^T f_i`` and the cell rows and forces come from
``filter_system_kernel``; the new rows are written back as
ASE's filters do (``filter_transform``).

Units: positions Å, forces eV/Å, ``maxstep`` Å, ``alpha`` eV/Å^2.
"""

from __future__ import annotations

from typing import Any

import warp as wp

from batchmd.kernels.cell_filter import concrete_overloads, filter_transform

wp.set_module_options({"enable_backward": False})

__all__ = ["lbfgs_system_kernel"]


@wp.kernel
def lbfgs_system_kernel(
    ptr: wp.array(dtype=wp.int32),
    stage: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    stage_index: wp.int32,
    use_cell: wp.int32,
    kind: wp.array(dtype=wp.int32),
    deform: wp.array(dtype=Any),
    inv_deform: wp.array(dtype=Any),
    cell_x: wp.array(dtype=Any),
    cell_f: wp.array(dtype=Any),
    ref_cell: wp.array(dtype=Any),
    mask: wp.array(dtype=Any),
    factor: wp.array(dtype=Any),
    cell: wp.array(dtype=Any),
    positions: wp.array(dtype=Any),
    forces: wp.array(dtype=Any),
    x0: wp.array(dtype=Any),
    f0: wp.array(dtype=Any),
    s_hist: wp.array2d(dtype=Any),
    y_hist: wp.array2d(dtype=Any),
    cell_x0: wp.array(dtype=Any),
    cell_f0: wp.array(dtype=Any),
    cell_s: wp.array2d(dtype=Any),
    cell_y: wp.array2d(dtype=Any),
    rho: wp.array2d(dtype=Any),
    a_buf: wp.array2d(dtype=Any),
    iteration: wp.array(dtype=wp.int32),
    memory: wp.array(dtype=wp.int32),
    maxstep: wp.array(dtype=Any),
    damping: wp.array(dtype=Any),
    alpha: wp.array(dtype=Any),
    direction: wp.array(dtype=Any),
):
    """One LBFGS step of system ``s`` (see the module docstring); moves positions (and the cell).

    Parameters (``[B]`` unless noted)
    ----------
    ptr : int32 [B+1];  stage, status : int32;  stage_index, use_cell : int32 scalars.
    kind, deform, inv_deform, cell_x, cell_f, ref_cell, mask, factor : the cell filter's
        per-system data (ignored when ``use_cell == 0``).
    cell : mat33, in/out (Å);  positions : vec3 [N], in/out (Å);  forces : vec3 [N] (eV/Å).
    x0, f0 : vec3 [N], in/out  rows and forces at the previous step.
    s_hist, y_hist : vec3 [N, M], in/out  stored pairs of the atom rows.
    cell_x0, cell_f0 : mat33, in/out;  cell_s, cell_y : mat33 [B, M], in/out  the same for cell rows.
    rho : float [B, M], in/out;  a_buf : float [B, M], scratch;  iteration : int32, in/out.
    memory : int32 (<= M);  maxstep (Å), damping, alpha (eV/Å^2) : float.
    direction : vec3 [N], scratch.
    """
    s = wp.tid()
    if stage[s] != stage_index or status[s] != 0:
        return
    start = ptr[s]
    end = ptr[s + 1]
    zero = maxstep.dtype(0.0)
    one = maxstep.dtype(1.0)
    eye = wp.identity(n=3, dtype=maxstep.dtype)
    fmat = eye
    finv = eye
    xc = eye * zero
    fc = eye * zero
    if use_cell != 0:
        fmat = deform[s]
        finv = inv_deform[s]
        xc = cell_x[s]
        fc = cell_f[s]
    ft = wp.transpose(fmat)
    it = iteration[s]
    m = memory[s]
    # ---- update the history with the last step
    if it > 0:
        slot = (it - 1) % m
        ys = zero
        for i in range(start, end):
            x = finv * positions[i]
            fi = ft * forces[i]
            sv = x - x0[i]
            yv = f0[i] - fi
            s_hist[i, slot] = sv
            y_hist[i, slot] = yv
            ys = ys + wp.dot(yv, sv)
        if use_cell != 0:
            sc = xc - cell_x0[s]
            yc = cell_f0[s] - fc
            cell_s[s, slot] = sc
            cell_y[s, slot] = yc
            ys = ys + wp.ddot(yc, sc)
        rho[s, slot] = one / ys
    loopmax = wp.min(m, it)
    # ---- two-loop recursion: q = gradient
    for i in range(start, end):
        direction[i] = -(ft * forces[i])
    qc = -fc
    for jj in range(loopmax):
        j = loopmax - 1 - jj
        slot = (it - loopmax + j) % m
        d = zero
        for i in range(start, end):
            d = d + wp.dot(s_hist[i, slot], direction[i])
        if use_cell != 0:
            d = d + wp.ddot(cell_s[s, slot], qc)
        a = rho[s, slot] * d
        a_buf[s, j] = a
        for i in range(start, end):
            direction[i] = direction[i] - a * y_hist[i, slot]
        if use_cell != 0:
            qc = qc - a * cell_y[s, slot]
    inv_alpha = one / alpha[s]
    for i in range(start, end):
        direction[i] = direction[i] * inv_alpha
    qc = qc * inv_alpha
    for j in range(loopmax):
        slot = (it - loopmax + j) % m
        d = zero
        for i in range(start, end):
            d = d + wp.dot(y_hist[i, slot], direction[i])
        if use_cell != 0:
            d = d + wp.ddot(cell_y[s, slot], qc)
        c = a_buf[s, j] - rho[s, slot] * d
        for i in range(start, end):
            direction[i] = direction[i] + c * s_hist[i, slot]
        if use_cell != 0:
            qc = qc + c * cell_s[s, slot]
    iteration[s] = it + 1
    # ---- step p = -z, clipped so that its longest row is maxstep
    longest = zero
    for i in range(start, end):
        longest = wp.max(longest, wp.length(direction[i]))
    if use_cell != 0:
        for r in range(3):
            longest = wp.max(longest, wp.length(qc[r]))
    scale = -damping[s]
    if longest >= maxstep[s]:
        scale = scale * (maxstep[s] / longest)
    t = eye
    if use_cell != 0:
        cell_x0[s] = xc
        cell_f0[s] = fc
        t = filter_transform(kind[s], xc + qc * scale, factor[s], mask[s])
        cell[s] = ref_cell[s] * t
    tt = wp.transpose(t)
    for i in range(start, end):
        x = finv * positions[i]
        x0[i] = x
        f0[i] = ft * forces[i]
        x = x + direction[i] * scale
        if use_cell != 0:
            x = tt * x
        positions[i] = x


#: Concrete float32 / float64 overloads (ahead-of-time CUDA builds compile these).
lbfgs_system_kernel_overloads = concrete_overloads(
    lbfgs_system_kernel,
    {"deform", "inv_deform", "cell_x", "cell_f", "ref_cell", "mask", "cell", "cell_x0", "cell_f0", "cell_s", "cell_y"},
    {"positions", "forces", "x0", "f0", "direction", "s_hist", "y_hist"})
