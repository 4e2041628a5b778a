"""Shared fixtures: small ASE structures (molecules and periodic crystals)."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator


@pytest.fixture
def water() -> Atoms:
    """H2O molecule, no cell, no pbc."""
    return molecule("H2O")


@pytest.fixture
def copper() -> Atoms:
    """Cubic fcc Cu cell (4 atoms), fully periodic."""
    return bulk("Cu", "fcc", a=3.6, cubic=True)


@pytest.fixture
def labelled_structures() -> list[Atoms]:
    """Mixed-size structures with momenta, single-point results and info entries."""
    rng = np.random.default_rng(0)
    structures = [molecule("H2O"), bulk("Cu", "fcc", a=3.6, cubic=True), molecule("CH4"),
                  bulk("NaCl", "rocksalt", a=5.64).repeat((1, 1, 2))]
    for i, atoms in enumerate(structures):
        atoms.rattle(0.01, seed=i)
        atoms.set_momenta(rng.normal(size=(len(atoms), 3)))
        atoms.info.update({"name": f"s{i}", "step": i, "temperature": 300.0 + i, "relaxed": i % 2 == 0})
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(len(atoms), 3)),
                                           stress=rng.normal(size=6))
    return structures
