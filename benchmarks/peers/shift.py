"""ASE's LennardJones(smooth=False) shifts every pair energy to zero at the cutoff; peers
whose LJ is unshifted get the same shift added here (outside any timed region)."""

from __future__ import annotations

import numpy as np

from benchmarks import workloads as wl


def pair_shift() -> float:
    """V(rc), eV: the unshifted LJ pair energy at the cutoff (negative)."""
    sr6 = (wl.SIGMA / wl.CUTOFF) ** 6
    return 4.0 * wl.EPSILON * (sr6 * sr6 - sr6)


def n_pairs_within_cutoff(atoms, positions) -> int:
    from ase.neighborlist import neighbor_list

    a = atoms.copy()
    a.positions = np.asarray(positions, dtype=float)
    d = neighbor_list("d", a, wl.CUTOFF)
    return int(np.count_nonzero(d < wl.CUTOFF)) // 2  # each pair appears twice


def shift_energy(atoms, positions, unshifted_energy: float) -> float:
    """Shifted (ASE-convention) energy from an unshifted one at ``positions``."""
    return float(unshifted_energy) - n_pairs_within_cutoff(atoms, positions) * pair_shift()
