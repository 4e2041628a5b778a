"""NVTLangevin (BAOAB): batch invariance of the noise, canonical statistics, per-system parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.cluster import Icosahedron
from scipy import stats

from batchmd.data import Batch
from batchmd.dynamics.langevin import NVTLangevin

SIGMA, EPS = 3.405, 0.0104  # argon
P_MIN = 1e-3  # KS p-value threshold


def lj_calc():
    return AseLJ(sigma=SIGMA, epsilon=EPS, rc=2.5 * SIGMA, smooth=True)


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
    pos = batch.positions.detach().cpu().numpy()
    ptr = batch.ptr.tolist()
    forces = []
    for atoms, start, end in zip(calcs, ptr[:-1], ptr[1:]):
        atoms.positions = pos[start:end]
        forces.append(atoms.get_forces())
    batch.set_field("forces", torch.from_numpy(np.concatenate(forces)).to(batch.dtype), "atom")


def step(md, batch, force_fn):
    md.pre_force(batch, 0)
    force_fn(batch)
    md.post_force(batch, 0)


def start(md, batch, force_fn):
    md.init_state(batch, torch.ones(batch.num_graphs, dtype=torch.bool))
    force_fn(batch)


def free_gas(n_atoms, symbol, system_id):
    atoms = Atoms(symbol * n_atoms if len(symbol) == 1 else [symbol] * n_atoms,
                  positions=np.zeros((n_atoms, 3)), cell=[100.0] * 3)
    atoms.info["system_id"] = system_id
    return atoms


def zero_forces(batch):
    batch.set_field("forces", torch.zeros_like(batch.positions), "atom")


def cluster(seed, system_id):
    atoms = Icosahedron("Ar", noshells=2, latticeconstant=5.4)
    atoms.rattle(0.1, seed=seed)
    atoms.center(vacuum=6.0)
    atoms.info["system_id"] = system_id
    return atoms


def crystal(seed, system_id):
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=seed)
    atoms.info["system_id"] = system_id
    return atoms


def test_trajectory_is_batch_invariant_bitwise():
    """A system alone and in slot 2 of a mixed batch follows the same trajectory bitwise."""
    n_steps = 30

    def run(systems):
        batch, calcs = make_batch(systems)
        md = NVTLangevin(model=lambda b: None, dt=2.0, temperature=120.0, friction=0.02, random_seed=1234)
        start(md, batch, lambda b: write_ase_forces(b, calcs))
        for _ in range(n_steps):
            step(md, batch, lambda b: write_ase_forces(b, calcs))
        return batch

    alone = run([cluster(1, system_id=42)])
    mixed = run([crystal(2, system_id=7), cluster(3, system_id=8), cluster(1, system_id=42)])
    lo = mixed.ptr.tolist()[2]
    assert torch.equal(alone.positions, mixed.positions[lo:])
    assert torch.equal(alone.velocities, mixed.velocities[lo:])
    assert alone["nvt_step"].tolist() == [n_steps] and mixed["nvt_step"].tolist() == [n_steps] * 3
    assert not torch.equal(mixed.positions[lo:], mixed.positions[mixed.ptr[1] : lo])  # it moved differently


def test_noise_depends_on_system_id_and_seed():
    def velocities(ids, seed):
        batch, _ = make_batch([free_gas(20, "Ar", i) for i in ids])
        md = NVTLangevin(model=lambda b: None, dt=1.0, temperature=300.0, friction=0.5, random_seed=seed)
        start(md, batch, zero_forces)
        step(md, batch, zero_forces)
        return batch.velocities.reshape(len(ids), 20, 3)

    v = velocities([5, 5, 6], seed=0)
    assert torch.equal(v[0], v[1]) and not torch.equal(v[0], v[2])
    assert not torch.equal(velocities([5], seed=1)[0], v[0])


def test_free_particles_maxwell_boltzmann_per_system_temperature():
    """Free particles: v ~ N(0, kT/m) exactly under BAOAB; two temperatures, two masses, one batch."""
    temps = torch.tensor([50.0, 300.0, 50.0, 300.0], dtype=torch.float64)
    systems = [free_gas(500, "Ar", 0), free_gas(500, "Ar", 1), free_gas(500, "He", 2), free_gas(500, "He", 3)]
    batch, _ = make_batch(systems)
    md = NVTLangevin(model=lambda b: None, dt=2.0, temperature=temps, friction=0.05, random_seed=3)
    start(md, batch, zero_forces)
    samples = [[] for _ in systems]
    for n in range(1, 501):
        step(md, batch, zero_forces)
        if n > 100 and n % 50 == 0:  # gamma*dt*50 = 5: snapshots decorrelated (c1^50 = e^-5)
            for k, (lo, hi) in enumerate(zip(batch.ptr.tolist()[:-1], batch.ptr.tolist()[1:])):
                samples[k].append(batch.velocities[lo:hi].numpy().copy())
    masses = [39.948, 39.948, 4.0026, 4.0026]
    for k, T in enumerate(temps.tolist()):
        v = np.concatenate(samples[k])
        z = (v / np.sqrt(units.kB * T / masses[k])).ravel()
        p = stats.kstest(z, "norm").pvalue
        t_kin = masses[k] * (v**2).mean() / units.kB
        err = np.sqrt(2.0 / z.size)  # relative std of the mean of z^2
        print(f"free particles system {k}: T={T:.0f} K, T_kin={t_kin:.2f} K, KS p={p:.3f}")
        assert p > P_MIN
        assert abs(t_kin / T - 1.0) < 4 * err


def test_harmonic_oscillators_sample_boltzmann_positions():
    """Independent 3D oscillators: BAOAB samples x ~ N(0, kT/k) exactly; v ~ N(0, kT/m)."""
    k_spring, T, n_atoms = 0.5, 150.0, 800
    atoms = free_gas(n_atoms, "Ar", 9)
    batch, _ = make_batch([atoms])

    def spring(b):
        b.set_field("forces", -k_spring * b.positions, "atom")

    md = NVTLangevin(model=lambda b: None, dt=4.0, temperature=T, friction=0.02, random_seed=11)
    start(md, batch, spring)
    xs, vs = [], []
    for n in range(1, 2201):
        step(md, batch, spring)
        if n > 200 and n % 100 == 0:
            xs.append(batch.positions.numpy().copy())
            vs.append(batch.velocities.numpy().copy())
    x = np.concatenate(xs).ravel() / np.sqrt(units.kB * T / k_spring)
    v = np.concatenate(vs).ravel() / np.sqrt(units.kB * T / 39.948)
    px, pv = stats.kstest(x, "norm").pvalue, stats.kstest(v, "norm").pvalue
    print(f"harmonic oscillators: <x^2>/(kT/k)={np.mean(x**2):.4f}, <v^2>/(kT/m)={np.mean(v**2):.4f}, "
          f"KS p(x)={px:.3f}, p(v)={pv:.3f}")
    assert px > P_MIN and abs(np.mean(x**2) - 1.0) < 4 * np.sqrt(2.0 / x.size)
    # velocities at the end of a BAOAB step carry an O(dt^2) bias: (omega dt)^2/4 ~ 1e-3 here
    assert pv > P_MIN and abs(np.mean(v**2) - 1.0) < 4 * np.sqrt(2.0 / v.size) + 2e-3


def test_frozen_systems_and_float32():
    systems = [free_gas(50, "Ar", 0), free_gas(50, "Ar", 1)]
    batch, _ = make_batch(systems, dtype=torch.float32)
    batch["status"][1] = 1
    md = NVTLangevin(model=lambda b: None, dt=2.0, temperature=300.0, friction=0.1, random_seed=0)
    start(md, batch, zero_forces)
    for _ in range(20):
        step(md, batch, zero_forces)
    assert batch.velocities.dtype == torch.float32
    assert torch.count_nonzero(batch.velocities[50:]) == 0 and torch.count_nonzero(batch.velocities[:50]) > 0
    assert batch["nvt_step"].tolist() == [20, 0]
    md.init_state(batch, torch.tensor([True, False]))
    assert batch["nvt_step"].tolist() == [0, 0]


def test_zero_friction_is_velocity_verlet():
    from batchmd.dynamics.verlet import NVE

    systems = [cluster(4, 1)]
    systems[0].set_velocities(np.random.default_rng(0).normal(scale=0.01, size=(13, 3)))
    out = []
    for md in (NVTLangevin(model=lambda b: None, dt=2.0, temperature=300.0, friction=0.0), NVE(lambda b: None, dt=2.0)):
        batch, calcs = make_batch(systems)
        start(md, batch, lambda b: write_ase_forces(b, calcs))
        for _ in range(20):
            step(md, batch, lambda b: write_ase_forces(b, calcs))
        out.append(batch.positions.clone())
    assert torch.allclose(out[0], out[1], atol=1e-12, rtol=0)


@pytest.mark.slow
def test_lj_argon_canonical_statistics():
    """108-atom LJ argon at 100 K: mean kinetic temperature and per-atom kinetic energy distribution."""
    T = 100.0
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * (3, 3, 3)
    atoms.info["system_id"] = 0
    batch, calcs = make_batch([atoms])
    md = NVTLangevin(model=lambda b: None, dt=2.0, temperature=T, friction=0.01, random_seed=2024)
    forces = lambda b: write_ase_forces(b, calcs)  # noqa: E731
    start(md, batch, forces)
    masses = batch.atomic_masses.numpy()
    ekin, temps = [], []
    for n in range(1, 5501):
        step(md, batch, forces)
        if n > 500 and n % 50 == 0:  # 100 fs apart = 1/friction
            e = 0.5 * masses * (batch.velocities.numpy() ** 2).sum(axis=1)
            ekin.append(e)
            temps.append(2.0 * e.sum() / (3 * len(atoms) * units.kB))
    ekin = np.concatenate(ekin)
    p = stats.kstest(ekin, stats.gamma(a=1.5, scale=units.kB * T).cdf).pvalue
    t_mean = float(np.mean(temps))
    err = T * np.sqrt(2.0 / (3 * len(atoms))) / np.sqrt(len(temps))
    print(f"LJ argon NVT: <T_kin>={t_mean:.2f} K (target {T}, stat. error {err:.2f} K), "
          f"KS p (Gamma(3/2, kT))={p:.3f} over {ekin.size} samples")
    assert abs(t_mean - T) < 4 * err
    assert p > P_MIN
