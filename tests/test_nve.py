"""NVE (velocity Verlet) against ase.md.verlet.VelocityVerlet, driving the stage protocol by hand."""

from __future__ import annotations

import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.cluster import Icosahedron
from ase.md.verlet import VelocityVerlet

from batchmd.data import Batch
from batchmd.dynamics.verlet import NVE

SIGMA, EPS = 3.405, 0.0104  # argon


def lj_calc():
    return AseLJ(sigma=SIGMA, epsilon=EPS, rc=2.5 * SIGMA, smooth=True)


def maxwell_boltzmann(atoms, temperature, seed):
    """Gaussian velocities with variance kT/m per component (Å / ASE time unit)."""
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(units.kB * temperature / atoms.get_masses())[:, None]
    atoms.set_velocities(rng.normal(size=(len(atoms), 3)) * sigma)


def argon(kind, temperature, seed):
    if kind == "cluster":
        atoms = Icosahedron("Ar", noshells=2, latticeconstant=5.4)
        atoms.center(vacuum=6.0)
    else:
        atoms = bulk("Ar", "fcc", a=5.3, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=seed)
    maxwell_boltzmann(atoms, temperature, seed)
    return atoms


def make_batch(systems, dtype=torch.float64):
    batch = Batch.from_ase(systems, dtype=dtype)
    for name in ("stage", "status"):
        batch.set_field(name, torch.zeros(batch.num_graphs, dtype=torch.int32), "system")
    calcs = []
    for atoms in systems:
        copy = atoms.copy()
        copy.calc = lj_calc()
        calcs.append(copy)
    return batch, calcs


def write_ase_forces(batch, calcs):
    """Evaluate ASE's LJ on every system at the current positions; returns potential energies."""
    pos = batch.positions.detach().cpu().numpy()
    ptr = batch.ptr.tolist()
    forces, energies = [], []
    for atoms, start, end in zip(calcs, ptr[:-1], ptr[1:]):
        atoms.positions = pos[start:end]
        forces.append(atoms.get_forces())
        energies.append(atoms.get_potential_energy())
    batch.set_field("forces", torch.from_numpy(np.concatenate(forces)).to(batch.dtype), "atom")
    return np.array(energies)


def run_nve(md, batch, calcs, n_steps, record=True):
    md.init_state(batch, torch.ones(batch.num_graphs, dtype=torch.bool))
    epot = [write_ase_forces(batch, calcs)]
    traj = []
    for _ in range(n_steps):
        md.pre_force(batch, 0)
        epot.append(write_ase_forces(batch, calcs))
        md.post_force(batch, 0)
        if record:
            traj.append((batch.positions.clone().numpy(), batch.velocities.clone().numpy()))
    return traj, np.array(epot)


def test_nve_matches_ase_velocity_verlet():
    systems = [argon("cluster", 60.0, 1), argon("crystal", 80.0, 2)]
    n_steps, dt = 60, 2.0
    batch, calcs = make_batch(systems)
    ours, _ = run_nve(NVE(model=lambda b: None, dt=dt), batch, calcs, n_steps)
    ptr = batch.ptr.tolist()
    worst_x = worst_v = 0.0
    for k, atoms in enumerate(systems):
        atoms = atoms.copy()
        atoms.calc = lj_calc()
        dyn = VelocityVerlet(atoms, timestep=dt * units.fs, logfile=None)
        for step in range(n_steps):
            dyn.run(1)
            x, v = ours[step]
            worst_x = max(worst_x, np.abs(x[ptr[k] : ptr[k + 1]] - atoms.get_positions()).max())
            worst_v = max(worst_v, np.abs(v[ptr[k] : ptr[k + 1]] - atoms.get_velocities()).max())
    print(f"NVE vs ASE over {n_steps} steps: max |dx| {worst_x:.2e} Å, max |dv| {worst_v:.2e} Å/t")
    assert worst_x < 1e-10 and worst_v < 1e-10
    assert np.abs(ours[-1][0] - ours[0][0]).max() > 0.05  # atoms really moved


def test_nve_per_system_dt_and_frozen_systems():
    systems = [argon("cluster", 60.0, 3), argon("cluster", 60.0, 3), argon("cluster", 60.0, 3)]
    batch, calcs = make_batch(systems)
    batch["status"][2] = 1  # converged: must not move
    start = batch.positions.clone()
    ours, _ = run_nve(NVE(model=lambda b: None, dt=torch.tensor([1.0, 2.0, 1.0])), batch, calcs, 20)
    ptr = batch.ptr.tolist()
    for k, dt in ((0, 1.0), (1, 2.0)):
        atoms = systems[k].copy()
        atoms.calc = lj_calc()
        VelocityVerlet(atoms, timestep=dt * units.fs, logfile=None).run(20)
        assert np.abs(ours[-1][0][ptr[k] : ptr[k + 1]] - atoms.get_positions()).max() < 1e-10
    assert torch.equal(batch.positions[ptr[2] :], start[ptr[2] :])
    assert batch["nve_dt"].tolist() == [1.0, 2.0, 1.0]


def test_nve_float32_and_missing_velocities():
    atoms = argon("cluster", 60.0, 4)
    del atoms.arrays["momenta"]
    batch, calcs = make_batch([atoms], dtype=torch.float32)
    assert batch.velocities is None
    _, epot = run_nve(NVE(model=lambda b: None, dt=2.0), batch, calcs, 10, record=False)
    assert batch.velocities.dtype == torch.float32 and torch.isfinite(batch.positions).all()
    assert batch.velocities.abs().max() > 0  # the forces of the rattled cluster accelerated it


def test_nve_energy_drift_lj_argon():
    """108-atom FCC argon box, 2 fs, 300 steps: report and bound the total-energy drift."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * (3, 3, 3)
    maxwell_boltzmann(atoms, 80.0, 0)
    batch, calcs = make_batch([atoms])
    n_steps = 300
    md = NVE(model=lambda b: None, dt=2.0)
    md.init_state(batch, torch.ones(1, dtype=torch.bool))
    masses = batch.atomic_masses.numpy()[:, None]
    etot = []
    epot = write_ase_forces(batch, calcs)[0]
    for _ in range(n_steps):
        ekin = 0.5 * float((masses * batch.velocities.numpy() ** 2).sum())
        etot.append(epot + ekin)
        md.pre_force(batch, 0)
        epot = write_ase_forces(batch, calcs)[0]
        md.post_force(batch, 0)
    etot = np.array(etot) / len(atoms)
    fluctuation = np.abs(etot - etot[0]).max()
    slope = np.polyfit(np.arange(n_steps) * 2.0e-3, etot, 1)[0]  # eV/atom/ps
    print(f"NVE LJ argon 108 atoms, 2 fs, {n_steps} steps: max |E-E0| {fluctuation:.2e} eV/atom, "
          f"drift {slope:.2e} eV/atom/ps")
    assert fluctuation < 2e-5
    assert abs(slope) < 1e-5
