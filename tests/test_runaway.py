"""Issue 20, kind 3: non-finite and runaway systems are FAILED, with a reason, and cost nobody else.

Inputs of the issue (or cheap analogues with Lennard-Jones and small synthetic models):
a close pair under NVE (displacement guard), a collapsing NPT cell (density guard, before
the neighbor list grows), a non-finite cell (failed before the model sees it), optimizers
falling into a model's hole (energy-drop and density guards), NaN distances in the edge
list. In every case the other systems of the batch are bitwise those of a run without the
runaway one.
"""

from __future__ import annotations

import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk

from batchmd.ase import relax, run_frames
from batchmd.data import Batch
from batchmd.dynamics import FIRE, NVE, FrechetCellFilter, FusedStage, IsotropicMTKNPT, SystemStatus
from batchmd.dynamics.guards import Guards
from batchmd.dynamics.hooks import Hook, HookStage
from batchmd.dynamics.status import FailureReason, failure_text
from batchmd.models.edges import EdgeNeighborList
from batchmd.models.lj import LennardJones

SIGMA, EPS, RC = 3.405, 0.0104, 8.5125


def lj():
    return LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC)


def argon32(seed=1, rattle=0.05):
    """32 Ar atoms, rattled, with momenta drawn at 40 K from ``seed`` (so a system's run never depends on its id)."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat(2)
    atoms.rattle(rattle, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=40.0, rng=np.random.default_rng(seed))
    return atoms


def close_pair_crystal():
    """The issue's input: a 32-atom Ar crystal with atoms 0 and 1 0.12 Å apart (valid: > min_distance 0.1)."""
    atoms = argon32(seed=3, rattle=0.0)
    d = atoms.positions[1] - atoms.positions[0]
    atoms.positions[1] = atoms.positions[0] + 0.12 * d / np.linalg.norm(d)
    return atoms


class Hole:
    """A model with holes (as machine-learned potentials far from their data), forces and stress exact.

    ``E = -a sum_pairs 1/r`` within each system (no images: a pair falls together), plus
    ``-k N^2 / V`` for a periodic system (its cell collapses); a system of helium atoms has
    harmless springs ``(r - 2)^2 / 2`` instead. eV, Å.
    """

    computes_stress = True

    def __init__(self, a=1.0, k=50.0):
        self.a, self.k = a, k

    def __call__(self, batch):
        pos = batch.positions.detach().clone().requires_grad_(True)
        ptr = batch.ptr.tolist()
        energies, stresses = [], []
        for s in range(batch.num_graphs):
            x = pos[ptr[s]:ptr[s + 1]]
            n = x.shape[0]
            i, j = torch.triu_indices(n, n, 1)
            r = (x[j] - x[i]).norm(dim=1)
            helium = bool((batch.atomic_numbers[ptr[s]:ptr[s + 1]] == 2).all())
            e = 0.5 * ((r - 2.0) ** 2).sum() if helium else -self.a * (1.0 / r).sum()
            stress = torch.zeros(3, 3, dtype=pos.dtype)
            if bool(batch.pbc[s].all()):
                volume = torch.linalg.det(batch.cell[s]).abs()
                e = e - self.k * n * n / volume
                stress = self.k * n * n / volume**2 * torch.eye(3, dtype=pos.dtype)  # (1/V) dE/d(strain)
            energies.append(e)
            stresses.append(stress)
        energy = torch.stack(energies)
        forces = -torch.autograd.grad(energy.sum(), pos)[0]
        return {"energy": energy.detach().reshape(-1, 1), "forces": forces, "stress": torch.stack(stresses)}


def same_bitwise(a, b):
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.cell.array, b.cell.array)
    assert np.array_equal(a.get_momenta(), b.get_momenta())
    assert a.get_potential_energy() == b.get_potential_energy()
    assert np.array_equal(a.get_forces(), b.get_forces())


# ----------------------------------------------------------------------------- MD displacement
def test_close_pair_nve_fails_at_its_consistent_state_and_costs_nobody_else():
    good = argon32(seed=1)
    bad = close_pair_crystal()
    md = [NVE(lj(), dt=2.0, n_steps=30)]
    both = run_frames([good, bad, argon32(seed=2)], md, max_atoms=64, refill_frequency=4).frames
    alone = run_frames([good, argon32(seed=2)], md, max_atoms=64, refill_frequency=4).frames
    failed = both[1]
    assert failed.info["status"] == "failed"
    assert failed.info["failure"] == failure_text(int(FailureReason.DISPLACEMENT), step=0)
    # The state it failed at: the input geometry with its own (enormous, finite) energy; before: atoms at 1.6e16 Å.
    assert np.array_equal(failed.positions, bad.positions)
    assert 1e15 < failed.get_potential_energy() < 1e17
    assert [a.info["status"] for a in both] == ["completed", "failed", "completed"]
    same_bitwise(both[0], alone[0])
    same_bitwise(both[2], alone[1])


def test_displacement_guard_is_settable_and_can_be_turned_off():
    bad = close_pair_crystal()
    batch = Batch.from_ase([bad])
    loop = FusedStage([NVE(lj(), dt=2.0, n_steps=3)], guards=Guards(max_displacement=None))
    out = loop.run(batch)
    assert out["status"].tolist() == [SystemStatus.CONVERGED]  # unguarded: it "completes", atoms thrown away
    assert float(out.positions.abs().max()) > 1e6
    loop = FusedStage([NVE(lj(), dt=2.0, n_steps=3)], guards=False)
    assert loop.run(Batch.from_ase([bad]))["status"].tolist() == [SystemStatus.CONVERGED]
    with pytest.raises(ValueError, match="max_displacement"):
        Guards(max_displacement=-1.0)


# ----------------------------------------------------------------------------- collapsing cell
def collapsing_npt_batch():
    frames = [argon32(seed=1), argon32(seed=2), argon32(seed=4)]
    return frames, torch.tensor([0.0, 40.0, 0.1], dtype=torch.float64) * units.GPa


def test_collapsing_cell_fails_before_its_neighbor_list_grows_and_costs_nobody_else():
    frames, pressure = collapsing_npt_batch()

    def run(keep):
        model = lj()
        pdamp = torch.tensor([500.0, 50.0, 500.0], dtype=torch.float64)[keep]  # 50 fs: unstable, collapses
        stage = IsotropicMTKNPT(model, dt=5.0, temperature=40.0, pressure=pressure[keep], pdamp=pdamp, n_steps=20,
                                random_seed=1)
        out = FusedStage([stage], refill_frequency=5).run(Batch.from_ase([frames[k] for k in keep]))
        return out, model

    out, model = run([0, 1, 2])
    assert out["status"].tolist() == [SystemStatus.CONVERGED, SystemStatus.FAILED, SystemStatus.CONVERGED]
    assert out["failure"].tolist() == [0, int(FailureReason.DENSITY), 0]
    assert out["n_steps"].tolist() == [20, 1, 20]  # it failed in its first step (before: the run never ended)
    assert np.isnan(float(out["energies"][1, 0]))  # not evaluated: no energy of another geometry
    assert model.neighbor_list.capacity < 200  # the rows never grew for the collapsed cell
    ref, _ = run([0, 2])
    ptr, rptr = out.ptr.tolist(), ref.ptr.tolist()
    for s, r in ((0, 0), (2, 1)):
        for name in ("positions", "velocities", "forces"):
            assert torch.equal(out[name][ptr[s]:ptr[s + 1]], ref[name][rptr[r]:rptr[r + 1]]), name
        assert torch.equal(out.cell[s], ref.cell[r]) and torch.equal(out.energies[s], ref.energies[r])


def test_collapsed_frame_is_written_with_its_geometry_and_no_energy(tmp_path):
    frames = [argon32(seed=1), argon32(seed=2)]
    stage = IsotropicMTKNPT(lj(), dt=5.0, temperature=40.0, pressure=40.0 * units.GPa, pdamp=50.0, n_steps=10,
                            random_seed=1)
    result = run_frames(frames, [stage], max_atoms=32, refill_frequency=2)
    for atoms in result.frames:
        assert atoms.info["status"] == "failed"
        assert atoms.info["failure"].startswith("density above Guards.max_density") and "at step 1" in atoms.info["failure"]
        assert atoms.calc is None  # NaN energy: no results, whatever geometry is written
    assert result.stats.systems_failed == 2


# ----------------------------------------------------------------------------- non-finite cell
class Poison(Hook):
    """Before step ``at`` of the run, the cell (or positions) of system ``system_id == bad`` become NaN (as SevenNet's NPT)."""

    stage = HookStage.BEFORE_STEP

    def __init__(self, bad, at, field="cell"):
        self.bad, self.at, self.field = bad, at, field

    def __call__(self, batch, context):
        if context.step == self.at:
            hit = batch.system_id.reshape(-1) == self.bad
            if self.field == "cell":
                batch.cell[hit] = float("nan")
            else:
                batch.positions[hit[batch.batch_idx.long()]] = float("nan")


class CountingLJ:
    """Lennard-Jones that records whether it ever saw a non-finite cell of an unfailed system."""

    computes_stress = True

    def __init__(self):
        self.inner = lj()
        self.saw_nan = False

    def __call__(self, batch):
        ok = batch["status"] != int(SystemStatus.FAILED)
        self.saw_nan |= bool((~torch.isfinite(batch.cell[ok])).any())
        return self.inner(batch)


@pytest.mark.parametrize("field", ["cell", "positions"])
def test_nonfinite_cell_or_positions_fail_with_the_step_in_their_reason(field):
    model = CountingLJ()
    frames = [argon32(seed=1), argon32(seed=2)]
    md = [NVE(model, dt=2.0, n_steps=8)]
    result = run_frames(frames, md, hooks=[Poison(bad=1, at=3, field=field)], max_atoms=64, refill_frequency=4)
    failed = result.frames[1]
    if field == "cell":  # failed before the model: it never sees the NaN cell
        assert failed.info["failure"].startswith("non-finite cell at step 4")
    else:  # the NaN pairs reach the model (never dropped as isolated atoms): NaN forces
        assert "non-finite forces; non-finite positions" in failed.info["failure"]
        assert " at step 4;" in failed.info["failure"]
    assert "input structure written instead" in failed.info["failure"]
    assert failed.calc is None and np.array_equal(failed.positions, frames[1].positions)
    assert not model.saw_nan
    alone = run_frames(frames[:1], [NVE(lj(), dt=2.0, n_steps=8)], max_atoms=64,
                       refill_frequency=4).frames
    same_bitwise(result.frames[0], alone[0])


def test_edge_list_keeps_nan_distances_and_skips_failed_systems():
    batch = Batch.from_ase([bulk("Cu", "fcc", a=3.61, cubic=True), bulk("Si", "diamond", a=5.43)],
                           dtype=torch.float64)
    batch.set_field("status", torch.zeros(2, dtype=torch.int32), "system")
    nl = EdgeNeighborList(cutoff=5.0, vectors=True)
    clean = nl.update(batch)
    counts = clean.edge_ptr.diff().tolist()
    batch.positions[0] = float("nan")  # in place: no structure change, as a step would do
    edges = nl.update(batch)
    nan_counts = edges.edge_ptr.diff().tolist()
    assert nan_counts[0] >= counts[0] and nan_counts[1] == counts[1]  # NaN pairs kept, never dropped as "too far"
    assert torch.isnan(edges.lengths[edges.edge_ptr[0]:edges.edge_ptr[1]]).any()
    assert torch.equal(edges.lengths[edges.edge_ptr[1]:], clean.lengths[clean.edge_ptr[1]:])
    batch["status"][0] = int(SystemStatus.FAILED)
    edges = nl.update(batch)
    assert edges.edge_ptr.diff().tolist() == [0, counts[1]]


# ----------------------------------------------------------------------------- optimizers
def test_relaxation_into_a_hole_fails_on_the_energy_drop():
    pair = Atoms("Ar2", positions=[[0, 0, 0], [0.3, 0, 0]], cell=[20, 20, 20], pbc=False)
    pair.center()
    good = Atoms("He2", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[20, 20, 20], pbc=False)
    good.center()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = relax([good, pair], Hole(a=1.0, k=0.0), fmax=1e-3, max_steps=200)
    assert out[1].info["status"] == "failed"
    assert out[1].info["failure"].startswith("energy per atom fell more than Guards.max_energy_drop")
    e = out[1].get_potential_energy() / 2  # the geometry and energy of the step it failed at
    assert e < -20.0 and abs(e - (-1.0 / out[1].get_distance(0, 1)) / 2) < 1e-9
    assert out[0].info["status"] == "converged" and abs(out[0].get_distance(0, 1) - 2.0) < 1e-3


def test_cell_relaxation_collapse_fails_instead_of_running_out_of_steps():
    si2 = bulk("Si", "diamond", a=5.43)  # the issue: random-weight MACE --cell full collapsed Si2 to 0.05 Å^3
    stage = FIRE(Hole(a=0.0, k=50.0), cell_filter=FrechetCellFilter(), n_steps=200)
    out = FusedStage([stage], refill_frequency=5).run(Batch.from_ase([si2]))
    assert out["status"].tolist() == [SystemStatus.FAILED]
    bits = int(out["failure"][0])
    assert bits & int(FailureReason.DENSITY | FailureReason.ENERGY_DROP)


def test_cli_writes_the_failed_frame_with_its_reason_and_exits_3(tmp_path, capsys):
    from batchmd.cli.main import main

    path, out = tmp_path / "in.extxyz", tmp_path / "out.extxyz"
    ase.io.write(path, [argon32(seed=1), close_pair_crystal()])
    rc = main(["md", str(path), "-o", str(out), "--ensemble", "nve", "--steps", "30", "--dt", "2", "--quiet"])
    assert rc == 3  # finished, every frame written, some failed (unchanged policy)
    frames = ase.io.read(out, index=":")
    assert [a.info["status"] for a in frames] == ["completed", "failed"]
    assert frames[1].info["failure"] == failure_text(int(FailureReason.DISPLACEMENT), step=0)
    assert np.allclose(frames[1].positions, close_pair_crystal().positions)  # the geometry of its energy
    assert "frame 1 failed: an MD step would move an atom" in capsys.readouterr().err
    off = tmp_path / "off.extxyz"
    rc = main(["md", str(path), "-o", str(off), "--ensemble", "nve", "--steps", "3", "--dt", "2", "--quiet",
               "--no-guards"])
    assert rc == 0 and [a.info["status"] for a in ase.io.read(off, index=":")] == ["completed", "completed"]
