"""Lennard-Jones argon test systems shared by the Nosé-Hoover and MTK NPT tests.

Cells that are strained, triclinic and smaller than twice the cutoff (so atoms see several
images of their neighbors and of themselves), with Maxwell-Boltzmann velocities.
"""

from __future__ import annotations

import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ

from batchmd.data import Batch
from batchmd.models.lj import LennardJones

SIGMA, EPSILON, CUTOFF = 3.405, 0.0104, 8.5125  # argon; cutoff 2.5 sigma


def ase_lj():
    """ASE's Lennard-Jones with the parameters of :func:`batchmd_lj` (shifted, not smoothed)."""
    return AseLJ(sigma=SIGMA, epsilon=EPSILON, rc=CUTOFF, smooth=False)


def batchmd_lj(**kw):
    return LennardJones(sigma=SIGMA, epsilon=EPSILON, cutoff=CUTOFF, **kw)


def maxwell_boltzmann(atoms, temperature, seed):
    """Gaussian velocities with variance kT/m per component (Å / ASE time unit)."""
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(units.kB * temperature / atoms.get_masses())[:, None]
    atoms.set_velocities(rng.normal(size=(len(atoms), 3)) * sigma)


def argon(kind: str, seed: int, temperature: float = 60.0):
    """One small periodic argon system.

    ``"cubic"``: 2x2x2 conventional fcc cells (32 atoms, 10.6 Å edges < 2 x 8.51 Å),
    sheared and stretched; ``"primitive"``: 2x2x3 primitive fcc cells (12 atoms, a
    60-degree triclinic cell ~7.5 Å across), strained; ``"dense"``: the cubic cell
    compressed by 4% (positive pressure, so a barostat expands it).
    """
    if kind == "primitive":
        atoms = bulk("Ar", "fcc", a=5.3) * (2, 2, 3)
        strain = np.array([[1.03, 0.02, -0.01], [0.0, 0.97, 0.04], [0.02, 0.0, 1.01]])
    else:
        atoms = bulk("Ar", "fcc", a=5.3, cubic=True) * (2, 2, 2)
        strain = np.array([[1.02, 0.05, 0.0], [0.0, 0.98, 0.06], [0.03, 0.0, 1.0]])
        if kind == "dense":
            strain = strain * 0.96
    atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    maxwell_boltzmann(atoms, temperature, seed)
    return atoms


def to_batch(systems, dtype=torch.float64, ids=None):
    batch = Batch.from_ase(list(systems), dtype=dtype)
    if ids is not None:
        batch.set_field("system_id", torch.tensor(ids, dtype=torch.int64).reshape(-1, 1), "system")
    return batch


def system_rows(batch, k):
    ptr = batch.ptr.tolist()
    return slice(ptr[k], ptr[k + 1])


def rattled_argon(count: int, seed: int = 0) -> list:
    """``count`` small rattled fcc argon cells of 4, 8 or 12 atoms (a = 5.26-5.30 Å), for CLI and store tests."""
    frames = []
    for i in range(count):
        atoms = bulk("Ar", "fcc", a=5.26 + 0.02 * (i % 3), cubic=True).repeat((1, 1, 1 + i % 3))
        atoms.rattle(0.08, seed=seed + i)
        frames.append(atoms)
    return frames
