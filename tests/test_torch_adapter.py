"""TorchModelAdapter: autograd forces and strain-derivative stress against ASE's LennardJones."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ

from batchmd.data import Batch
from batchmd.models.torch_adapter import TorchModelAdapter

SIGMA, EPS, RC = 3.405, 0.0104, 7.0


class TorchPairLJ(torch.nn.Module):
    """Shifted LJ over all pairs and the 27 nearest images (cells wider than 2 rc only)."""

    def forward(self, batch):
        energies = []
        shifts = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=batch.dtype)
        e_cut = 4 * EPS * ((SIGMA / RC) ** 12 - (SIGMA / RC) ** 6)
        for s in range(batch.num_graphs):
            lo, hi = int(batch.ptr[s]), int(batch.ptr[s + 1])
            x = batch.positions[lo:hi]
            images = shifts @ batch.cell[s]
            d = x[None, :, None, :] + images[None, None, :, :] - x[:, None, None, :]
            r2 = (d * d).sum(-1)
            n = hi - lo
            self_mask = torch.eye(n, dtype=torch.bool)[:, :, None] & (shifts.abs().sum(1) == 0)[None, None, :]
            r2 = torch.where(self_mask, torch.full_like(r2, 1e6), r2)
            inside = r2 < RC * RC
            sr6 = (SIGMA * SIGMA / r2) ** 3
            pair = torch.where(inside, 4 * EPS * (sr6 * sr6 - sr6) - e_cut, torch.zeros_like(r2))
            energies.append(0.5 * pair.sum())
        return torch.stack(energies)


@pytest.mark.parametrize("strain", [0.0, 0.02])
def test_adapter_matches_ase_lj(strain):
    frames = []
    for reps, seed in (((3, 3, 3), 0), ((3, 4, 3), 1)):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(reps)
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + strain * np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]])), scale_atoms=True)
        atoms.rattle(0.05, seed=seed)
        frames.append(atoms)
    batch = Batch.from_ase(frames, dtype=torch.float64)
    model = TorchModelAdapter(TorchPairLJ(), cutoff=RC, compute_stress=True)
    out = model(batch)
    for k, atoms in enumerate(frames):
        atoms.calc = AseLJ(sigma=SIGMA, epsilon=EPS, rc=RC, smooth=False)
        lo, hi = int(batch.ptr[k]), int(batch.ptr[k + 1])
        assert out["energy"][k, 0].item() == pytest.approx(atoms.get_potential_energy(), rel=1e-10)
        np.testing.assert_allclose(out["forces"][lo:hi].numpy(), atoms.get_forces(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["stress"][k].numpy(), atoms.get_stress(voigt=False), rtol=0, atol=1e-10)


def test_adapter_rejects_bad_energy_shape():
    class Wrong(torch.nn.Module):
        def forward(self, batch):
            return batch.positions.sum(dim=1)  # per atom, not per system

    batch = Batch.from_ase([bulk("Ar", "fcc", a=5.26, cubic=True)], dtype=torch.float64)
    with pytest.raises(ValueError, match="one per system"):
        TorchModelAdapter(Wrong())(batch)
    with pytest.raises(TypeError):
        TorchModelAdapter(lambda b: b)
