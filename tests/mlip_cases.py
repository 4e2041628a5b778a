"""Shared structures and reference calculators for the MLIP tests (tests/test_mlip_*.py)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.spacegroup import crystal


def quartz() -> Atoms:
    """alpha-quartz SiO2 (9 atoms), P3_221, from ase.spacegroup.crystal."""
    return crystal(["Si", "O"], basis=[(0.4697, 0.0, 0.0), (0.4135, 0.2669, 0.1191)], spacegroup=154,
                   cellpar=[4.916, 4.916, 5.405, 90, 90, 120])


def mixed_structures(seed: int = 0, rattle: float = 0.05) -> list[Atoms]:
    """Si diamond, NaCl rocksalt, quartz SiO2, a Cu fcc supercell, H2O in vacuum, a Cu(111) slab (2-9 atoms)."""
    water = molecule("H2O")
    water.center(vacuum=4.0)
    water.pbc = False
    frames = [bulk("Si", "diamond", a=5.43), bulk("NaCl", "rocksalt", a=5.64), quartz(),
              bulk("Cu", "fcc", a=3.61).repeat((2, 2, 1)), water, fcc111("Cu", size=(2, 2, 2), vacuum=5.0)]
    rng = np.random.default_rng(seed)
    for atoms in frames:
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    return frames


def compare_with_calculator(out, batch, frames, calc, stress_for=lambda atoms: True):
    """Max |difference| of energy (eV), forces (eV/Å) and stress (eV/Å^3) per system vs an ASE calculator."""
    ptr = batch.ptr.tolist()
    worst = {"energy": 0.0, "forces": 0.0, "stress": 0.0}
    for s, atoms in enumerate(frames):
        ref = atoms.copy()
        ref.calc = calc
        worst["energy"] = max(worst["energy"], abs(ref.get_potential_energy() - float(out["energy"][s, 0])))
        forces = out["forces"][ptr[s]:ptr[s + 1]].double().numpy()
        worst["forces"] = max(worst["forces"], float(np.abs(ref.get_forces() - forces).max()))
        if stress_for(atoms):
            stress = out["stress"][s].double().numpy()
            worst["stress"] = max(worst["stress"], float(np.abs(ref.get_stress(voigt=False) - stress).max()))
    return worst


@functools.lru_cache(maxsize=None)
def sevennet_model():
    """SevenNet-0 loaded once per test process (loading and TorchScript warm-up take seconds)."""
    from batchmd.models import load_model

    return load_model("sevennet-0")


@functools.lru_cache(maxsize=None)
def sevennet_reference_calculator(dtype: torch.dtype):
    """SevenNet-0's own ASE calculator (``sevenn.calculator.SevenNetCalculator``).

    float32: as shipped. float64: the same calculator and code path (its graph built by
    ``sevenn.train.dataload.unlabeled_atoms_to_graph``, its own force/stress head), with the
    graph's arrays converted to float64 instead of sevenn's float32 and the network in float64.
    """
    from batchmd.models.mlip.sevennet import follow_dtype, import_sevenn

    keys, _ = import_sevenn()
    from ase.calculators.calculator import Calculator
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.calculator import SevenNetCalculator
    from sevenn.train.dataload import unlabeled_atoms_to_graph

    class Float64SevenNetCalculator(SevenNetCalculator):
        def calculate(self, atoms=None, properties=None, system_changes=None):
            Calculator.calculate(self, atoms, properties, system_changes)
            dct = unlabeled_atoms_to_graph(atoms, self.cutoff)
            for key, value in dct.items():
                if isinstance(value, np.ndarray):
                    dct[key] = torch.from_numpy(np.array(value, dtype=np.float64 if value.dtype.kind == "f" else np.int64))
            out = self.model(AtomGraphData(**dct))
            energy = float(out[keys.PRED_TOTAL_ENERGY].detach())
            self.results = {"energy": energy, "free_energy": energy,
                            "forces": out[keys.PRED_FORCE].detach().numpy(),
                            "stress": (-out[keys.PRED_STRESS]).detach().numpy()[[0, 1, 2, 4, 5, 3]]}

    if dtype == torch.float32:
        return SevenNetCalculator("7net-0", device="cpu")
    calc = Float64SevenNetCalculator("7net-0", device="cpu")
    calc.model.double()
    follow_dtype(calc.model)
    return calc


@functools.lru_cache(maxsize=None)
def small_mace_file(tmpdir: str) -> str:
    """A small random-weight MACE saved as a ``.model`` file (float64), as users' files are."""
    import os

    from batchmd.models.mlip.mace import random_mace

    path = os.path.join(tmpdir, "small_mace.model")
    torch.save(random_mace(seed=0), path)
    return path
