"""MatterSim (random M3GNet) through batchmd equals MatterSimCalculator (float32 network).

Runs in the e3nn >= 0.6 environment (``.ci/run-e3nn6``); skipped where ``mattersim`` is absent.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("mattersim")

from mlip_cases import compare_with_calculator, mixed_structures  # noqa: E402

from batchmd.data import Batch  # noqa: E402
from batchmd.models import load_model  # noqa: E402
from batchmd.models.mlip.mattersim import MatterSimModel, random_mattersim, three_body_pairs  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    potential = random_mattersim()
    return MatterSimModel(potential.model), copy.deepcopy(potential)


def _calculator(potential):
    from mattersim.forcefield.potential import MatterSimCalculator

    return MatterSimCalculator(potential=potential, device="cpu")


def test_three_body_pairs_are_every_ordered_pair_per_centre():
    center = torch.tensor([0, 0, 0, 1, 1, 2])
    valid = torch.tensor([True, True, True, True, False, True])
    pairs, per_bond = three_body_pairs(center, valid, 6)
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 0], [1, 2], [2, 0], [2, 1]]
    assert per_bond.tolist() == [2, 2, 2, 0, 0, 0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_equals_mattersim_calculator(pair, dtype):
    model, reference = pair
    frames = [atoms for atoms in mixed_structures() if atoms.pbc.all()]  # MatterSim boxes molecules itself
    batch = Batch.from_ase(frames, dtype=dtype)
    out = model(batch)
    assert out["forces"].dtype == dtype
    worst = compare_with_calculator(out, batch, frames, _calculator(reference))
    # float32 network on both sides: round-off of ~1 eV energies
    assert worst["energy"] < 5e-6 and worst["forces"] < 5e-6 and worst["stress"] < 1e-6, worst


def test_batch_invariance_chunks_and_errors(pair, tmp_path):
    model, _ = pair
    frames = mixed_structures(seed=2)
    together = model(Batch.from_ase(frames, dtype=torch.float64))
    ptr = Batch.from_ase(frames).ptr.tolist()
    for s in range(len(frames)):
        alone = model(Batch.from_ase([frames[s]], dtype=torch.float64))
        assert abs(float(alone["energy"][0, 0] - together["energy"][s, 0])) < 1e-5
        assert torch.allclose(alone["forces"], together["forces"][ptr[s]:ptr[s + 1]], atol=1e-5)
    model.chunk_atoms = 6
    try:
        chunked = model(Batch.from_ase(frames, dtype=torch.float64))
    finally:
        model.chunk_atoms = None
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(chunked[key], together[key], atol=1e-5), key
    with pytest.raises(FileNotFoundError):
        load_model(f"mattersim:{tmp_path / 'missing.pth'}")

