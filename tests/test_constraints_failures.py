"""Issue 12, kinds 4 and 5: constraints honoured or refused; one failing system never costs the others.

References: ASE's FIRE / VelocityVerlet with ``FixAtoms`` (float64), and the issue's small inputs.
"""

from __future__ import annotations

import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, fcc100
from ase.calculators.lj import LennardJones as ASELennardJones
from ase.constraints import FixAtoms, FixBondLengths, FixCartesian, FixCom
from ase.md.verlet import VelocityVerlet
from ase.optimize import FIRE as ASEFIRE

from batchmd.ase import check_frames, relax, run_frames
from batchmd.data import AtomicData, Batch
from batchmd.dynamics import NVE, FIRE, ConvergenceHook, FusedStage, NVTLangevin, SizeAwareSampler, SystemStatus
from batchmd.dynamics.constraints import degrees_of_freedom, system_temperature
from batchmd.dynamics.fused import NoProgressWarning
from batchmd.dynamics.sinks import ExtXYZSink, HostMemory, read_extxyz
from batchmd.dynamics.status import FailureReason
from batchmd.models.lj import LennardJones

SIGMA, EPS, RC = 3.405, 0.0104, 8.5125


def lj():
    return LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC)


def ase_lj():
    return ASELennardJones(sigma=SIGMA, epsilon=EPS, rc=RC, smooth=False)


def slab():
    """The issue's input: fcc100 Ar (3x3x4), vacuum 8 Å, rattled 0.15 Å, the 17 bottom atoms fixed."""
    atoms = fcc100("Ar", (3, 3, 4), a=5.3, vacuum=8.0)
    atoms.pbc = (True, True, False)
    atoms.rattle(0.15, seed=0)
    bottom = np.argsort(atoms.positions[:, 2])[:17]
    atoms.set_constraint(FixAtoms(indices=bottom))
    return atoms


def argon32(rattle=0.2, seed=1):
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat(2)
    atoms.rattle(rattle, seed=seed)
    return atoms


# ----------------------------------------------------------------------------- kind 4
def test_fixatoms_relaxation_equals_ase():
    reference = slab()
    reference.calc = ase_lj()
    ASEFIRE(reference, logfile=None).run(fmax=1e-3, steps=2000)
    ase_energy = reference.get_potential_energy()

    start = slab()
    out = relax([start], lj(), fmax=1e-3, max_steps=2000)[0]
    fixed = start.constraints[0].get_indices()
    print(f"fcc100 slab with FixAtoms: batchmd E = {out.get_potential_energy():.8f} eV, ASE {ase_energy:.8f} eV")
    assert out.info["converged"]
    assert abs(out.get_potential_energy() - ase_energy) < 1e-7
    np.testing.assert_array_equal(out.positions[fixed], start.positions[fixed])  # not moved at all
    np.testing.assert_allclose(out.positions, reference.positions, atol=1e-5)
    assert isinstance(out.constraints[0], FixAtoms)  # the returned Atoms carry the constraint
    np.testing.assert_array_equal(out.get_forces()[fixed], 0.0)  # constrained forces, as ASE reports them


def test_fixatoms_nve_and_nvt_keep_fixed_atoms_and_count_dof():
    start = slab()
    fixed = start.constraints[0].get_indices()
    model = lj()
    nve = NVE(model, dt=2.0, n_steps=30, temperature=60.0, random_seed=2)
    batch = nve.run(Batch.from_ase([start]))
    assert torch.equal(batch.positions[fixed], torch.as_tensor(start.positions[fixed]))
    assert float(batch.velocities[fixed].abs().max()) == 0.0
    assert float(degrees_of_freedom(batch)[0]) == 3 * (len(start) - len(fixed))
    # same count as ASE for the same velocities
    atoms = batch.to_ase()[0]
    assert isinstance(atoms.constraints[0], FixAtoms)
    assert abs(float(system_temperature(batch)[0]) - atoms.get_temperature()) < 1e-9
    nvt = NVTLangevin(model, dt=2.0, temperature=60.0, friction=0.05, random_seed=3, n_steps=30)
    batch = nvt.run(Batch.from_ase([start]))
    assert torch.equal(batch.positions[fixed], torch.as_tensor(start.positions[fixed]))
    assert float(batch.velocities[fixed].abs().max()) == 0.0


def test_fixatoms_velocity_verlet_equals_ase():
    start = slab()
    start.set_momenta(np.random.default_rng(5).normal(scale=0.02, size=(len(start), 3)))  # constraint zeroes fixed
    reference = start.copy()
    reference.calc = ase_lj()
    VelocityVerlet(reference, timestep=2.0 * units.fs).run(20)
    out = run_frames([start], [NVE(lj(), dt=2.0, n_steps=20)]).frames[0]
    np.testing.assert_allclose(out.positions, reference.positions, atol=1e-10)
    np.testing.assert_allclose(out.get_momenta(), reference.get_momenta(), atol=1e-10)


def test_fixatoms_travels_through_refills_and_files(tmp_path):
    frames = [slab() if k % 2 else argon32(seed=k) for k in range(6)]
    path = tmp_path / "out.extxyz"
    result = run_frames(frames, [FIRE(lj(), convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=300)],
                        max_atoms=70, max_batch_size=2, refill_frequency=3, sinks=[ExtXYZSink(path)])
    for k, atoms in enumerate(result.frames):
        if k % 2:
            fixed = frames[k].constraints[0].get_indices()
            np.testing.assert_array_equal(atoms.positions[fixed], frames[k].positions[fixed])
    back = read_extxyz(path)
    with_mask = [a for a in back if a.constraints]
    assert len(with_mask) == 3 and all(isinstance(a.constraints[0], FixAtoms) for a in with_mask)
    batch = Batch.from_ase(back)
    assert int(batch["fixed"].sum()) == 3 * 17


def test_other_constraints_are_refused_by_name_or_dropped_knowingly():
    atoms = argon32()
    atoms.set_constraint(FixBondLengths([(0, 1)]))
    with pytest.raises(ValueError, match="frame 0 has ASE constraint FixBondLengths"):
        check_frames([atoms])
    with pytest.raises(ValueError, match="FixBondLengths is not supported"):
        AtomicData.from_ase(atoms)
    with pytest.raises(ValueError, match="frame 1: .*FixCartesian"):
        other = argon32()
        other.set_constraint(FixCartesian(0))
        Batch.from_ase([argon32(), other])
    assert not AtomicData.from_ase(atoms, ignore_constraints=True).has_field("fixed")
    out = run_frames([atoms], [FIRE(lj(), convergence_hook=ConvergenceHook.from_forces(0.05))],
                     ignore_constraints=True).frames[0]
    assert out.info["converged"]


# ----------------------------------------------------------------------------- kind 5
def test_invalid_input_is_rejected_up_front_naming_frame_and_atom():
    nan_momentum = argon32()
    momenta = np.zeros((32, 3))
    momenta[5, 1] = np.nan
    nan_momentum.set_momenta(momenta, apply_constraint=False)
    with pytest.raises(ValueError, match=r"frame 1 has non-finite \(NaN/inf\) momenta \(atom 5\)"):
        run_frames([argon32(), nan_momentum], [NVE(lj(), dt=2.0, n_steps=5)])
    close = argon32(rattle=0.0)
    close.positions[3] = close.positions[7] + 0.05
    with pytest.raises(ValueError, match="frame 0 has atoms 3 and 7 closer than min_distance"):
        check_frames([close])
    flat = argon32()
    flat.cell[2] = flat.cell[0]
    with pytest.raises(ValueError, match="zero volume"):
        check_frames([flat])
    with pytest.raises(ValueError, match=r"frame 1: .*velocities.*atom 5"):
        Batch.from_ase([argon32(), nan_momentum])


class PoisonOne:
    """Lennard-Jones, except that system ``system_id == bad`` gets NaN forces from step ``after`` on."""

    def __init__(self, bad: int, after: int = 3):
        self.inner = lj()
        self.bad = bad
        self.after = after
        self.calls = 0

    computes_stress = True

    def __call__(self, batch):
        out = self.inner(batch)
        self.calls += 1
        if self.calls > self.after and batch.has_field("system_id"):
            hit = (batch.system_id.reshape(-1) == self.bad)[batch.batch_idx.long()]
            forces = out["forces"].clone()
            forces[hit] = float("nan")
            out = dict(out, forces=forces)
        return out


def test_a_system_failing_mid_run_is_reported_and_every_healthy_result_written(tmp_path):
    frames = [argon32(seed=k) for k in range(4)]
    path = tmp_path / "out.extxyz"
    model = PoisonOne(bad=1)
    result = run_frames(frames, [NVE(model, dt=2.0, n_steps=20, temperature=50.0, random_seed=1)],
                        max_atoms=64, refill_frequency=4, sinks=[ExtXYZSink(path)])
    status = [a.info["status"] for a in result.frames]
    assert status == ["completed", "failed", "completed", "completed"]
    assert result.frames[1].info["failure"].startswith("non-finite forces")
    assert all("failure" not in a.info for k, a in enumerate(result.frames) if k != 1)
    assert len(read_extxyz(path)) == 4  # the failed system reached the sink too
    assert result.stats.systems_failed == 1


def test_the_issue_nan_case_through_the_cli(tmp_path, capsys):
    from batchmd.cli.main import main

    good = argon32()
    bad = argon32(seed=2)
    momenta = np.zeros((32, 3))
    momenta[4, 0] = np.nan
    bad.set_momenta(momenta, apply_constraint=False)
    path = tmp_path / "in.extxyz"
    ase.io.write(path, [good, bad])
    out = tmp_path / "out.extxyz"
    rc = main(["md", str(path), "-o", str(out), "--ensemble", "nve", "--temperature", "300", "--steps", "5",
               "--dt", "2", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and "frame 1 has non-finite (NaN/inf) momenta (atom 4)" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_failure_during_a_cli_run_is_written_and_named(tmp_path, capsys, monkeypatch):
    from batchmd.cli import models
    from batchmd.cli.main import main

    real = models.build_model
    monkeypatch.setattr(models, "build_model", lambda *a, **k: PoisonOne(bad=1, after=2))
    path = tmp_path / "in.extxyz"
    ase.io.write(path, [argon32(seed=0), argon32(seed=1)])
    out = tmp_path / "out.extxyz"
    rc = main(["md", str(path), "-o", str(out), "--ensemble", "nve", "--temperature", "30", "--steps", "6",
               "--dt", "2", "--quiet"])
    assert rc == 3  # finished, every frame written, one failed
    frames = ase.io.read(out, index=":")
    assert [a.info["status"] for a in frames] == ["completed", "failed"]
    assert "non-finite forces" in frames[1].info["failure"]
    assert "frame 1 failed: non-finite forces" in capsys.readouterr().err
    assert real is not None


def test_failure_bits_in_batch_mode():
    model = PoisonOne(bad=0, after=1)
    batch = Batch.from_ase([argon32(seed=0), argon32(seed=1)])
    batch.set_field("system_id", torch.tensor([[0], [1]]), "system")
    out = NVE(model, dt=1.0, n_steps=5).run(batch)
    assert out["status"].tolist() == [SystemStatus.FAILED, SystemStatus.CONVERGED]
    assert out["failure"].tolist() == [int(FailureReason.NONFINITE_FORCES), 0]


def mixed_cluster():
    """Ar/Ne cluster (unequal masses) away from equilibrium."""
    atoms = bulk("Ar", "fcc", a=5.4, cubic=True).repeat((2, 1, 1))
    atoms.pbc = False
    atoms.center(vacuum=4.0)
    atoms.rattle(0.2, seed=4)
    atoms.numbers[::3] = 10
    atoms.set_constraint(FixCom())
    return atoms


def test_fixcom_relaxation_equals_ase_with_unequal_masses():
    reference = mixed_cluster()
    reference.calc = ase_lj()
    ASEFIRE(reference, logfile=None).run(fmax=1e-3, steps=2000)
    start = mixed_cluster()
    out = relax([start], lj(), fmax=1e-3, max_steps=2000)[0]
    assert out.info["converged"]
    print(f"FixCom FIRE: batchmd E = {out.get_potential_energy():.8f} eV, ASE {reference.get_potential_energy():.8f}")
    assert abs(out.get_potential_energy() - reference.get_potential_energy()) < 1e-7
    np.testing.assert_allclose(out.positions, reference.positions, atol=1e-6)
    np.testing.assert_allclose(out.get_center_of_mass(), start.get_center_of_mass(), atol=1e-10)
    assert any(isinstance(c, FixCom) for c in out.constraints)


def test_fixcom_md_equals_ase_and_keeps_the_centre_of_mass():
    start = argon32()
    start.set_constraint(FixCom())
    start.set_momenta(np.random.default_rng(3).normal(scale=0.05, size=(32, 3)))  # COM part removed by ASE
    reference = start.copy()
    reference.calc = ase_lj()
    VelocityVerlet(reference, timestep=2.0 * units.fs).run(20)
    out = run_frames([start], [NVE(lj(), dt=2.0, n_steps=20)]).frames[0]
    np.testing.assert_allclose(out.positions, reference.positions, atol=1e-10)
    np.testing.assert_allclose(out.get_momenta(), reference.get_momenta(), atol=1e-10)
    com = start.get_center_of_mass()
    nvt = run_frames([start], [NVTLangevin(lj(), dt=2.0, temperature=100.0, friction=0.05, random_seed=1,
                                           n_steps=30)]).frames[0]
    np.testing.assert_allclose(nvt.get_center_of_mass(), com, atol=1e-10)
    assert float(np.abs(nvt.get_momenta().sum(axis=0)).max()) < 1e-12
    batch = Batch.from_ase([nvt])
    assert float(degrees_of_freedom(batch)[0]) == 3 * 32 - 3
    assert abs(float(system_temperature(batch)[0]) - nvt.get_temperature()) < 1e-9


def test_a_hook_that_fails_a_system_gives_it_a_reason():
    from batchmd.dynamics.hooks import Hook, HookStage

    class FailFirst(Hook):
        stage = HookStage.AFTER_STEP
        frequency = 3

        def __call__(self, batch, context):
            batch["status"].masked_fill_(batch.system_id.reshape(-1) == 0, int(SystemStatus.FAILED))

    frames = [argon32(seed=0), argon32(seed=1)]
    out = run_frames(frames, [NVE(lj(), dt=1.0, n_steps=10)], hooks=[FailFirst()]).frames
    assert [a.info["status"] for a in out] == ["failed", "completed"]
    assert out[0].info["failure"] == "marked failed by a hook at step 3"  # the step is named (issue 20)


def test_fixatoms_and_fixcom_with_lbfgs_equal_ase():
    """A later optimiser (LBFGS) honours the constraints through the loop's force projection alone."""
    from ase.optimize import LBFGS as ASELBFGS

    from batchmd.dynamics.lbfgs import LBFGS

    for make in (slab, mixed_cluster):
        reference = make()
        reference.calc = ase_lj()
        ASELBFGS(reference, logfile=None).run(fmax=1e-3, steps=1000)
        out = run_frames([make()], [LBFGS(lj(), convergence_hook=ConvergenceHook.from_forces(1e-3),
                                          n_steps=1000)]).frames[0]
        assert out.info["converged"]
        assert abs(out.get_potential_energy() - reference.get_potential_energy()) < 1e-7
        np.testing.assert_allclose(out.positions, reference.positions, atol=1e-6)


def test_fixatoms_under_a_frechet_cell_filter_equals_ase():
    """FIRE + FrechetCellFilter with FixAtoms: as ASE (fixed atoms follow only the cell deformation)."""
    from ase.filters import FrechetCellFilter as ASEFrechetCellFilter

    from batchmd.dynamics.cell_filter import FrechetCellFilter

    def make():
        atoms = bulk("Ar", "fcc", a=5.5, cubic=True).repeat(2)
        atoms.rattle(0.1, seed=2)
        atoms.set_constraint(FixAtoms(indices=[0, 5]))
        return atoms

    reference = make()
    reference.calc = ase_lj()
    ASEFIRE(ASEFrechetCellFilter(reference), logfile=None).run(fmax=1e-3, steps=2000)
    out = run_frames([make()], [FIRE(lj(), convergence_hook=ConvergenceHook.from_forces(1e-3), n_steps=2000,
                                     cell_filter=FrechetCellFilter())]).frames[0]
    assert abs(out.get_potential_energy() - reference.get_potential_energy()) < 1e-9
    np.testing.assert_allclose(out.positions, reference.positions, atol=1e-8)
    np.testing.assert_allclose(out.cell.array, reference.cell.array, atol=1e-8)
