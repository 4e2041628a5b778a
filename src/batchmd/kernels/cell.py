"""Cell algebra shared by everything that changes a cell: cell filters, barostats (Warp functions).

Conventions (ASE's): a cell is a ``mat33`` whose *rows* are the lattice vectors ``a, b, c``
(Å); positions are row vectors. A homogeneous deformation with *deformation gradient*
``F`` maps every lattice vector and position ``x -> F x`` (column form), i.e. ``cell ->
cell F^T`` and ``positions -> positions F^T`` in ASE's row form. Relative to a reference
cell ``C0`` the deformation gradient of ``C`` is ``F = (C0^{-1} C)^T``
(``ase.filters.UnitCellFilter.deform_grad``: ``np.linalg.solve(orig_cell, cell).T``).

Functions (``@wp.func``, dtype-generic over ``mat33f``/``mat33d``)
-------------------------------------------------------------------
``cell_volume``        ``|det C|`` (Å^3), ASE's ``cell.volume``.
``deform_grad``        ``F = (C0^{-1} C)^T``.
``expm3``              matrix exponential (scaling and squaring of the Taylor series).
``expm_frechet3``      Fréchet derivative ``L_exp(A, E)`` of the exponential at ``A`` in
                           direction ``E`` (Taylor series of the derivative with the same
                           scaling and squaring; Higham, *Functions of Matrices*, SIAM 2008, ch. 10).
``logm3``              principal matrix logarithm (inverse scaling and squaring:
                           Denman-Beavers square roots until ``|X - I|_F <= 0.25``, then the
                           Gregory series ``log X = 2 atanh((X - I)(X + I)^{-1})``; Higham ch. 11).

All three reach float64 round-off (~1e-15 relative) for the matrices cell relaxations and
barostats meet (``|A|_F`` up to a few units); ``tests/test_cell_filter.py`` checks them
against ``scipy.linalg.expm``, ``expm_frechet`` and ``logm``.

Example
-------
>>> import numpy as np, warp as wp
>>> from batchmd.kernels.cell import matrix_function_check
>>> a = np.array([[0.1, 0.02, 0.0], [0.0, -0.05, 0.01], [0.03, 0.0, 0.02]])
>>> exp_a, log_exp_a, _ = matrix_function_check(a, np.eye(3))
>>> bool(np.allclose(log_exp_a, a, atol=1e-14))
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import warp as wp

wp.set_module_options({"enable_backward": False})

__all__ = ["cell_volume", "deform_grad", "expm3", "expm_frechet3", "logm3", "matrix_function_check"]

# Taylor terms of exp on a matrix scaled to |A|_F <= 1/2: 0.5^19 / 19! ~ 1e-23.
_EXP_TERMS = 19
# Odd terms of the Gregory series for |Z| <= 0.25 / (2 - 0.25) ~ 0.14: 0.14^41 / 41 ~ 1e-37.
_LOG_TERMS = 20


@wp.func
def cell_volume(c: Any):
    """Cell volume ``|det c|`` (Å^3) of a cell with lattice vectors as rows."""
    return wp.abs(wp.determinant(c))


@wp.func
def deform_grad(ref: Any, c: Any):
    """Deformation gradient ``F = (ref^{-1} c)^T`` taking cell ``ref`` to cell ``c`` (rows = vectors)."""
    return wp.transpose(wp.inverse(ref) * c)


@wp.func
def expm3(a: Any):
    """Matrix exponential of a 3x3 matrix (scaling and squaring, Taylor series)."""
    one = a.dtype(1.0)
    half = a.dtype(0.5)
    norm = wp.sqrt(wp.ddot(a, a))
    s = int(0)
    x = a
    while norm > half:
        norm = norm * half
        x = x * half
        s = s + 1
    eye = wp.identity(n=3, dtype=a.dtype)
    term = eye
    result = eye
    for k in range(1, _EXP_TERMS + 1):
        term = term * x * (one / a.dtype(k))
        result = result + term
    for _ in range(s):
        result = result * result
    return result


@wp.func
def expm_frechet3(a: Any, e: Any):
    """Fréchet derivative of ``expm`` at ``a`` in direction ``e`` (3x3).

    ``sum_ij expm_frechet3(a, e)_ij g_ij`` is the derivative of ``<expm(a), g>``; its adjoint
    is ``expm_frechet3(a^T, g)`` (what a gradient through ``expm`` needs).
    """
    one = a.dtype(1.0)
    half = a.dtype(0.5)
    norm = wp.sqrt(wp.ddot(a, a))
    x = a
    d = e
    s = int(0)
    while norm > half:
        norm = norm * half
        x = x * half
        d = d * half
        s = s + 1
    eye = wp.identity(n=3, dtype=a.dtype)
    term = eye
    dterm = eye * a.dtype(0.0)
    result = eye
    dresult = dterm
    for k in range(1, _EXP_TERMS + 1):
        inv_k = one / a.dtype(k)
        # T_k = T_{k-1} X / k  ->  dT_k = (dT_{k-1} X + T_{k-1} dX) / k
        dterm = (dterm * x + term * d) * inv_k
        term = term * x * inv_k
        result = result + term
        dresult = dresult + dterm
    for _ in range(s):
        dresult = result * dresult + dresult * result
        result = result * result
    return dresult


@wp.func
def logm3(a: Any):
    """Principal logarithm of a 3x3 matrix with no eigenvalue on the closed negative real axis."""
    one = a.dtype(1.0)
    half = a.dtype(0.5)
    eye = wp.identity(n=3, dtype=a.dtype)
    x = a
    k = int(0)
    diff = x - eye
    while wp.sqrt(wp.ddot(diff, diff)) > a.dtype(0.25) and k < 60:
        # Denman-Beavers: Y -> sqrt(X), Z -> sqrt(X)^{-1}
        y = x
        z = eye
        for _ in range(100):
            y_next = (y + wp.inverse(z)) * half
            z = (z + wp.inverse(y)) * half
            step = y_next - y
            y = y_next
            if wp.sqrt(wp.ddot(step, step)) <= a.dtype(1e-15) * wp.sqrt(wp.ddot(y, y)):
                break
        x = y
        k = k + 1
        diff = x - eye
    zm = (x - eye) * wp.inverse(x + eye)
    z2 = zm * zm
    power = zm
    result = zm
    for j in range(1, _LOG_TERMS):
        power = power * z2
        result = result + power * (one / a.dtype(2 * j + 1))
    scale = a.dtype(2.0)
    for _ in range(k):
        scale = scale * a.dtype(2.0)
    return result * scale


@wp.kernel
def _matrix_function_check_kernel(a: wp.array(dtype=wp.mat33d), e: wp.array(dtype=wp.mat33d),
                                  out: wp.array(dtype=wp.mat33d)):
    out[0] = expm3(a[0])
    out[1] = logm3(out[0])
    out[2] = expm_frechet3(a[0], e[0])


def matrix_function_check(a, e):
    """``(expm(a), logm(expm(a)), L_exp(a, e))`` in float64 on the CPU (numpy in, numpy out; for tests).

    Parameters
    ----------
    a, e : array_like, shape (3, 3)
    """
    from batchmd.runtime import init_warp

    init_warp()
    wa = wp.array(np.asarray(a, dtype=np.float64).reshape(1, 3, 3), dtype=wp.mat33d, device="cpu")
    we = wp.array(np.asarray(e, dtype=np.float64).reshape(1, 3, 3), dtype=wp.mat33d, device="cpu")
    out = wp.zeros(3, dtype=wp.mat33d, device="cpu")
    wp.launch(_matrix_function_check_kernel, 1, [wa, we, out], device="cpu")
    res = out.numpy()
    return res[0], res[1], res[2]
