"""NequIP and Allegro through batchmd equal nequip's own ASE calculator (float64, random weights).

Runs in the e3nn >= 0.6 environment (``.ci/run-e3nn6``); skipped where ``nequip`` is absent.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("nequip")
pytest.importorskip("allegro")

from ase.build import bulk  # noqa: E402
from mlip_cases import compare_with_calculator, mixed_structures  # noqa: E402

from batchmd.data import Batch  # noqa: E402
from batchmd.dynamics import FIRE, ConvergenceHook  # noqa: E402
from batchmd.dynamics.cell_filter import FrechetCellFilter  # noqa: E402
from batchmd.models import UnsupportedSpeciesError  # noqa: E402
from batchmd.models.mlip.nequip import NequIPModel, keep_default_dtype, random_nequip  # noqa: E402


def _calculator(module):
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator

    return NequIPCalculator(module, device="cpu", transforms=[ChemicalSpeciesToAtomTypeMapper(module.type_names),
                                                              NeighborListTransform(r_max=4.0)])


@pytest.fixture(scope="module", params=["nequip", "allegro"])
def pair(request):
    module = random_nequip(request.param)
    return NequIPModel(module), copy.deepcopy(module)


def test_default_dtype_is_left_alone(pair):
    assert torch.get_default_dtype() == torch.float32


def test_equals_own_ase_calculator(pair):
    model, reference = pair
    frames = mixed_structures()
    batch = Batch.from_ase(frames, dtype=torch.float64)
    out = model(batch)
    assert torch.get_default_dtype() == torch.float32
    # nequip's from_ase builds tensors in torch's default dtype: float64 for its float64 reference
    with keep_default_dtype():
        torch.set_default_dtype(torch.float64)
        worst = compare_with_calculator(out, batch, frames, _calculator(reference))
    assert worst["energy"] < 1e-12 and worst["forces"] < 1e-12 and worst["stress"] < 1e-13, worst


def test_batch_invariance_chunks_species(pair):
    model, _ = pair
    frames = mixed_structures(seed=2)
    together = model(Batch.from_ase(frames, dtype=torch.float64))
    ptr = Batch.from_ase(frames).ptr.tolist()
    for s in range(len(frames)):
        alone = model(Batch.from_ase([frames[s]], dtype=torch.float64))
        assert abs(float(alone["energy"][0, 0] - together["energy"][s, 0])) < 1e-12
        assert torch.allclose(alone["forces"], together["forces"][ptr[s]:ptr[s + 1]], atol=1e-12)
    model.chunk_atoms = 6
    try:
        chunked = model(Batch.from_ase(frames, dtype=torch.float64))
    finally:
        model.chunk_atoms = None
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(chunked[key], together[key], atol=1e-12), key
    with pytest.raises(UnsupportedSpeciesError, match="Fe"):
        model(Batch.from_ase([bulk("Fe", "bcc", a=2.87)], dtype=torch.float64))


@pytest.mark.slow  # 15-50 s on the 2-core CPU; .ci/run-e3nn6 runs it
def test_variable_cell_fire_takes_ase_step_count(pair):
    from ase.filters import FrechetCellFilter as AseFrechet
    from ase.optimize import FIRE as AseFIRE

    model, reference = pair
    start = bulk("NaCl", "rocksalt", a=5.5)
    start.positions += np.random.default_rng(4).normal(0.0, 0.05, start.positions.shape)
    fire = FIRE(model, cell_filter=FrechetCellFilter(), convergence_hook=ConvergenceHook.from_forces(0.01))
    out = fire.run(Batch.from_ase([start], dtype=torch.float64), n_steps=300)
    ref = start.copy()
    with keep_default_dtype():
        torch.set_default_dtype(torch.float64)
        ref.calc = _calculator(reference)
        opt = AseFIRE(AseFrechet(ref), logfile=None)
        opt.run(fmax=0.01, steps=300)
    assert bool(out["converged"][0]) and int(out["n_steps"][0]) == opt.nsteps
    assert np.abs(out.positions.numpy() - ref.positions).max() < 1e-8
    assert np.abs(out.cell[0].numpy() - ref.cell[:]).max() < 1e-8
