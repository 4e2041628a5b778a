"""Host-side cell geometry for choosing neighbor-list bin grids (:mod:`batchmd.models.neighbors`).

Perpendicular widths of a cell's periodic directions and the axis along which a
non-periodic direction's extent is measured. Called when a batch's structure changes and
for every newcomer written into a live batch in place, so the fully periodic case avoids
numpy's per-call overhead on 3x3 arrays.

Example
-------
>>> import numpy as np
>>> frame_widths(np.eye(3) * 4.0, np.array([True, True, True]))
array([4., 4., 4.])
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["frame_widths", "frame_axis"]


def frame_widths(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Perpendicular width (Å) of each periodic cell direction; NaN for non-periodic ones.

    Raises ``ValueError`` when a periodic cell vector is zero or the periodic vectors are
    linearly dependent.

    Example
    -------
    >>> frame_widths(np.eye(3) * 4.0, np.array([True, True, False]))
    array([ 4.,  4., nan])
    """
    if bool(pbc[0]) and bool(pbc[1]) and bool(pbc[2]):
        fast = _periodic_widths(cell)
        if fast is not None:
            return fast
    widths = np.full(3, np.nan)
    rows = cell.astype(np.float64).copy()
    per = [d for d in range(3) if pbc[d]]
    for d in per:
        if not np.linalg.norm(rows[d]) > 0.0:
            raise ValueError(f"batchmd: periodic direction {d} has a zero cell vector")
    if len(per) == 3:
        frame = rows
    else:
        frame = np.eye(3)
        if len(per) == 2:
            n = np.cross(rows[per[0]], rows[per[1]])
            frame[per] = rows[per]
            frame[3 - sum(per)] = n / max(np.linalg.norm(n), 1e-300)
        elif len(per) == 1:
            a = rows[per[0]]
            u = np.cross(a, np.eye(3)[np.argmin(np.abs(a))])
            u /= np.linalg.norm(u)
            v = np.cross(a, u)
            v /= np.linalg.norm(v)
            others = [d for d in range(3) if d != per[0]]
            frame[per[0]], frame[others[0]], frame[others[1]] = a, u, v
    det = abs(np.linalg.det(frame))
    scale = np.prod([np.linalg.norm(frame[d]) for d in range(3)])
    if not det > 1e-10 * scale:
        raise ValueError("batchmd: the periodic cell vectors are linearly dependent (degenerate cell)")
    g = np.linalg.inv(frame).T
    for d in per:
        widths[d] = 1.0 / np.linalg.norm(g[d])
    return widths


def _periodic_widths(cell: np.ndarray) -> np.ndarray | None:
    """Widths of a fully periodic cell, ``V / |b x c|`` etc., in plain floats (a 3x3 through numpy
    costs ~20x more per call, and refills size every newcomer). None when a vector is zero or the
    cell is degenerate (the general path raises the errors)."""
    (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = cell.tolist()
    crosses = ((b1 * c2 - b2 * c1, b2 * c0 - b0 * c2, b0 * c1 - b1 * c0),
               (c1 * a2 - c2 * a1, c2 * a0 - c0 * a2, c0 * a1 - c1 * a0),
               (a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0))
    det = abs(a0 * crosses[0][0] + a1 * crosses[0][1] + a2 * crosses[0][2])
    lengths = [math.sqrt(x * x + y * y + z * z) for x, y, z in ((a0, a1, a2), (b0, b1, b2), (c0, c1, c2))]
    if min(lengths) <= 0.0 or not det > 1e-10 * lengths[0] * lengths[1] * lengths[2]:
        return None
    return np.array([det / math.sqrt(x * x + y * y + z * z) for x, y, z in crosses])


def frame_axis(cell: np.ndarray, pbc: np.ndarray, d: int) -> np.ndarray:
    """Unit axis used for non-periodic direction ``d`` (host estimate of the extent)."""
    per = [k for k in range(3) if pbc[k]]
    if len(per) == 2:
        n = np.cross(cell[per[0]], cell[per[1]])
        return n / np.linalg.norm(n)
    return np.eye(3)[d]
