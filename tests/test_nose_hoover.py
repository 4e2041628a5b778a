"""NoseHooverChainNVT against ase.md.nose_hoover_chain.NoseHooverChainNVT, batch invariance, statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.md.nose_hoover_chain import NoseHooverChainNVT as AseNHC
from scipy import stats

from batchmd.dynamics import NoseHooverChainNVT
from md_argon import argon, ase_lj, batchmd_lj, system_rows, to_batch


def test_nose_hoover_chain_matches_ase_step_for_step():
    """Two strained triclinic cells smaller than 2 rc, per-system parameters in one batch, 60 steps."""
    systems = [argon("cubic", 1, 60.0), argon("primitive", 2, 30.0)]
    params = [dict(temperature=80.0, tdamp=30.0, tchain=3, tloop=1), dict(temperature=40.0, tdamp=60.0, tchain=5, tloop=2)]
    dt, n_steps = 2.0, 60
    batch = to_batch(systems)
    md = NoseHooverChainNVT(
        batchmd_lj(), dt=dt, temperature=torch.tensor([p["temperature"] for p in params], dtype=torch.float64),
        tdamp=torch.tensor([p["tdamp"] for p in params], dtype=torch.float64), tchain=torch.tensor([p["tchain"] for p in params]),
        tloop=torch.tensor([p["tloop"] for p in params]),
    )
    refs = []
    for atoms, p in zip(systems, params):
        atoms = atoms.copy()
        atoms.calc = ase_lj()
        refs.append(AseNHC(atoms, timestep=dt * units.fs, temperature_K=p["temperature"], tdamp=p["tdamp"] * units.fs,
                           tchain=p["tchain"], tloop=p["tloop"]))
    worst_x = worst_v = 0.0
    start = batch.positions.clone()
    for _ in range(n_steps):
        md.step(batch)
        for k, dyn in enumerate(refs):
            dyn.run(1)
            rows = system_rows(batch, k)
            worst_x = max(worst_x, float(np.abs(batch.positions[rows].numpy() - dyn.atoms.positions).max()))
            worst_v = max(worst_v, float(np.abs(batch.velocities[rows].numpy() - dyn.atoms.get_velocities()).max()))
    assert torch.isfinite(batch.positions).all() and int(batch["status"].abs().sum()) == 0
    conserved = NoseHooverChainNVT.conserved_energy(batch).numpy()
    ase_conserved = np.array([dyn.get_conserved_energy() for dyn in refs])
    print(f"NoseHooverChainNVT vs ASE over {n_steps} steps: max |dx| {worst_x:.1e} Å, max |dv| {worst_v:.1e} Å/t, "
          f"conserved energy {np.abs(conserved - ase_conserved).max():.1e} eV")
    assert worst_x < 1e-8 and worst_v < 1e-8
    assert np.abs(conserved - ase_conserved).max() < 1e-8
    assert float((batch.positions - start).abs().max()) > 0.05  # the atoms really moved
    # the chains are each system's own: system 1 uses 5 variables, system 0 only 3
    assert batch["nhc_eta"].shape == (2, 5) and float(batch["nhc_eta"][0, 3:].abs().max()) == 0.0
    assert np.allclose(batch["nhc_eta"][1].numpy(), refs[1]._thermostat._eta, rtol=0, atol=1e-10)


def test_nose_hoover_chain_is_batch_invariant():
    """A system's trajectory is bitwise the same alone and among other systems of other sizes and parameters."""
    target = argon("primitive", 5, 50.0)
    others = [argon("cubic", 6, 90.0), argon("dense", 7, 20.0)]

    def run(systems, temperature):
        batch = to_batch(systems)
        md = NoseHooverChainNVT(batchmd_lj(), dt=2.0, temperature=temperature, tdamp=40.0, tchain=4, tloop=2)
        for _ in range(25):
            md.step(batch)
        return batch

    alone = run([target], 70.0)
    mixed = run([others[0], target, others[1]], torch.tensor([120.0, 70.0, 30.0]))
    rows = system_rows(mixed, 1)
    assert torch.equal(alone.positions, mixed.positions[rows])
    assert torch.equal(alone.velocities, mixed.velocities[rows])
    assert torch.equal(alone["nhc_p_eta"], mixed["nhc_p_eta"][1:2])


def test_nose_hoover_chain_conserves_its_extended_energy_and_float32_runs():
    atoms = argon("cubic", 3, 120.0)
    for dtype, bound in ((torch.float64, 2e-5), (torch.float32, 2e-4)):
        batch = to_batch([atoms], dtype=dtype)
        md = NoseHooverChainNVT(batchmd_lj(), dt=2.0, temperature=60.0, tdamp=50.0)
        md.step(batch)
        first = float(md.conserved_energy(batch)[0])
        worst = 0.0
        for _ in range(200):
            md.step(batch)
            worst = max(worst, abs(float(md.conserved_energy(batch)[0]) - first))
        print(f"{dtype}: conserved energy max |dE| over 200 steps {worst / len(atoms):.1e} eV/atom")
        assert worst / len(atoms) < bound


def test_nose_hoover_chain_parameter_errors():
    model = batchmd_lj()
    for kwargs in (dict(temperature=0.0), dict(tdamp=-1.0), dict(dt=float("nan")), dict(tchain=0), dict(tloop=1.5),
                   dict(temperature=torch.tensor([300.0, -1.0])), dict(tchain=torch.tensor([2, 0]))):
        with pytest.raises(ValueError):
            NoseHooverChainNVT(model, **kwargs)


def test_nose_hoover_chain_kinetic_energy_distribution():
    """Canonical kinetic energy of 32-atom LJ argon at 40 K over 24 replicas.

    ASE's chain counts 3N degrees of freedom, but a periodic system at zero total momentum
    has d = 3N - 3; the invariant measure of the chain is then canonical at
    T' = T 3N/d (Tuckerman et al. 2001), so K follows Gamma(d/2, kT') with mean 3N kT/2.
    Tolerances: mean within 1.5% (about 4 standard errors of ~600 independent samples),
    variance within 15%, Kolmogorov-Smirnov distance of decorrelated samples < 0.06.
    (~15 s on one CPU core.)
    """
    temperature, replicas, n_equil, n_prod, stride = 40.0, 24, 500, 3000, 25
    systems = []
    for k in range(replicas):
        atoms = argon("cubic", 100 + k, temperature)
        atoms.set_momenta(atoms.get_momenta() - atoms.get_momenta().mean(0))  # zero total momentum
        systems.append(atoms)
    batch = to_batch(systems)
    md = NoseHooverChainNVT(batchmd_lj(), dt=4.0, temperature=temperature, tdamp=100.0)
    for _ in range(n_equil):
        md.step(batch)
    masses = batch.atomic_masses[:, None]
    samples = []
    for step in range(n_prod):
        md.step(batch)
        if step % stride == 0:
            ke = torch.zeros(replicas, dtype=batch.dtype).index_add_(
                0, batch.batch_idx.long(), 0.5 * (masses * batch.velocities ** 2).sum(1))
            samples.append(ke.numpy())
    ke = np.concatenate(samples)
    n = len(systems[0])
    kT = units.kB * temperature
    dof = 3 * n - 3
    kT_eff = kT * 3 * n / dof
    mean_ref, var_ref = 1.5 * n * kT, 0.5 * dof * kT_eff**2
    ks = stats.kstest(ke, stats.gamma(a=dof / 2, scale=kT_eff).cdf).statistic
    print(f"NH-chain KE at {temperature} K: mean/ref {ke.mean() / mean_ref:.4f}, var/ref {ke.var() / var_ref:.3f}, "
          f"KS {ks:.3f} ({ke.size} samples)")
    assert abs(ke.mean() / mean_ref - 1) < 0.015
    assert abs(ke.var() / var_ref - 1) < 0.15
    assert ks < 0.06


def test_nose_hoover_chain_with_fixed_atoms_counts_free_degrees_of_freedom():
    """FixAtoms: fixed atoms never move and the chain counts g = 3 (N - N_fixed) degrees of freedom.

    Reference: ASE's NoseHooverChainNVT with its thermostat built for N - N_fixed atoms and
    the constrained forces. ASE 3.29 itself keeps 3N with FixAtoms, and its MD force call
    (``get_forces(md=True)``) does not zero the fixed atoms' forces, so their internal
    momenta grow and enter the thermostat's kinetic energy (see the class docstring).
    """
    from ase.constraints import FixAtoms
    from ase.md.nose_hoover_chain import NoseHooverChainThermostat

    atoms = argon("cubic", 8, 60.0)
    fixed = [0, 5, 9, 17, 30]
    atoms.set_constraint(FixAtoms(indices=fixed))
    batch = to_batch([atoms])
    if not batch.has_field("fixed"):  # until AtomicData.from_ase carries FixAtoms (issue 12)
        mask = torch.zeros(len(atoms), dtype=torch.bool)
        mask[fixed] = True
        batch.set_field("fixed", mask, "atom")
    assert int(batch["fixed"].sum()) == len(fixed)
    start = batch.positions.clone()
    md = NoseHooverChainNVT(batchmd_lj(), dt=2.0, temperature=90.0, tdamp=30.0, tchain=3, tloop=2)
    ref = atoms.copy()
    ref.set_momenta(ref.get_momenta())  # through FixAtoms: fixed atoms at rest (ASE reads the raw array)
    ref.calc = ase_lj()
    class ConstrainedForcesNHC(AseNHC):
        def _get_forces(self):
            self._update_atoms()
            return self.atoms.get_forces()  # FixAtoms applied: zero on fixed atoms

    dyn = ConstrainedForcesNHC(ref, timestep=2.0 * units.fs, temperature_K=90.0, tdamp=30.0 * units.fs, tchain=3, tloop=2)
    dyn._thermostat = NoseHooverChainThermostat(num_atoms_global=len(atoms) - len(fixed), masses=dyn.masses,
                                                temperature_K=90.0, tdamp=30.0 * units.fs, tchain=3, tloop=2)
    worst = 0.0
    loop = md._solo_loop()
    for _ in range(50):
        loop.step(batch)
        dyn.run(1)
        worst = max(worst, float(np.abs(batch.positions.numpy() - ref.positions).max()))
    print(f"NoseHooverChainNVT with {len(fixed)} fixed atoms vs ASE (3(N - N_fixed) dof): max |dx| {worst:.1e} Å")
    assert worst < 1e-8
    assert torch.equal(batch.positions[fixed], start[fixed])
    assert float((batch.positions - start).abs().max()) > 0.05
