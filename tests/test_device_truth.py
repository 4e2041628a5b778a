"""Issue 20's kernels on every device: runaway guards, admission and the degrees of freedom.

Each test runs on the CPU here and on CUDA where torch and Warp see a GPU (``benchmarks/gpu_session.sh
test`` runs this file there), so the guard kernel (``kernels/guards.py``), the guard bits folded into
the force statistics (``kernels/bookkeeping.py``) and the ``dof`` field read by the thermostat kernels
are exercised by the same assertions on both. Float64 throughout.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.cluster import Icosahedron
from ase.constraints import FixCom

from test_cuda import _cuda_available as _cuda  # noqa: E402  (one definition of 'a GPU is seen')
from test_runaway import argon32, close_pair_crystal, lj  # noqa: E402

from batchmd.ase import run_frames
from batchmd.data import Batch
from batchmd.dynamics import NVE, FusedStage, IsotropicMTKNPT, NoseHooverChainNVT
from batchmd.dynamics.status import FailureReason, SystemStatus, failure_text


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_close_pair_fails_on_the_displacement_guard(device):
    """Ar32 with a pair 0.12 Å apart, NVE 2 fs: failed at step 0 with its own geometry; the others complete."""
    frames = [argon32(seed=1), close_pair_crystal(), argon32(seed=2)]
    out = run_frames(frames, [NVE(lj(), dt=2.0, n_steps=10)], max_atoms=64, device=device).frames
    assert [a.info["status"] for a in out] == ["completed", "failed", "completed"]
    assert out[1].info["failure"] == failure_text(int(FailureReason.DISPLACEMENT), step=0)
    assert np.array_equal(out[1].positions, frames[1].positions)


@pytest.mark.parametrize("device", DEVICES)
def test_collapsing_cell_fails_on_density_before_its_neighbor_list_grows(device):
    """MTK at 40 GPa with pdamp 50 fs collapses one cell in a step: DENSITY, NaN energy; the other runs on."""
    frames = [argon32(seed=1), argon32(seed=2)]
    pressure = torch.tensor([0.0, 40.0], dtype=torch.float64, device=device) * units.GPa
    pdamp = torch.tensor([500.0, 50.0], dtype=torch.float64, device=device)
    model = lj()
    stage = IsotropicMTKNPT(model, dt=5.0, temperature=40.0, pressure=pressure, pdamp=pdamp, n_steps=10,
                            random_seed=1)
    out = FusedStage([stage]).run(Batch.from_ase(frames, dtype=torch.float64, device=device))
    assert out["status"].tolist() == [SystemStatus.CONVERGED, SystemStatus.FAILED]
    assert out["failure"].tolist() == [0, int(FailureReason.DENSITY)]
    assert np.isnan(float(out["energies"][1, 0]))
    assert model.neighbor_list.capacity < 200


@pytest.mark.parametrize("device", DEVICES)
def test_barostat_admission_names_the_frame(device):
    """A cluster given a barostat is refused up front, naming its input index (never a slot)."""
    cluster = Icosahedron("Ar", 2)
    cluster.center(vacuum=5.0)
    stage = IsotropicMTKNPT(lj(), dt=5.0, temperature=40.0, pressure=0.1 * units.GPa, n_steps=5, random_seed=1)
    with pytest.raises(ValueError, match=r"^input: frame 1 is not periodic") as err:
        run_frames([argon32(), cluster], [stage], max_atoms=100, device=device)
    assert "slot" not in str(err.value)


def test_nose_hoover_with_fixcom_is_the_same_on_every_device():
    """NHC with FixCom (g = 3N - 3 from the ``dof`` field): CUDA equals the CPU to rounding (1e-9 Å)."""
    if not _cuda():
        pytest.skip("needs a CUDA GPU")
    frames = []
    for seed in (1, 2):
        atoms = argon32(seed=seed)
        atoms.set_constraint(FixCom())
        frames.append(atoms)
    results = {}
    for device in ("cpu", "cuda"):
        stage = NoseHooverChainNVT(lj(), dt=4.0, temperature=40.0, tdamp=100.0, n_steps=50, random_seed=3)
        out = FusedStage([stage]).run(Batch.from_ase(frames, dtype=torch.float64, device=device))
        results[device] = (out.positions.cpu().numpy(), out["dof"].cpu().numpy())
    assert np.array_equal(results["cpu"][1], results["cuda"][1])
    assert results["cpu"][1].reshape(-1).tolist() == [93.0, 93.0]
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=0, atol=1e-9)
