"""PET (the architecture of upet's PET-MAD models) through batchmd equals metatomic's ASE calculator.

Random-weight PETs exported by ``batchmd.models.mlip.pet.random_pet`` (metatrain's PET with PET-MAD's
energy and non-conservative force/stress heads); nothing is downloaded.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("metatrain")
metatomic_ase = pytest.importorskip("metatomic_ase")

from ase.build import bulk  # noqa: E402
from ase.filters import FrechetCellFilter as AseFrechet  # noqa: E402
from ase.optimize import FIRE as AseFIRE  # noqa: E402
from mlip_cases import compare_with_calculator, mixed_structures  # noqa: E402

from batchmd.data import Batch  # noqa: E402
from batchmd.models import UnsupportedSpeciesError, load_model  # noqa: E402
from batchmd.models.mlip.pet import PETModel, random_pet  # noqa: E402

TOL = {torch.float64: (1e-10, 1e-10, 1e-11), torch.float32: (5e-5, 2e-5, 2e-6)}  # energy eV, forces eV/Å, stress eV/Å^3


@pytest.fixture(autouse=True)
def _plain_torchscript():
    """TorchScript without its profiling-guided optimisation: the first calls of an exported model
    (each new structure size) are then 2-3x cheaper, which is all these short tests make."""
    with torch.jit.optimized_execution(False):
        yield


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{dtype: path} of the same random PET exported in float64 and float32."""
    tmp = tmp_path_factory.mktemp("pet")
    return {dtype: random_pet(str(tmp / f"pet_{str(dtype)[6:]}.pt"), dtype=dtype)
            for dtype in (torch.float64, torch.float32)}


def calculator(path, non_conservative=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metatomic_ase.MetatomicCalculator(path, device="cpu", non_conservative=non_conservative)


@pytest.mark.parametrize("non_conservative", [False, True], ids=["conservative", "non-conservative"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_equals_metatomic_calculator(exported, dtype, non_conservative):
    model = PETModel.from_spec(exported[dtype], non_conservative=non_conservative)
    frames = mixed_structures()  # slabs and molecules included: metatomic handles mixed boundaries
    batch = Batch.from_ase(frames, dtype=dtype)
    out = model(batch)
    assert out["energy"].dtype == dtype and out["stress"].shape == (len(frames), 3, 3)
    worst = compare_with_calculator(out, batch, frames, calculator(exported[dtype], non_conservative),
                                    stress_for=lambda atoms: atoms.pbc.all())
    e_tol, f_tol, s_tol = TOL[dtype]
    assert worst["energy"] < e_tol * float(out["energy"].abs().max()) and worst["forces"] < f_tol \
        and worst["stress"] < s_tol, worst
    if non_conservative:  # no net force per system, as metatomic_ase
        for s in range(len(frames)):
            assert float(out["forces"][batch.ptr[s]:batch.ptr[s + 1]].sum(0).abs().max()) < 1e-5


def test_float32_checkpoint_runs_in_float64_on_request(exported):
    frames = mixed_structures()
    ref = load_model(f"pet:{exported[torch.float64]}")(Batch.from_ase(frames, dtype=torch.float64))
    cast = load_model(f"pet:{exported[torch.float32]}", dtype=torch.float64)  # UPETCalculator(dtype=...)
    assert cast.model_dtype == torch.float64
    out = cast(Batch.from_ase(frames, dtype=torch.float64))
    assert torch.allclose(out["energy"], ref["energy"], atol=1e-10, rtol=0)
    assert torch.allclose(out["forces"], ref["forces"], atol=1e-10, rtol=0)


def test_checkpoints_by_path_and_by_cached_name(exported, tmp_path, monkeypatch):
    """pet:X.ckpt and upet:NAME (a checkpoint in the local Hugging Face cache) export the checkpoint locally."""
    import huggingface_hub.constants

    models = tmp_path / "models--lab-cosmo--upet" / "snapshots" / "abc123" / "models"
    models.mkdir(parents=True)
    for version in ("1.0.0", "1.2.0"):
        random_pet(str(models / f"pet-test-s-v{version}.ckpt"), width=8, seed=int(version[2]))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    by_name = load_model("upet:pet-test-s", dtype=torch.float64)
    assert by_name.model_info()["model_file"].endswith("pet-test-s-v1.2.0.ckpt")  # the newest version
    by_path = load_model(f"pet:{models / 'pet-test-s-v1.2.0.ckpt'}", dtype=torch.float64)
    batch = Batch.from_ase(mixed_structures()[:3], dtype=torch.float64)
    assert torch.equal(by_name(batch)["energy"], by_path(batch)["energy"])


def test_batch_invariance_and_chunks(exported):
    model = load_model(f"pet:{exported[torch.float64]}")
    frames = mixed_structures(seed=1)
    batch = Batch.from_ase(frames, dtype=torch.float64)
    together = model(batch)
    ptr = batch.ptr.tolist()
    for s in (2, 5):
        alone = model(Batch.from_ase([frames[s]], dtype=torch.float64))
        assert abs(float(alone["energy"][0, 0] - together["energy"][s, 0])) < 1e-10
        assert torch.allclose(alone["forces"], together["forces"][ptr[s]:ptr[s + 1]], atol=1e-10)
    model.chunk_atoms = 5
    chunked = model(Batch.from_ase(frames, dtype=torch.float64))
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(chunked[key], together[key], atol=1e-10), key


def test_names_species_and_errors(exported, tmp_path):
    model = load_model(f"pet:{exported[torch.float64]}")
    assert model.cutoff == 4.5 and model.supported_numbers == frozenset({1, 8, 11, 14, 17, 29})
    assert model.model_info()["model"] == "PET(pet_float64.pt)"
    with pytest.raises(UnsupportedSpeciesError, match="Fe"):
        model(Batch.from_ase([bulk("Fe", "bcc", a=2.87)], dtype=torch.float64))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_model("upet:pet-nothing-s")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(f"pet:{tmp_path / 'missing.pt'}")
    from batchmd.models import available_models
    from batchmd.models.registry import MissingExtraError

    assert {"pet:PATH", "upet:NAME"} <= set(available_models())
    import importlib.util

    real = importlib.util.find_spec
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "metatomic" else real(name, *a))
        with pytest.raises(MissingExtraError, match=r"pip install 'batchmd\[pet\]'"):
            load_model("pet:/models/x.pt")
    energy_only = random_pet(str(tmp_path / "energy_only.pt"), non_conservative=False, width=8)
    with pytest.raises(ValueError, match="no non-conservative force and stress outputs"):
        PETModel.from_spec(energy_only, non_conservative=True)


@pytest.mark.slow
@pytest.mark.skip(reason="ill-posed with random weights: under ASE's FrechetCellFilter reference the random PET "
                  "drives the cell towards collapse, neighbour counts explode and the reference reached 23 GB "
                  "(OOM-killed, 2026-12-07); needs real PET-MAD weights or a bounded model")
def test_fire_variable_cell_takes_ase_steps(exported):
    from batchmd.ase import relax

    path = exported[torch.float64]
    start = bulk("NaCl", "rocksalt", a=5.5)
    start.positions += np.random.default_rng(3).normal(0.0, 0.05, start.positions.shape)
    start.cell[:] = start.cell[:] @ (np.eye(3) + 0.01 * np.random.default_rng(4).normal(size=(3, 3)))
    ours = relax([start], load_model(f"pet:{path}"), fmax=0.01, max_steps=150, cell="full", dtype=torch.float64)[0]
    ref = start.copy()
    ref.calc = calculator(path)
    target = AseFrechet(ref)
    opt = AseFIRE(target, logfile=None)
    for nsteps in range(151):  # ASE's run semantics, one force call per step
        forces = target.get_forces()
        if np.linalg.norm(forces, axis=1).max() < 0.01:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            opt.step(forces)
    assert ours.info["converged"] and 5 < nsteps < 150 and ours.info["n_steps"] == nsteps
    assert np.abs(ours.positions - ref.positions).max() < 1e-6 and np.abs(ours.cell[:] - ref.cell[:]).max() < 1e-6
