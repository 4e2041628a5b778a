"""Issue 16: inflight refills of any size written in place (padded live batches, dynamics/slot_layout.py).

A padded live batch keeps its tensors for the whole run: a graduated slot takes any sample
that fits its free rows. These tests check the host plan (first fit, runs of free slots,
``ptr`` monotone), that results are bitwise those of rebuilt batches (cells of different
shapes, so the neighbor-list grids differ between a slot's occupants), that a run cut by
``n_steps`` returns the live systems without padding, and that EMPTY padding systems are
never listed by the neighbor list.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from batchmd.ase import AtomsDataset
from batchmd.data import Batch
from batchmd.dynamics import FIRE, ConvergenceHook, FusedStage, SizeAwareSampler, SystemStatus
from batchmd.dynamics.sinks import HostMemory
from batchmd.dynamics.slot_layout import SlotLayout
from batchmd.models.lj import LennardJones
from batchmd.models.neighbors import NeighborList

SIGMA, EPS, RC = 3.405, 0.0104, 8.5125
REPEATS = [(1, 1, 1), (1, 1, 2), (2, 1, 1), (1, 2, 2), (1, 1, 4), (2, 2, 1), (4, 1, 1), (1, 3, 1), (2, 1, 3)]


def cells(n: int, seed: int = 0):
    """Rattled fcc argon supercells of 4..48 atoms and several shapes (some 2 bins wide)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(REPEATS[int(rng.integers(len(REPEATS)))])
        atoms.rattle(float(rng.uniform(0.02, 0.3)), seed=int(rng.integers(1 << 30)))
        frames.append(atoms)
    return frames


def relax(frames, in_place: bool, n_steps=None, max_batch_size=5, refill_frequency=1):
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC, skin=1.0)
    fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300)
    sizes = [len(a) for a in frames]
    sampler = SizeAwareSampler(AtomsDataset(frames, dtype=torch.float64), max_atoms=int(np.mean(sizes) * max_batch_size),
                               max_batch_size=max_batch_size)
    sink = HostMemory(capacity=len(frames))
    fused = FusedStage([fire], sampler=sampler, sinks=[sink], refill_frequency=refill_frequency,
                       refill_in_place=in_place)
    live = fused.run(batch=None, n_steps=n_steps)
    return sink.drain(), fused, live


def by_id(batch):
    ids = batch["system_id"].reshape(-1).tolist()
    out = {}
    for k, sid in enumerate(ids):
        lo, hi = int(batch.ptr[k]), int(batch.ptr[k + 1])
        out[sid] = (batch.positions[lo:hi].clone(), float(batch.energies.reshape(-1)[k]), int(batch["n_steps"].reshape(-1)[k]))
    return out


def test_plan_is_first_fit_over_runs_of_free_slots():
    layout = SlotLayout(num_slots=4, num_atoms=40)
    layout.ptr[:] = [0, 10, 10, 16, 16, 24, 24, 30, 40]  # slots of 10, 6, 8, 6 atoms; 10 spare at the end
    layout.live[:] = True
    layout.largest = 40
    layout.free([2, 4])  # system rows 2 and 4: slots 1 and 2 graduate -> one run of 14 atoms
    queue = [9, 7, 5, 3]
    served = []

    def request(max_atoms):
        for k, n in enumerate(queue):
            if n <= max_atoms:
                served.append(queue.pop(k))
                return Batch.from_ase([bulk("Ar", "fcc", a=5.26, cubic=True).repeat((3, 1, 1))[:n]])
        return None

    placed = layout.plan(request)
    assert served == [9, 5]  # 9 fits the 14 free rows first, then the earliest that fits the 5 left
    assert [(slot, start) for slot, start, _ in placed] == [(1, 10), (2, 19)]
    assert layout.ptr.tolist() == [0, 10, 10, 19, 19, 24, 24, 30, 40]
    assert np.all(np.diff(layout.ptr) >= 0) and layout.live.all()


def test_padded_refills_give_the_results_of_rebuilt_batches():
    """Same steps, positions and energies as rebuilt batches, to round-off (1e-12).

    Not bitwise here: the Verlet list's capacity K is shared by the batch, and when another
    system overflows it every system is rebuilt at that step, so the pair order of a system
    (hence round-off) can depend on its neighbours -- for rebuilt batches too (this input:
    2 of 24 systems differ from the system run alone by 1e-17 Å in both modes).
    """
    frames = cells(24)
    ref, _, _ = relax(frames, in_place=False)
    out, fused, _ = relax(frames, in_place=True)
    assert fused.stats.refills_in_place > 5  # newcomers of other sizes were written in place
    a, b = by_id(ref), by_id(out)
    assert sorted(a) == sorted(b) == list(range(len(frames)))
    for sid in a:
        torch.testing.assert_close(a[sid][0], b[sid][0], rtol=0, atol=1e-12)
        assert abs(a[sid][1] - b[sid][1]) < 1e-12 and a[sid][2] == b[sid][2]
    assert (out["status"] != int(SystemStatus.EMPTY)).all()


def test_padded_live_batch_keeps_its_tensors_between_refills():
    frames = cells(16, seed=3)
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC, skin=1.0)
    fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300)
    sampler = SizeAwareSampler(AtomsDataset(frames, dtype=torch.float64), max_atoms=120, max_batch_size=5)
    fused = FusedStage([fire], sampler=sampler, refill_frequency=1, refill_in_place=True)
    seen = []
    original = fused._refill_padded

    def spy(batch, done):
        new = original(batch, done)
        seen.append((id(batch.positions), id(new.positions), fused._layout is not None and new is batch))
        return new

    fused._refill_padded = spy
    fused.run(batch=None)
    kept = sum(1 for before, after, same in seen if before == after and same)
    assert kept >= len(seen) - fused.stats.compactions - 1
    assert fused.stats.refills_in_place > 0


def test_a_cut_padded_run_returns_its_live_systems_without_padding():
    frames = cells(20, seed=1)
    out, fused, live = relax(frames, in_place=True, n_steps=15)
    assert live is not None and fused._layout is None
    assert (live["status"] != int(SystemStatus.EMPTY)).all()
    assert live.num_graphs <= 5 and live.num_nodes == int(live.num_atoms_per_system.sum())
    ids = out["system_id"].reshape(-1).tolist() + live["system_id"].reshape(-1).tolist()
    assert len(ids) == len(set(ids))  # nothing written twice, nothing lost among the served ones
    assert min(ids) >= 0


def test_empty_systems_are_never_listed():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    pile = atoms.copy()
    pile.positions[:] = 0.0  # four atoms on one point: a list would be nonsense
    batch = Batch.from_ase([atoms, pile], dtype=torch.float64)
    batch.set_field("status", torch.tensor([0, int(SystemStatus.EMPTY)], dtype=torch.int32), "system")
    nl = NeighborList(cutoff=RC, skin=1.0)
    nl.update(batch)
    assert nl.rebuild.tolist() == [1, 0]
    assert int(batch["_nl_count"][4:].abs().sum()) == 0
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC)
    out = model(batch)  # EMPTY systems are skipped even without skip_finished
    assert torch.isfinite(out["energy"][0]).all()


@pytest.mark.parametrize("refill_frequency", [1, 3])
def test_padded_run_serves_every_sample_once(refill_frequency):
    frames = cells(30, seed=2)
    out, fused, live = relax(frames, in_place=True, max_batch_size=4, refill_frequency=refill_frequency)
    assert live is None
    assert sorted(out["system_id"].reshape(-1).tolist()) == list(range(len(frames)))


@pytest.mark.parametrize("chain", ["lbfgs_frechet_nhc", "fire_npt"])
def test_every_kind_of_stage_state_is_reset_for_newcomers_written_in_place(chain):
    """LBFGS's history, the cell filter's reference, NHC and MTK thermostat/barostat state live in
    batch fields (some ``_`` caches): a newcomer written into a graduated system's rows must start
    with its own fresh state, exactly as when appended to a rebuilt batch."""
    from batchmd.dynamics import LBFGS, FrechetCellFilter, IsotropicMTKNPT, NoseHooverChainNVT

    frames = cells(14, seed=4)

    def run(in_place):
        model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC, skin=1.0)
        if chain == "lbfgs_frechet_nhc":
            stages = [LBFGS(model, cell_filter=FrechetCellFilter(), convergence_hook=ConvergenceHook.from_forces(0.02),
                            n_steps=80),
                      NoseHooverChainNVT(model, dt=4.0, temperature=30.0, tdamp=100.0, n_steps=6, random_seed=3)]
        else:
            stages = [FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.02), n_steps=80),
                      IsotropicMTKNPT(model, dt=4.0, temperature=30.0, pressure=0.0, tdamp=100.0, pdamp=400.0,
                                      n_steps=6, random_seed=3)]
        sampler = SizeAwareSampler(AtomsDataset(frames, dtype=torch.float64), max_atoms=90, max_batch_size=4)
        sink = HostMemory(capacity=len(frames))
        fused = FusedStage(stages, sampler=sampler, sinks=[sink], refill_frequency=1, refill_in_place=in_place)
        fused.run(batch=None)
        return by_id(sink.drain()), fused

    ref, _ = run(False)
    out, fused = run(True)
    assert fused.stats.refills_in_place > 3
    assert sorted(ref) == sorted(out)
    for sid in ref:
        torch.testing.assert_close(ref[sid][0], out[sid][0], rtol=0, atol=1e-10)
        assert abs(ref[sid][1] - out[sid][1]) < 1e-10 and ref[sid][2] == out[sid][2]
