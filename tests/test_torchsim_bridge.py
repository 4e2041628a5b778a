"""TorchSim models through batchmd's bridge (batchmd.models.torchsim) equal batchmd's own models.

Needs torch-sim-atomistic >= 0.6 (Python >= 3.12): run by ``.ci/run-torchsim``; skipped elsewhere
except the missing-package error.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from batchmd.data import Batch
from batchmd.models import UnsupportedSpeciesError, load_model
from batchmd.models.lj import LennardJones
from batchmd.models.registry import MissingExtraError

SIGMA, EPSILON, CUTOFF = 3.405, 0.0104, 8.5125


def test_missing_torch_sim_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch_sim" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"torch_sim.*batchmd\[torchsim\]"):
        load_model("torchsim:torch_sim.models.lennard_jones:LennardJonesModel")


@pytest.fixture(scope="module")
def ts():
    return pytest.importorskip("torch_sim", minversion="0.6")


def _ts_lj(dtype=torch.float64, stress=True, cutoff=CUTOFF):
    from torch_sim.models.lennard_jones import LennardJonesModel

    return LennardJonesModel(sigma=SIGMA, epsilon=EPSILON, cutoff=cutoff, dtype=dtype, compute_stress=stress,
                             device=torch.device("cpu"))


def _argon(seed=0, n=4, rattle=0.1):
    """Rattled argon: fcc crystals of 4, 32 and 108 atoms (one triclinic) and a free 13-atom cluster."""
    rng = np.random.default_rng(seed)
    frames = [bulk("Ar", "fcc", a=5.26), bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2)),
              bulk("Ar", "fcc", a=5.30, cubic=True).repeat((3, 3, 3))]
    cluster = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))[:13]
    cluster.pbc, cluster.cell = False, np.zeros((3, 3))
    frames.insert(1, cluster)
    frames = frames[:n]
    for atoms in frames:
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    return frames


def _shift(atoms: Atoms) -> float:
    """ASE's (and batchmd's) LJ energy minus TorchSim's: pair energies shifted to zero at the cutoff."""
    pairs = len(neighbor_list("i", atoms, CUTOFF)) // 2
    return -pairs * 4 * EPSILON * ((SIGMA / CUTOFF) ** 12 - (SIGMA / CUTOFF) ** 6)


def test_lj_equals_batchmd_lj(ts):
    from batchmd.models.torchsim import TorchSimModel

    frames = _argon()
    batch = Batch.from_ase(frames, dtype=torch.float64)
    model = TorchSimModel(_ts_lj())
    out = model(batch)
    ref = LennardJones(sigma=SIGMA, epsilon=EPSILON, cutoff=CUTOFF, compute_stress=True)(batch)
    shift = torch.tensor([_shift(a) for a in frames], dtype=torch.float64)
    assert torch.allclose(out["energy"][:, 0] + shift, ref["energy"][:, 0], rtol=1e-12, atol=1e-12)
    scale = ref["forces"].abs().max()
    assert (out["forces"] - ref["forces"]).abs().max() < 1e-10 * scale
    periodic = torch.tensor([a.pbc.all() for a in frames])
    assert (out["stress"][periodic] - ref["stress"][periodic]).abs().max() < 1e-10 * ref["stress"].abs().max()
    assert torch.equal(out["stress"][~periodic], torch.zeros_like(out["stress"][~periodic]))  # no cell: zero
    assert out["energy"].dtype == torch.float64 and out["energy"].shape == (len(frames), 1)
    # batched equals one at a time; float32 batch through a float64 model comes back float32
    ptr = batch.ptr.tolist()
    for s, atoms in enumerate(frames):
        alone = model(Batch.from_ase([atoms], dtype=torch.float64))
        assert abs(float(alone["energy"][0, 0] - out["energy"][s, 0])) < 1e-12
        assert torch.allclose(alone["forces"], out["forces"][ptr[s]:ptr[s + 1]], rtol=0, atol=1e-12)
    low = model(Batch.from_ase(frames, dtype=torch.float32))
    assert low["forces"].dtype == torch.float32 and torch.allclose(low["forces"].double(), out["forces"], atol=1e-5)
    info = model.model_info()
    assert info["model_memory_scales_with"] == "n_atoms_x_density" and info["model_cutoff"] == f"{CUTOFF:g}"


def test_status_rows_skipped_and_kept(ts):
    """EMPTY and FAILED systems are never handed to the TorchSim model; skip_finished keeps out's values."""
    from batchmd.models.torchsim import TorchSimModel

    frames = _argon(n=3)
    batch = Batch.from_ase(frames, dtype=torch.float64)
    model = TorchSimModel(_ts_lj())
    full = model(batch)
    seen = []
    inner = model.ts_model.forward
    model.ts_model.forward = lambda state, **kw: seen.append(state.n_systems) or inner(state, **kw)
    batch.set_field("status", torch.tensor([0, 3, 5], dtype=torch.int32), level="system")  # ACTIVE FAILED EMPTY
    saved = batch.positions.clone()
    batch.positions[batch.ptr[1]:batch.ptr[2]] = float("nan")  # a failed system's positions may be anything
    out = model(batch)
    assert seen == [1]
    assert torch.equal(out["energy"][0], full["energy"][0])
    assert torch.equal(out["energy"][1:], torch.zeros(2, 1, dtype=torch.float64))
    assert torch.equal(out["forces"][:batch.ptr[1]], full["forces"][:batch.ptr[1]])
    kept = {k: torch.full_like(v, 7.0) for k, v in full.items()}
    batch.positions.copy_(saved)
    batch["status"].copy_(torch.tensor([1, 4, 5], dtype=torch.int32))  # CONVERGED PENDING EMPTY
    model(batch, out=kept, skip_finished=True)
    assert seen == [1, 1]
    assert torch.equal(kept["energy"][0], torch.full((1,), 7.0, dtype=torch.float64))  # kept
    a, b = batch.ptr[1], batch.ptr[2]
    assert torch.equal(kept["forces"][a:b], full["forces"][a:b])  # PENDING evaluated
    assert (kept["forces"][b:] == 7.0).all()  # EMPTY untouched under skip_finished


def test_relax_and_nvt_equal_batchmd_lj(ts):
    """batchmd's FIRE and Langevin NVT (inflight, padded live batch) through the bridge follow batchmd's LJ."""
    from batchmd.ase import relax, run_frames
    from batchmd.dynamics import NVTLangevin
    from batchmd.models.torchsim import TorchSimModel

    frames = [_argon(seed=s, n=3, rattle=0.05)[2] for s in (3, 4, 5)]  # three 32-atom cells, two at a time
    bridge = TorchSimModel(_ts_lj(cutoff=6.5))  # a short cutoff: TorchSim's LJ is slow on a CPU
    ours = LennardJones(sigma=SIGMA, epsilon=EPSILON, cutoff=6.5, compute_stress=True)
    a = relax(frames, bridge, fmax=0.01, max_steps=300, max_atoms=64)
    b = relax(frames, ours, fmax=0.01, max_steps=300, max_atoms=64)
    for x, y in zip(a, b):
        assert x.info["converged"] and x.info["n_steps"] == y.info["n_steps"]
        assert np.abs(x.positions - y.positions).max() < 1e-8
    runs = []
    for model in (bridge, ours):
        nvt = NVTLangevin(model, dt=2.0, temperature=80.0, friction=0.02, random_seed=5, n_steps=10)
        runs.append(run_frames(frames, nvt, max_atoms=64, refill_frequency=5).frames)
    for x, y in zip(*runs):
        assert np.abs(x.positions - y.positions).max() < 1e-8
        assert np.abs(x.get_velocities() - y.get_velocities()).max() < 1e-8


def test_registry_and_budget(ts, tmp_path):
    from batchmd.dynamics.budget import _edge_cutoff
    from batchmd.models.torchsim import TorchSimModel

    model = load_model("torchsim:torch_sim.models.lennard_jones:LennardJonesModel", dtype=torch.float64)
    assert isinstance(model, TorchSimModel) and model.ts_model.dtype == torch.float64
    assert model.model_name == "torchsim:torch_sim.models.lennard_jones:LennardJonesModel"
    out = model(Batch.from_ase(_argon(n=1), dtype=torch.float64))
    assert torch.isfinite(out["forces"]).all()
    for bad, match in [("torchsim:nope", "package.module:factory"), ("torchsim:no_such_mod_xyz:f", "cannot import"),
                       ("torchsim:torch_sim.models.lennard_jones:Nope", "no callable"),
                       ("torchsim:torch.nn:Identity", "not a TorchSim ModelInterface")]:
        with pytest.raises(ValueError, match=match):
            load_model(bad)
    factory = tmp_path / "my_models.py"
    factory.write_text("from torch_sim.models.lennard_jones import LennardJonesModel\n"
                       "def argon(device=None, dtype=None):\n"
                       f"    return LennardJonesModel(sigma={SIGMA}, epsilon={EPSILON}, cutoff={CUTOFF}, "
                       "device=device, dtype=dtype, compute_stress=True)\n")
    argon = load_model(f"torchsim:{factory}:argon", dtype=torch.float64)
    assert argon.cutoff == CUTOFF and argon.computes_stress
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(f"torchsim:{tmp_path / 'missing.py'}:argon")
    with pytest.raises(TypeError, match="ModelInterface"):
        TorchSimModel(torch.nn.Linear(2, 2))
    assert _edge_cutoff(model) == model.cutoff > 0  # n_atoms_x_density: edges within the cutoff count
    model.memory_scales_with = "n_atoms"
    assert _edge_cutoff(model) is None


def test_mace_adapter_equals_batchmd_mace(ts, tmp_path):
    """mace's own TorchSim adapter (MaceTorchSimModel) through the bridge equals batchmd's MACE adapter."""
    pytest.importorskip("mace")
    from mace.calculators.mace_torchsim import MaceTorchSimModel
    from mlip_cases import mixed_structures, small_mace_file

    from batchmd.models.torchsim import TorchSimModel

    path = small_mace_file(str(tmp_path))
    frames = mixed_structures()  # crystals, a molecule (no pbc), a slab (pbc T T F): three pbc groups
    batch = Batch.from_ase(frames, dtype=torch.float64)
    ref = load_model(f"mace:{path}")(batch)
    bridge = TorchSimModel(MaceTorchSimModel(path, device=torch.device("cpu"), dtype=torch.float64))
    assert bridge.supported_numbers == frozenset((1, 6, 8, 11, 14, 17, 29)) and bridge.cutoff == 4.0
    out = bridge(batch)
    assert torch.allclose(out["energy"], ref["energy"], rtol=1e-10, atol=1e-10)
    assert (out["forces"] - ref["forces"]).abs().max() < 1e-10 * ref["forces"].abs().max()
    periodic = torch.tensor([a.pbc.all() for a in frames])
    assert (out["stress"][periodic] - ref["stress"][periodic]).abs().max() < 1e-10 * ref["stress"].abs().max()
    ptr = batch.ptr.tolist()
    for s in (0, 4):
        alone = bridge(Batch.from_ase([frames[s]], dtype=torch.float64))
        assert torch.allclose(alone["forces"], out["forces"][ptr[s]:ptr[s + 1]], rtol=0, atol=1e-12)
    with pytest.raises(UnsupportedSpeciesError, match="Fe"):
        bridge(Batch.from_ase([bulk("Fe", "bcc", a=2.87)], dtype=torch.float64))
    # inflight FIRE on a padded live batch (EMPTY rows carry no element): batchmd's MACE's steps
    from batchmd.ase import relax

    start = [bulk("NaCl", "rocksalt", a=5.3).repeat((2, 1, 1)), bulk("Si", "diamond", a=5.43)]
    for k, atoms in enumerate(start):
        atoms.positions += np.random.default_rng(4 + k).normal(0.0, 0.05, atoms.positions.shape)
    a = relax(start, bridge, fmax=0.003, max_steps=10, max_atoms=4)
    b = relax(start, load_model(f"mace:{path}"), fmax=0.003, max_steps=10, max_atoms=4)
    assert all(x.info["n_steps"] > 0 for x in a)
    for x, y in zip(a, b):
        assert x.info["n_steps"] == y.info["n_steps"] and np.abs(x.positions - y.positions).max() < 1e-8


def test_sevennet_adapter_equals_batchmd_sevennet(ts):
    """sevenn's own TorchSim adapter (sevenn >= 0.11, float32 only) with SevenNet-0 equals batchmd's SevenNet."""
    sevenn = pytest.importorskip("sevenn")
    if not importlib.util.find_spec("sevenn.torchsim"):
        pytest.skip(f"sevenn {sevenn.__version__} has no TorchSim adapter (>= 0.11 has)")
    from mlip_cases import mixed_structures
    from sevenn.torchsim import SevenNetModel as SevenNetTorchSim

    from batchmd.models.torchsim import TorchSimModel

    frames = mixed_structures()[:2]  # Si and NaCl crystals (SevenNet-0 costs seconds per call on a CPU)
    batch = Batch.from_ase(frames, dtype=torch.float32)
    ref = load_model("sevennet-0")(batch)
    bridge = TorchSimModel(SevenNetTorchSim("7net-0", device="cpu"))
    assert len(bridge.supported_numbers) == 89 and bridge.cutoff == 5.0
    out = bridge(batch)
    assert out["forces"].dtype == torch.float32
    assert (out["energy"] - ref["energy"]).abs().max() < 1e-4
    assert (out["forces"] - ref["forces"]).abs().max() < 1e-4
    assert (out["stress"] - ref["stress"]).abs().max() < 1e-5
