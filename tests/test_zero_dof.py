"""Systems with no degrees of freedom, ``g = 3N - 3 N_fixed - 3 [FixCom] = 0`` (a user trial).

Before: a slab with every atom fixed, or a one-atom crystal with ``FixCom``, under
``NoseHooverChainNVT`` (and the barostats) came back ``failed`` with "non-finite positions;
non-finite velocities; non-finite stress at step 1" (``Q_0 = g kT tdamp^2 = 0``: 0/0 in the
chain), while Langevin and NVE completed them at T = 0.

Now: the Nosé-Hoover chain of a ``g = 0`` system stays at rest (the momenta are not scaled:
there is no kinetic energy to thermostat), so the stage completes with temperature 0, as
Langevin and NVE; a barostat refuses such a system at admission (its equations divide by
``g``), up front for known frames and as ``failed`` (``CONSTRAINTS``) for a served one. The
other systems of the batch are bitwise those of a run without them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc100
from ase.constraints import FixAtoms, FixCom

from batchmd.ase import AtomsDataset, run_frames
from batchmd.data import AtomicData, Batch
from batchmd.dynamics import NVE, FusedStage, NoseHooverChainNVT, SizeAwareSampler
from batchmd.dynamics.admission import AdmissionWarning, Requirements, data_problem, system_problem
from batchmd.dynamics.sinks import HostMemory
from batchmd.dynamics.status import FailureReason, SystemStatus
from md_argon import batchmd_lj
from test_equipartition import BAROSTATS, T, crystal, langevin, nhc


def fixed_slab():
    """fcc100 Ar (2, 2, 2) slab, pbc (T, T, F), every atom fixed: g = 0."""
    slab = fcc100("Ar", (2, 2, 2), a=5.3, vacuum=8.0)
    slab.pbc = (True, True, False)
    slab.set_constraint(FixAtoms(indices=range(len(slab))))
    return slab


def one_atom_fixcom():
    """Primitive fcc Ar (one atom, periodic) with FixCom: g = 3 - 3 = 0."""
    atoms = bulk("Ar", "fcc", a=5.3)
    atoms.set_constraint(FixCom())
    return atoms


def nve(n):
    return NVE(batchmd_lj(), dt=4.0, n_steps=n, velocities="maxwell_boltzmann", temperature=T, random_seed=1)


THERMOSTATS = {"nhc": nhc, "langevin": langevin, "nve": nve}


@pytest.mark.parametrize("name", sorted(THERMOSTATS))
def test_zero_dof_systems_complete_at_zero_temperature_and_cost_nobody(name):
    """All-fixed slab and one-atom FixCom crystal beside a free crystal: completed, T = 0, unmoved;
    the crystal bitwise equal to a run of it alone (before, NHC: both failed with non-finite positions)."""
    steps = 30
    out = run_frames([crystal("free", 0), fixed_slab(), one_atom_fixcom()], [THERMOSTATS[name](steps)]).frames
    alone = run_frames([crystal("free", 0)], [THERMOSTATS[name](steps)]).frames[0]
    assert [a.info["status"] for a in out] == ["completed"] * 3
    for atoms, original in zip(out[1:], (fixed_slab(), one_atom_fixcom())):
        assert atoms.info["stage0_temperature"] == 0.0
        # (FixCom's centre-of-mass reset rounds: 5e-20 Å under Langevin)
        np.testing.assert_allclose(atoms.positions, original.positions, rtol=0, atol=1e-12)
        assert float(np.abs(atoms.get_velocities()).max()) < 1e-12
        assert np.isfinite(atoms.get_potential_energy())
    assert out[0].info["stage0_temperature"] > 0.0
    np.testing.assert_array_equal(out[0].positions, alone.positions)
    np.testing.assert_array_equal(out[0].get_velocities(), alone.get_velocities())
    assert out[0].info["stage0_temperature"] == alone.info["stage0_temperature"]
    assert out[0].get_potential_energy() == alone.get_potential_energy()


def test_nhc_chain_of_a_zero_dof_system_stays_at_rest_and_its_conserved_energy_is_finite():
    """Batch level: the g = 0 rows keep eta = p_eta = 0, conserved energy = potential energy (finite)."""
    batch = Batch.from_ase([crystal("free", 0), fixed_slab(), one_atom_fixcom()])
    batch = FusedStage([nhc(10)]).run(batch)
    assert batch["dof"].tolist() == [24.0, 0.0, 0.0]
    assert torch.equal(batch["nhc_eta"][1:], torch.zeros_like(batch["nhc_eta"][1:]))
    assert torch.equal(batch["nhc_p_eta"][1:], torch.zeros_like(batch["nhc_p_eta"][1:]))
    assert bool(batch["nhc_p_eta"][0, 0] != 0.0)
    conserved = NoseHooverChainNVT.conserved_energy(batch)
    assert bool(torch.isfinite(conserved).all())
    assert torch.equal(conserved[1:], batch.energies.reshape(-1)[1:])


@pytest.mark.parametrize("barostat", sorted(BAROSTATS))
def test_barostats_refuse_a_system_without_degrees_of_freedom_up_front(barostat):
    """One-atom FixCom crystal under a barostat (before: failed, non-finite at step 1): one-line ValueError."""
    pattern = (r"^input: frame 1 has no degrees of freedom \(one free atom under FixCom\), which stage 0 "
               r"\(\w+, a barostat\) needs$")
    with pytest.raises(ValueError, match=pattern):
        run_frames([crystal("fixcom", 0), one_atom_fixcom()], [BAROSTATS[barostat](5)])


def _served(frames, stage):
    sampler = SizeAwareSampler(AtomsDataset(frames, dtype=torch.float64), max_atoms=8, max_batch_size=4)
    memory = HostMemory(capacity=len(frames))
    loop = FusedStage([stage], sampler=sampler, sinks=[memory], refill_frequency=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.run()
    out = memory.drain()
    out = out.index_select(torch.argsort(out["system_id"].reshape(-1)))
    return out, [w for w in caught if issubclass(w.category, AdmissionWarning)]


def test_a_served_zero_dof_system_under_a_barostat_is_failed_with_a_reason_and_costs_nobody():
    """A sampler serves the one-atom FixCom crystal: FAILED (CONSTRAINTS), never run, warned; the crystal bitwise."""
    out, warned = _served([crystal("fixcom", 0), one_atom_fixcom()], BAROSTATS["mtk"](20))
    alone, _ = _served([crystal("fixcom", 0)], BAROSTATS["mtk"](20))
    assert out["status"].reshape(-1).tolist() == [int(SystemStatus.CONVERGED), int(SystemStatus.FAILED)]
    assert int(out["failure"][1]) == int(FailureReason.CONSTRAINTS) and int(out["n_steps"][1]) == 0
    assert len(warned) == 1 and "has no degrees of freedom" in str(warned[0].message)
    first = out.index_select(torch.tensor([0]))
    assert torch.equal(first.positions, alone.positions) and torch.equal(first.cell, alone.cell)


def test_admission_rule_needs_dof():
    """``Requirements(needs_dof=True)``: g = 3N - 3 N_fixed - 3 [FixCom] must be > 0 (no species table needed)."""

    class Stage:
        def requirements(self):
            return Requirements(needs_dof=True, role="a test")

    numbers, pbc, cell = np.full(2, 18), np.ones(3, bool), np.eye(3) * 5.0
    assert system_problem(numbers, pbc, cell, 1, False, [Stage()]) is None  # g = 3
    assert system_problem(numbers, pbc, cell, 0, True, [Stage()]) is None  # g = 3
    bits, text = system_problem(numbers, pbc, cell, 2, False, [Stage()])
    assert bits == int(FailureReason.CONSTRAINTS)
    assert text == "has no degrees of freedom (all atoms fixed), which stage 0 (Stage, a test) needs"
    assert "one free atom under FixCom" in system_problem(numbers, pbc, cell, 1, True, [Stage()])[1]
    assert system_problem(numbers, pbc, cell, 2, False, [Plain()]) is None  # rule not declared
    data = AtomicData.from_ase(one_atom_fixcom())
    assert "one free atom under FixCom" in data_problem(data, [Stage()])[1]
    assert data_problem(AtomicData.from_ase(crystal("fixcom", 0)), [Stage()]) is None


class Plain:
    def requirements(self):
        return Requirements()
