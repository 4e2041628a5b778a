"""batchmd.ase (Calculator, relax, AtomsDataset) and ASECalculatorModel against ASE's own Lennard-Jones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones as ASELennardJones
from ase.optimize import BFGS, FIRE as ASEFIRE

from batchmd.ase import AtomsDataset, Calculator, check_frames, relax
from batchmd.data import Batch
from batchmd.dynamics import FIRE, ConvergenceHook, SystemStatus
from batchmd.models.ase_calculator import ASECalculatorModel
from batchmd.models.lj import LennardJones

SIGMA, EPS, RC = 3.405, 0.0104, 8.5125


def ase_lj():
    return ASELennardJones(sigma=SIGMA, epsilon=EPS, rc=RC, smooth=False)


def bj_lj():
    return LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC)


def argon(repeat=(1, 1, 1), a=5.3, rattle=0.1, seed=0):
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


def cluster(n=7, seed=1):
    rng = np.random.default_rng(seed)
    return Atoms("Ar" * n, positions=rng.uniform(0, 7.0, size=(n, 3)) + np.arange(n)[:, None] * 0.5)


@pytest.mark.parametrize("make", [lambda: argon((2, 1, 1)), lambda: cluster()], ids=["periodic", "cluster"])
def test_calculator_matches_ase_lennard_jones(make):
    atoms = make()
    ours, ref = atoms.copy(), atoms.copy()
    ours.calc, ref.calc = Calculator(bj_lj()), ase_lj()
    assert ours.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(ours.get_forces(), ref.get_forces(), atol=1e-10)
    if atoms.pbc.all():
        np.testing.assert_allclose(ours.get_stress(), ref.get_stress(), atol=1e-10)
    else:
        assert "stress" not in ours.calc.results


@pytest.mark.parametrize("optimizer", [ASEFIRE, BFGS])
def test_ase_optimizers_run_with_the_calculator(optimizer):
    ours, ref = argon((1, 1, 2)), argon((1, 1, 2))
    ours.calc, ref.calc = Calculator(bj_lj()), ase_lj()
    assert optimizer(ours, logfile=None).run(fmax=0.01, steps=300)
    optimizer(ref, logfile=None).run(fmax=0.01, steps=300)
    assert ours.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(ours.positions, ref.positions, atol=1e-6)


def test_calculator_float32_and_errors():
    atoms = argon()
    atoms.calc = Calculator(bj_lj(), dtype=torch.float32)
    ref = argon()
    ref.calc = ase_lj()
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-4)
    with pytest.raises(ValueError, match="dtype"):
        Calculator(bj_lj(), dtype=torch.int64)


def test_ase_calculator_model_matches_native_lj():
    frames = [argon((1, 1, 1), seed=2), argon((2, 1, 1), seed=3), cluster(5)]
    batch = Batch.from_ase(frames, dtype=torch.float64)
    wrapped = ASECalculatorModel(ase_lj(), compute_stress=True)(batch)
    native = bj_lj()(batch)
    torch.testing.assert_close(wrapped["energy"], native["energy"], atol=1e-10, rtol=0)
    torch.testing.assert_close(wrapped["forces"], native["forces"], atol=1e-10, rtol=0)
    torch.testing.assert_close(wrapped["stress"][:2], native["stress"][:2], atol=1e-10, rtol=0)
    assert wrapped["energy"].dtype == torch.float64 and wrapped["forces"].shape == (batch.num_nodes, 3)
    with pytest.raises(TypeError, match="not an ASE calculator"):
        ASECalculatorModel(object())


def test_batchmd_fire_runs_with_an_ase_calculator_model():
    frames = [argon((1, 1, 1), seed=4), argon((1, 1, 2), seed=5)]
    batch = Batch.from_ase(frames, dtype=torch.float64)
    model = ASECalculatorModel(ase_lj())
    out = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300).run(batch)
    assert bool((out["status"] == SystemStatus.CONVERGED).all())
    for atoms, energy in zip(frames, out.energies.reshape(-1).tolist()):
        ref = atoms.copy()
        ref.calc = ase_lj()
        ASEFIRE(ref, logfile=None).run(fmax=0.01, steps=300)
        assert energy == pytest.approx(ref.get_potential_energy(), abs=1e-8)


def test_relax_returns_atoms_in_input_order_with_results():
    frames = [argon((1, 1, 2), seed=6), cluster(4), argon((1, 1, 1), seed=7)]
    frames[0].info["label"] = "first"
    out = relax(frames, bj_lj(), fmax=0.01, max_steps=400, max_atoms=40)
    assert [a.info["input_index"] for a in out] == [0, 1, 2]
    assert sorted(a.info["system_id"] for a in out) == [0, 1, 2]
    assert out[0].info["label"] == "first"
    assert [len(a) for a in out] == [len(a) for a in frames]
    for atoms, original in zip(out, frames):
        assert atoms.info["converged"] is True and atoms.info["status"] == "converged"
        assert atoms.info["stage0_status"] == "converged" and atoms.info["stage0_steps"] == atoms.info["n_steps"]
        assert atoms.info["stage0_fmax"] == atoms.info["fmax"]
        assert 0 < atoms.info["n_steps"] <= 400 and atoms.info["fmax"] <= 0.01
        ref = original.copy()
        ref.calc = ase_lj()
        ASEFIRE(ref, logfile=None).run(fmax=0.01, steps=400)
        assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-7)
        assert np.abs(atoms.get_forces()).max() <= 0.01
    assert frames[1].info == {}  # inputs are not modified


def test_relax_out_of_steps_and_bad_fmax():
    out = relax([argon((1, 1, 1), rattle=0.3)], bj_lj(), fmax=1e-6, max_steps=3)
    assert out[0].info["converged"] is False and out[0].info["n_steps"] == 3
    assert out[0].info["status"] == "out_of_steps" and out[0].info["stage0_status"] == "out_of_steps"
    with pytest.raises(ValueError, match="fmax"):
        relax([argon()], bj_lj(), fmax=-1.0)


def test_check_frames_names_the_bad_frame():
    good = argon()
    nan = argon()
    nan.positions[2, 1] = np.nan
    with pytest.raises(ValueError, match="frame 1 has no atoms"):
        check_frames([good, Atoms()])
    with pytest.raises(ValueError, match=r"frame 2 has non-finite .* \(atom 2\)"):
        check_frames([good, good, nan])
    with pytest.raises(ValueError, match="no frames"):
        check_frames([])


def test_atoms_dataset_drops_loop_fields_and_stamps_input_index():
    atoms = argon()
    atoms.info.update({"status": 1, "n_steps": 7, "converged": True, "temperature_target": 300.0})
    data, meta = AtomsDataset([argon(), atoms])[1]
    assert meta == {}
    assert int(data["input_index"].reshape(())) == 1
    assert not data.has_field("status") and not data.has_field("n_steps")
    assert data.has_field("temperature_target")
    assert AtomsDataset([atoms]).get_metadata(0) == (len(atoms), 0)


def test_ase_calculator_model_per_system_calculators():
    """per_system=True: one EMT per system_id (its neighbor list kept), same results as one shared EMT."""
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from batchmd.ase import relax

    frames = []
    for i, symbol in enumerate(["Cu", "Al", "Ni", "Au", "Cu"]):
        atoms = bulk(symbol, "fcc", cubic=True)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    shared = relax(frames, ASECalculatorModel(EMT(), compute_stress=True), fmax=0.02, max_atoms=8)
    model = ASECalculatorModel(EMT(), compute_stress=True, per_system=True)
    own = relax(frames, model, fmax=0.02, max_atoms=8)  # two systems live at a time: refills replace calculators
    for a, b in zip(shared, own):
        assert a.info["n_steps"] == b.info["n_steps"]
        assert np.abs(a.positions - b.positions).max() < 1e-12
        assert abs(a.get_potential_energy() - b.get_potential_energy()) < 1e-10
    assert len(model._calculators) <= 2  # graduated systems' calculators are dropped
    batch = Batch.from_ase(frames[:2], dtype=torch.float64)  # a bare batch (no system_id) works too
    out = model(batch)
    assert torch.isfinite(out["energy"]).all()
