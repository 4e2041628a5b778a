"""ORB v3 conservative (random weights, the real architecture) through batchmd equals ORB's own ASE calculator."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

pytest.importorskip("orb_models")

from ase.build import bulk  # noqa: E402
from ase.filters import FrechetCellFilter  # noqa: E402
from ase.optimize import FIRE as AseFIRE  # noqa: E402
from mlip_cases import compare_with_calculator, mixed_structures  # noqa: E402

from batchmd.data import Batch  # noqa: E402
from batchmd.models import UnsupportedSpeciesError, load_model  # noqa: E402
from batchmd.models.mlip.orb import ORBModel, knn_edges  # noqa: E402

TOL = {torch.float64: (1e-9, 1e-9, 1e-10), torch.float32: (5e-5, 2e-5, 1e-6)}  # energy eV, forces eV/Å, stress eV/Å^3


#: A narrower orb-v3-conservative (same modules; latent 64, MLP 128, 2 message passes) for the longer checks.
SMALL = {"latent_dim": 64, "base_mlp_hidden_dim": 128, "num_message_passing_steps": 2}


@functools.lru_cache(maxsize=None)
def orb_network(k: int = 20, small: bool = False):
    """orb-v3-conservative architecture (``orb_models.forcefield.pretrained``) with random weights, k neighbours."""
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.atomic_system import SystemConfig

    torch.manual_seed(0)
    net = pretrained.orb_v3_conservative_architecture(system_config=SystemConfig(radius=6.0, max_num_neighbors=k),
                                                      **(SMALL if small else {}))
    return net.eval()


def reference_calculator(dtype: torch.dtype, k: int = 20, small: bool = False):
    """``orb_models.forcefield.calculator.ORBCalculator`` with the same network; float64 through torch's
    default dtype (how orb-models selects float64), set only during each calculation."""
    from orb_models.forcefield.calculator import ORBCalculator

    class DefaultDtypeORBCalculator(ORBCalculator):
        def calculate(self, *args, **kwargs):
            saved = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                super().calculate(*args, **kwargs)
            finally:
                torch.set_default_dtype(saved)

    return DefaultDtypeORBCalculator(copy.deepcopy(orb_network(k, small)).to(dtype), device="cpu")


def orb_frames(seed: int = 0):
    """The mixed MLIP structures without the slab (ORB's calculator refuses partial periodicity)."""
    return [a for a in mixed_structures(seed=seed) if a.pbc.all() or not a.pbc.any()]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def orb():
    return ORBModel(copy.deepcopy(orb_network()))


@pytest.fixture(scope="module")
def small_orb():
    return ORBModel(copy.deepcopy(orb_network(small=True)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_equals_own_ase_calculator(orb, dtype):
    frames = orb_frames()
    batch = Batch.from_ase(frames, dtype=dtype)
    out = orb(batch)
    assert out["energy"].dtype == dtype and out["stress"].shape == (len(frames), 3, 3)
    worst = compare_with_calculator(out, batch, frames, reference_calculator(dtype))
    e_tol, f_tol, s_tol = TOL[dtype]
    assert worst["energy"] < e_tol and worst["forces"] < f_tol and worst["stress"] < s_tol, worst


def test_nearest_neighbour_limit_is_orbs():
    """k = 20 keeps the 20 nearest of ~40-90 neighbours within 6 Å; k = 120 keeps all: both equal ORB's calculator."""
    frames = orb_frames(seed=3)[:3]
    batch = Batch.from_ase(frames, dtype=torch.float64)
    results = {}
    for k in (20, 120):
        model = ORBModel(copy.deepcopy(orb_network(k, small=True)))
        out = model(batch)
        worst = compare_with_calculator(out, batch, frames, reference_calculator(torch.float64, k, small=True))
        assert worst["energy"] < 1e-9 and worst["forces"] < 1e-9, (k, worst)
        results[k] = out["energy"]
    assert (results[20] - results[120]).abs().max() > 1e-3  # the limit is active on these crystals


def test_knn_edges_keeps_the_nearest_in_order():
    lengths = torch.tensor([3.0, 1.0, 2.0, 5.0, 1.5, 0.5, 4.0])
    senders = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    assert knn_edges(lengths, senders, 2).tolist() == [1, 2, 5, 4]
    assert sorted(knn_edges(lengths, senders, 10).tolist()) == list(range(7))
    tie = knn_edges(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 0, 0]), 2)
    assert tie.tolist() == [0, 1]  # ties keep the edge order


def test_batch_invariance_chunks_and_partial_periodicity(small_orb):
    orb = small_orb
    frames = mixed_structures(seed=1)  # the slab too: batchmd evaluates it (ORB's calculator does not)
    batch = Batch.from_ase(frames, dtype=torch.float64)
    together = orb(batch)
    ptr = batch.ptr.tolist()
    for s in (2, 5):
        alone = orb(Batch.from_ase([frames[s]], dtype=torch.float64))
        assert abs(float(alone["energy"][0, 0] - together["energy"][s, 0])) < 1e-10
        assert torch.allclose(alone["forces"], together["forces"][ptr[s]:ptr[s + 1]], atol=1e-10)
    orb.chunk_atoms = 5
    try:
        chunked = orb(Batch.from_ase(frames, dtype=torch.float64))
    finally:
        orb.chunk_atoms = None
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(chunked[key], together[key], atol=1e-10), key


def test_species_loading_and_refusals(orb, tmp_path):
    from orb_models.forcefield import pretrained

    assert orb.cutoff == 6.0 and orb.max_num_neighbors == 20 and len(orb.supported_numbers) == 117
    bad = bulk("Cu", "fcc", a=3.6)
    bad.numbers[0] = 118
    with pytest.raises(UnsupportedSpeciesError, match="Og"):
        orb(Batch.from_ase([bad], dtype=torch.float64))
    with pytest.raises(FileNotFoundError, match="must be present locally.*orb-v3-conservative-inf-omat-20250404.ckpt"):
        load_model("orb:orb-v3-conservative-inf-omat")
    with pytest.raises(FileNotFoundError, match="must be present locally.*orb-v3-conservative-20-mpa-20250404.ckpt"):
        load_model("orb-v3-conservative-20-mpa")
    with pytest.raises(ValueError, match="not an ORB conservative model"):
        ORBModel(pretrained.orb_v3_direct_architecture())
    path = tmp_path / "orb-v3-conservative-20-omat-20250404.ckpt"
    torch.save(orb_network().state_dict(), path)
    loaded = load_model(f"orb:{path}")
    assert loaded.model_info()["model"] == "orb-v3-conservative-20-omat" and loaded.max_num_neighbors == 20
    frames = orb_frames()[:2]
    a = loaded(Batch.from_ase(frames, dtype=torch.float64))["energy"]
    b = orb(Batch.from_ase(frames, dtype=torch.float64))["energy"]
    assert torch.equal(a, b)
    renamed = tmp_path / "weights.ckpt"
    path.rename(renamed)
    with pytest.raises(ValueError, match="cannot tell the ORB architecture"):
        load_model(f"orb:{renamed}")
    assert load_model(f"orb:orb-v3-conservative-inf-mpa={renamed}").max_num_neighbors == 120


def test_fire_full_cell_matches_ase_step_count(small_orb):
    """batchmd.ase.relax(cell="full") vs ase FrechetCellFilter + FIRE with ORB's calculator (float64).

    A two-atom cell: in a one-atom cell the images n and -n tie exactly at every distance, so
    which of a tied pair makes the k-nearest graph is arbitrary (and differs from ORB's KD-tree).
    """
    from batchmd.ase import relax

    start = bulk("Si", "diamond", a=5.50)
    start.positions += np.random.default_rng(4).normal(0.0, 0.05, start.positions.shape)
    ours = relax([start], small_orb, fmax=0.05, max_steps=60, cell="full", dtype=torch.float64)[0]
    ref = start.copy()
    ref.calc = reference_calculator(torch.float64, small=True)
    opt = AseFIRE(FrechetCellFilter(ref), logfile=None)
    opt.run(fmax=0.05, steps=60)
    assert ours.info["converged"] and ours.info["n_steps"] == opt.nsteps
    assert np.abs(ours.positions - ref.positions).max() < 1e-8
    assert np.abs(ours.cell[:] - ref.cell[:]).max() < 1e-8


def test_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    from batchmd.models.registry import MissingExtraError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "orb_models" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'batchmd\[orb\]'"):
        load_model("orb:/models/orb-v3-conservative-inf-omat-20250404.ckpt")
