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


def _cu4():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.rattle(0.02, seed=0)
    return cu


def test_npt_runaway_cell_fails_with_a_reason_never_as_isolated_atoms(sevennet):
    """Issue 20: ``--pressure -50`` GPa drove the cell to NaN; the edge list dropped the NaN pairs and the
    frame came back "completed" at -2.678 eV (isolated atoms) on the input geometry (its energy: -16.36 eV)."""
    from ase import units

    from batchmd.ase import run_frames
    from batchmd.dynamics import IsotropicMTKNPT

    stage = IsotropicMTKNPT(sevennet, dt=2.0, temperature=300.0, pressure=-50.0 * units.GPa, pdamp=10.0, n_steps=6,
                            random_seed=1)
    atoms = run_frames([_cu4()], [stage], dtype=torch.float64).frames[0]
    assert atoms.info["status"] == "failed" and " at step " in atoms.info["failure"]
    if atoms.calc is not None:  # the energy of the geometry written, never that of isolated atoms
        assert abs(atoms.get_potential_energy() - float(sevennet(Batch.from_ase([atoms]))["energy"][0, 0])) < 1e-6
        assert atoms.get_potential_energy() < -4.0


def test_collapsing_cell_fails_before_its_edges_and_the_other_finishes(sevennet):
    """Issue 20: at 40 GPa one cell went from 47 to 0.24 Å^3 in one step and its edge list grew to 23 GB."""
    from ase import units

    from batchmd.ase import run_frames
    from batchmd.dynamics import IsotropicMTKNPT

    si8 = bulk("Si", "diamond", a=5.43, cubic=True)
    si8.rattle(0.02, seed=1)
    stage = IsotropicMTKNPT(sevennet, dt=2.0, temperature=300.0, pressure=40.0 * units.GPa, pdamp=10.0, n_steps=6,
                            random_seed=1)
    frames = run_frames([si8, _cu4()], [stage], dtype=torch.float64).frames
    status = [a.info["status"] for a in frames]
    assert "failed" in status, status
    for a in frames:
        if a.info["status"] == "failed":
            assert "Guards.max_density" in a.info["failure"] or "non-finite" in a.info["failure"]
            assert a.calc is None or np.isfinite(a.get_potential_energy())
