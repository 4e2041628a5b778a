"""A model exported to metatomic, through batchmd, equals metatomic's own ASE calculator.

No ``from __future__ import annotations`` here: metatomic checks the real annotations of forward().
"""


from typing import Dict, List, Optional

import numpy as np
import pytest
import torch

mta = pytest.importorskip("metatomic.torch")
mts = pytest.importorskip("metatensor.torch")
metatomic_ase = pytest.importorskip("metatomic_ase")

from mlip_cases import compare_with_calculator, mixed_structures  # noqa: E402

from batchmd.data import Batch  # noqa: E402
from batchmd.models import UnsupportedSpeciesError, load_model  # noqa: E402

Labels, TensorBlock, TensorMap = mts.Labels, mts.TensorBlock, mts.TensorMap
System, NeighborListOptions, ModelOutput = mta.System, mta.NeighborListOptions, mta.ModelOutput


class SmoothPairs(torch.nn.Module):
    """A Lennard-Jones-like pair energy with a cosine switch to zero at the cutoff (half list)."""

    def __init__(self, cutoff: float, full_list: bool):
        super().__init__()
        self.cutoff = cutoff
        self.options = NeighborListOptions(cutoff=cutoff, full_list=full_list, strict=True)
        self.weight = 0.5 if full_list else 1.0

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [self.options]

    def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],
                selected_atoms: Optional[Labels] = None) -> Dict[str, TensorMap]:
        energies: List[torch.Tensor] = []
        for system in systems:
            d = system.get_neighbor_list(self.options).values.reshape(-1, 3)
            r = torch.linalg.vector_norm(d, dim=1)
            s6 = (2.3 / r) ** 6
            switch = 0.5 * (torch.cos(torch.pi * r / self.cutoff) + 1.0)
            energies.append(self.weight * (0.05 * (s6 * s6 - s6) * switch).sum() - 0.1 * len(system))
        values = torch.stack(energies).reshape(-1, 1)
        block = TensorBlock(values=values, samples=Labels("system", torch.arange(len(systems)).reshape(-1, 1)),
                            components=[], properties=Labels("energy", torch.tensor([[0]])))
        return {"energy": TensorMap(Labels("_", torch.tensor([[0]])), [block])}


def export(path, full_list: bool, types=(1, 8, 11, 14, 17, 29)) -> str:
    caps = mta.ModelCapabilities(
        outputs={"energy": ModelOutput(quantity="energy", unit="eV", per_atom=False)},
        atomic_types=list(types), interaction_range=4.0, length_unit="angstrom",
        supported_devices=["cpu"], dtype="float64")
    model = mta.AtomisticModel(SmoothPairs(4.0, full_list).eval(), mta.ModelMetadata(), caps)
    model.save(str(path))
    return str(path)


@pytest.mark.parametrize("full_list", [False, True], ids=["half", "full"])
def test_equals_metatomic_ase_calculator(tmp_path, full_list):
    path = export(tmp_path / "pairs.pt", full_list)
    model = load_model(f"metatomic:{path}")
    frames = mixed_structures()
    batch = Batch.from_ase(frames, dtype=torch.float64)
    out = model(batch)
    calc = metatomic_ase.MetatomicCalculator(path, device="cpu")
    worst = compare_with_calculator(out, batch, frames, calc, stress_for=lambda atoms: atoms.pbc.all())
    assert worst["energy"] < 1e-10 and worst["forces"] < 1e-10 and worst["stress"] < 1e-10, worst
    # float32 batches: the model still runs in its declared float64, results come back in float32
    out32 = model(Batch.from_ase(frames, dtype=torch.float32))
    assert out32["energy"].dtype == torch.float32
    assert np.allclose(out32["energy"].double().numpy(), out["energy"].numpy(), atol=1e-4)


def test_species_and_missing_file(tmp_path):
    path = export(tmp_path / "pairs.pt", False, types=(14,))
    model = load_model(f"metatomic:{path}")
    assert model.supported_numbers == frozenset({14}) and model.cutoff == 4.0
    with pytest.raises(UnsupportedSpeciesError, match="Na Cl"):
        model(Batch.from_ase([mixed_structures()[1]], dtype=torch.float64))
    with pytest.raises(FileNotFoundError):
        load_model(f"metatomic:{tmp_path / 'missing.pt'}")
