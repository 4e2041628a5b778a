"""SevenNet-0 through batchmd equals SevenNet's own ASE calculator; batched, relaxed, in pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sevenn")

from ase.build import bulk  # noqa: E402
from ase.optimize import FIRE as AseFIRE  # noqa: E402
from mlip_cases import (  # noqa: E402
    compare_with_calculator,
    mixed_structures,
    sevennet_model,
    sevennet_reference_calculator,
)

from batchmd.data import Batch  # noqa: E402
from batchmd.models import UnsupportedSpeciesError  # noqa: E402

TOL = {torch.float64: (1e-6, 1e-5, 1e-6), torch.float32: (5e-5, 2e-4, 2e-5)}  # energy eV, forces eV/Å, stress eV/Å^3


@pytest.fixture(scope="module")
def sevennet():
    return sevennet_model()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_equals_own_ase_calculator(sevennet, dtype):
    frames = mixed_structures()
    batch = Batch.from_ase(frames, dtype=dtype)
    out = sevennet(batch)
    assert out["energy"].dtype == dtype and out["forces"].shape == (batch.num_nodes, 3)
    worst = compare_with_calculator(out, batch, frames, sevennet_reference_calculator(dtype))
    e_tol, f_tol, s_tol = TOL[dtype]
    assert worst["energy"] < e_tol and worst["forces"] < f_tol and worst["stress"] < s_tol, worst


def test_batch_invariance_and_chunks(sevennet):
    frames = mixed_structures(seed=1)
    batch = Batch.from_ase(frames, dtype=torch.float64)
    together = sevennet(batch)
    ptr = batch.ptr.tolist()
    for s in (2, 5):
        alone = sevennet(Batch.from_ase([frames[s]], dtype=torch.float64))
        assert abs(float(alone["energy"][0, 0] - together["energy"][s, 0])) < 1e-10
        assert torch.allclose(alone["forces"], together["forces"][ptr[s]:ptr[s + 1]], atol=1e-10)
    sevennet.chunk_atoms = 5  # several chunks of whole systems
    try:
        chunked = sevennet(Batch.from_ase(frames, dtype=torch.float64))
    finally:
        sevennet.chunk_atoms = None
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(chunked[key], together[key], atol=1e-10), key


def test_species_and_metadata(sevennet):
    assert sevennet.cutoff == 5.0 and len(sevennet.supported_numbers) == 89
    info = sevennet.model_info()
    assert info["model"] == "SevenNet-0" and len(info["model_sha256"]) == 64 and "sevenn" in info["model_file"]
    bad = bulk("Cu", "fcc", a=3.6)
    bad.numbers[0] = 118
    with pytest.raises(UnsupportedSpeciesError, match="Og") as err:
        sevennet(Batch.from_ase([bad], dtype=torch.float64))
    assert "\n" not in str(err.value)


def test_fire_matches_ase_fire_step_for_step(sevennet):
    from batchmd.ase import relax

    start = bulk("NaCl", "rocksalt", a=5.64)
    start.positions += np.random.default_rng(3).normal(0.0, 0.06, start.positions.shape)
    ours = relax([start], sevennet, fmax=0.05, max_steps=60, dtype=torch.float64)[0]
    ref = start.copy()
    ref.calc = sevennet_reference_calculator(torch.float64)
    opt = AseFIRE(ref, logfile=None)
    opt.run(fmax=0.05, steps=60)
    assert ours.info["converged"] and ours.info["n_steps"] == opt.nsteps
    assert np.abs(ours.positions - ref.positions).max() < 1e-6
    assert abs(ours.get_potential_energy() - ref.get_potential_energy()) < 1e-6


@pytest.mark.slow  # a second TorchScript warm-up of SevenNet-0 (float32 model and calculator): minutes here
def test_fire_float32_ends_where_ase_fire_ends(sevennet):
    """float32 relaxations end within 1e-4 eV/atom of ASE's FIRE with SevenNet's own (float32) calculator."""
    from batchmd.ase import relax

    start = bulk("Si", "diamond", a=5.43)
    start.positions += np.random.default_rng(5).normal(0.0, 0.05, start.positions.shape)
    ours = relax([start], sevennet, fmax=0.05, max_steps=60, dtype=torch.float32)[0]
    ref = start.copy()
    ref.calc = sevennet_reference_calculator(torch.float32)
    AseFIRE(ref, logfile=None).run(fmax=0.05, steps=60)
    assert ours.info["converged"]
    assert abs(ours.get_potential_energy() - ref.get_potential_energy()) / len(start) < 1e-4
