"""Issue 12, kinds 1 and 2: a returned batch runs again; optimiser velocities never become physics.

References: ASE (FIRE, VelocityVerlet, MaxwellBoltzmannDistribution + Stationary) in float64,
and analytic Maxwell-Boltzmann statistics.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as ASELennardJones
from ase.md.verlet import VelocityVerlet
from ase.optimize import FIRE as ASEFIRE

from batchmd.ase import relax, run_frames
from batchmd.data import Batch
from batchmd.dynamics import NVE, FIRE, ConvergenceHook, FusedStage, NVTLangevin, SystemStatus
from batchmd.dynamics.constraints import system_temperature
from batchmd.dynamics.fused import NoProgressWarning
from batchmd.models.lj import LennardJones

SIGMA, EPS, RC = 3.405, 0.0104, 8.5125


def lj():
    return LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC)


def ase_lj():
    return ASELennardJones(sigma=SIGMA, epsilon=EPS, rc=RC, smooth=False)


def argon32(rattle=0.2, seed=1):
    """The issue's input: fcc argon, a = 5.3 Å, 2x2x2 cubic cells (32 atoms), rattled."""
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat(2)
    atoms.rattle(rattle, seed=seed)
    return atoms


# ----------------------------------------------------------------------------- kind 1
def test_returned_fire_batch_runs_again_in_nvt_and_nve():
    model = lj()
    relaxed = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=500).run(
        Batch.from_ase([argon32()]))
    assert int(relaxed["status"][0]) == SystemStatus.CONVERGED
    start = relaxed.positions.clone()
    nvt = NVTLangevin(model, dt=2.0, temperature=300.0, friction=0.01, random_seed=1, n_steps=100).run(relaxed)
    moved = float((nvt.positions - start).norm(dim=1).max())
    assert moved > 0.05, moved
    assert int(nvt["n_steps"][0]) == 100 and int(nvt["status"][0]) == SystemStatus.CONVERGED
    again = nvt.positions.clone()
    nve = NVE(model, dt=2.0, n_steps=50).run(nvt)
    assert int(nve["n_steps"][0]) == 50 and float((nve.positions - again).norm(dim=1).max()) > 0.01


def test_fire_out_of_steps_then_a_new_fire_run_continues_like_ase():
    """ASE: FIRE(steps=20) then a new FIRE converges; batchmd's new run starts FIRE fresh the same way."""
    atoms = argon32()
    atoms.calc = ase_lj()
    first = ASEFIRE(atoms, logfile=None)
    first.run(fmax=1e-4, steps=20)
    second = ASEFIRE(atoms, logfile=None)
    assert second.run(fmax=1e-4, steps=300)
    ase_steps = first.nsteps + second.nsteps

    model = lj()
    out = FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-4), n_steps=20).run(
        Batch.from_ase([argon32()]))
    assert int(out["status"][0]) == SystemStatus.OUT_OF_STEPS
    first_steps = int(out["n_steps"][0])
    out = FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-4), n_steps=300).run(out)
    assert int(out["status"][0]) == SystemStatus.CONVERGED
    total = first_steps + int(out["n_steps"][0])
    print(f"FIRE 20 + continue: batchmd {total} steps, ASE {ase_steps} steps")
    assert total == ase_steps
    np.testing.assert_allclose(out.positions.numpy(), atoms.positions, atol=1e-8)


def test_repeated_langevin_runs_sample_new_configurations_and_chain_exactly():
    model = lj()
    base = Batch.from_ase([argon32()])
    nvt = NVTLangevin(model, dt=2.0, temperature=300.0, friction=0.01, random_seed=1, n_steps=25)
    first = nvt.run(base).positions.clone()
    batch = nvt.run(base)
    second = batch.positions.clone()
    assert float((second - first).norm(dim=1).max()) > 1e-3  # a new configuration, not the same one
    # Two chained 25-step runs equal one 50-step run: the stream continues (rng_counter), velocities kept.
    long = NVTLangevin(model, dt=2.0, temperature=300.0, friction=0.01, random_seed=1, n_steps=50).run(
        Batch.from_ase([argon32()]))
    assert torch.equal(long.positions, second)
    assert int(batch["rng_counter"][0]) == 51  # one Maxwell-Boltzmann draw (no input velocities) + 50 steps


def test_resume_is_an_explicit_choice():
    model = lj()
    loop = FusedStage([FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-3), n_steps=400)])
    whole = loop.run(Batch.from_ase([argon32()]))
    part = loop.run(Batch.from_ase([argon32()]), n_steps=10)
    assert int(part["status"][0]) == SystemStatus.ACTIVE and int(part["n_steps"][0]) == 10
    done = loop.run(part, resume=True)
    assert int(done["n_steps"][0]) == int(whole["n_steps"][0])
    assert torch.equal(done.positions, whole.positions)
    # the same through a method's own run
    fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-3), n_steps=400)
    part = fire.run(Batch.from_ase([argon32()]), n_steps=10)
    assert torch.equal(fire.run(part, resume=True).positions, whole.positions)
    # without resume the same batch starts over: FIRE's state is reset, so the path differs
    fresh = fire.run(fire.run(Batch.from_ase([argon32()]), n_steps=10))
    assert int(fresh["n_steps"][0]) != int(whole["n_steps"][0]) or not torch.equal(fresh.positions, whole.positions)


def test_a_run_that_advances_no_system_warns():
    model = lj()
    relaxed = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=300).run(
        Batch.from_ase([argon32()]))
    with pytest.warns(NoProgressWarning, match="no system took a step"):
        out = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=300).run(relaxed)
    assert int(out["n_steps"][0]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoProgressWarning)
        FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-3), n_steps=300).run(relaxed)


# ----------------------------------------------------------------------------- kind 2
def test_fire_then_nve_starts_from_rest_like_ase():
    """The issue's case: FIRE (fmax 0.01) then one NVE step of 2 fs ends at ~1e-4 K, as in ASE."""
    atoms = argon32()
    atoms.calc = ase_lj()
    ASEFIRE(atoms, logfile=None).run(fmax=0.01)
    VelocityVerlet(atoms, timestep=2.0 * units.fs).run(1)
    ase_temperature = atoms.get_temperature()

    model = lj()
    out = run_frames([argon32()], [FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.01)),
                                   NVE(model, dt=2.0, n_steps=1)]).frames[0]
    temperature = out.get_temperature()
    print(f"FIRE + 1 NVE step: batchmd {temperature:.3e} K, ASE {ase_temperature:.3e} K")
    assert ase_temperature < 1e-3
    assert abs(temperature - ase_temperature) < 1e-3 * ase_temperature + 1e-9


def test_optimizer_velocities_never_reach_momenta():
    model = lj()
    frames = relax([argon32()], model, fmax=0.01)
    assert not frames[0].has("momenta")
    batch = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.01)).run(Batch.from_ase([argon32()]))
    assert batch.velocities is None and batch.to_ase()[0].get_momenta().max() == 0.0
    given = argon32()
    given.set_momenta(np.full((len(given), 3), 0.01))
    kept = relax([given], model, fmax=0.01)[0]
    np.testing.assert_allclose(kept.get_momenta(), given.get_momenta(), rtol=1e-14)  # as ase FIRE: untouched


def test_md_after_fire_draws_maxwell_boltzmann_and_keeps_physical_velocities():
    model = lj()
    fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05))
    out = run_frames([argon32()], [fire, NVE(model, dt=1.0, n_steps=1, temperature=300.0, random_seed=3)]).frames[0]
    assert 100.0 < out.get_temperature() < 600.0
    # A second MD stage keeps the first one's velocities (they are physical).
    nvt = NVTLangevin(model, dt=1.0, temperature=50.0, friction=0.01, random_seed=4, n_steps=2)
    chained = FusedStage([NVE(model, dt=1.0, n_steps=0, temperature=300.0, random_seed=3, velocities="maxwell_boltzmann"),
                          NVE(model, dt=1.0, n_steps=1)]).run(Batch.from_ase([argon32(rattle=0.0)]))
    assert float(system_temperature(chained)[0]) > 100.0
    # "keep" keeps file momenta; "zero" starts from rest
    given = argon32()
    given.set_momenta(np.random.default_rng(0).normal(scale=0.05, size=(len(given), 3)))
    warnings.simplefilter("ignore", NoProgressWarning)  # n_steps=0: only the stage entry runs
    b = NVE(model, dt=1.0, n_steps=0, velocities="keep").run(Batch.from_ase([given]))
    np.testing.assert_allclose(b.velocities.numpy(), given.get_velocities(), atol=1e-14)
    b = NVE(model, dt=1.0, n_steps=0, velocities="zero").run(Batch.from_ase([given]))
    assert float(b.velocities.abs().max()) == 0.0
    b = nvt.run(Batch.from_ase([given]))  # auto at the run's first stage: momenta from the input are kept
    assert int(b["rng_counter"][0]) == 2  # two Langevin steps, no draw


def test_maxwell_boltzmann_draw_statistics_and_identity_keying():
    """MB + Stationary: zero momentum, mean temperature T, Gaussian components; keyed on system_id only."""
    from scipy import stats

    n_atoms, n_systems, temperature = 16, 120, 300.0
    frames = []
    for k in range(n_systems):
        atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat((2, 2, 1))
        atoms.info["system_id"] = k
        frames.append(atoms)
    model = lj()
    stage = NVE(model, dt=1.0, n_steps=0, temperature=temperature, random_seed=11, velocities="maxwell_boltzmann")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoProgressWarning)
        batch = stage.run(Batch.from_ase(frames))
    v = batch.velocities.reshape(n_systems, n_atoms, 3)
    m = batch.atomic_masses.reshape(n_systems, n_atoms, 1)
    momentum = (m * v).sum(dim=1)
    assert float(momentum.abs().max()) < 1e-12
    temps = system_temperature(batch)  # 3N degrees of freedom, as ASE's get_temperature
    mean, sigma = float(temps.mean()), temperature * np.sqrt(2.0 / (3 * n_atoms * n_systems))
    print(f"MB draw: mean T {mean:.1f} K (expected {temperature} +- {sigma:.1f})")
    assert abs(mean - temperature) < 4 * sigma
    z = (v * torch.sqrt(m / (units.kB * temperature))).reshape(-1).numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # Keyed on the system's identity: the same draw alone, in another order, in another batch.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoProgressWarning)
        alone = stage.run(Batch.from_ase([frames[7]]))
        shuffled = stage.run(Batch.from_ase([frames[9], frames[7], frames[3]]))
    assert torch.equal(alone.velocities, v[7])
    assert torch.equal(shuffled.velocities[n_atoms:2 * n_atoms], v[7])


def test_cli_relax_writes_no_optimizer_momenta_and_md_draws_its_temperature(tmp_path):
    """The issue's CLI chain: relax, then 300 K NVE on the relaxed file (7 K before the fix)."""
    import ase.io

    from batchmd.cli.main import main

    source = tmp_path / "in.extxyz"
    ase.io.write(source, [argon32(seed=k) for k in range(3)])
    relaxed, md = tmp_path / "relaxed.extxyz", tmp_path / "md.extxyz"
    assert main(["relax", str(source), "-o", str(relaxed), "--fmax", "0.01", "--quiet"]) == 0
    assert not any(a.has("momenta") for a in ase.io.read(relaxed, index=":"))
    assert main(["md", str(relaxed), "-o", str(md), "--ensemble", "nve", "--temperature", "300", "--steps", "40",
                 "--dt", "2", "--seed", "1", "--quiet"]) == 0
    temperatures = [a.get_temperature() for a in ase.io.read(md, index=":")]
    print("NVE from a relaxed file, 300 K draw, after 40 steps:", [round(t, 1) for t in temperatures])
    assert all(80.0 < t < 300.0 for t in temperatures)  # equipartition: ~150 K


def test_status_names_reads_the_status_field_as_names():
    from batchmd.dynamics import status_names
    from batchmd.data import Batch

    frames = [bulk("Ar", "fcc", a=5.26, cubic=True) for _ in range(2)]
    frames[1].rattle(0.1, seed=3)
    batch = Batch.from_ase(frames, dtype=torch.float64)
    model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
    out = FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-6), n_steps=2).run(batch)
    assert status_names(out) == ["converged", "out_of_steps"]


def test_a_model_is_never_applied_to_elements_it_has_no_parameters_for():
    from batchmd.dynamics import SizeAwareSampler
    from batchmd.models.base import UnsupportedSpeciesError

    argon = LennardJones()  # argon preset: Ar only
    copper = Batch.from_ase([bulk("Cu", "fcc", a=3.6, cubic=True)], dtype=torch.float64)
    with pytest.raises(UnsupportedSpeciesError, match="Cu"):
        FIRE(argon, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=5).run(copper)
    # inflight: a later sample holding an uncovered element is refused when it is served (admission): written
    # as failed with the reason, never evaluated, and a warning names it; the others run (issue 20)
    frames = [bulk("Ar", "fcc", a=5.26, cubic=True), bulk("Ar", "fcc", a=5.3, cubic=True),
              bulk("Kr", "fcc", a=5.7, cubic=True)]
    from batchmd.ase import AtomsDataset
    from batchmd.dynamics.admission import AdmissionWarning
    from batchmd.dynamics.sinks import HostMemory

    sampler = SizeAwareSampler(AtomsDataset(frames, dtype=torch.float64), max_atoms=4, max_batch_size=1)
    memory = HostMemory(capacity=3)
    stage = FusedStage([FIRE(argon, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=50)],
                       sampler=sampler, sinks=[memory], refill_frequency=1)
    with pytest.warns(AdmissionWarning, match=r"system_id 2 .*no parameters for Kr"):
        stage.run()
    out = memory.drain()
    failed = {int(i): int(s) for i, s in zip(out["system_id"].reshape(-1), out["status"].reshape(-1))}
    assert failed[2] == 3 and failed[0] != 3 and failed[1] != 3


def test_run_frames_refuses_uncovered_elements_before_running():
    from batchmd.models.base import UnsupportedSpeciesError

    frames = [bulk("Ar", "fcc", a=5.26, cubic=True), bulk("Cu", "fcc", a=3.6, cubic=True)]
    with pytest.raises(UnsupportedSpeciesError, match=r"Cu.*\(frame 1\)"):
        run_frames(frames, FIRE(LennardJones(), convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=5))
