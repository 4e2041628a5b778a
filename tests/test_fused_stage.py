"""FusedStage: inflight invariants (exactly once, batch invariance), status semantics, hooks."""

from __future__ import annotations

import pytest
import torch

from batchmd.data import AtomicData, Batch
from batchmd.dynamics import FIRE, ConvergenceHook, FusedStage, SizeAwareSampler, SystemStatus
from batchmd.dynamics.hooks import ConvergedSnapshotHook, Hook, HookStage, TrajectoryHook
from batchmd.dynamics.sinks import HostMemory
from batchmd.models.demo import DemoModelWrapper


class RandomClusters:
    """Random clusters of the given sizes (float64), the sampler's dataset protocol."""

    def __init__(self, sizes, seed=0, spread=1.2):
        self.sizes = list(sizes)
        self.seed = seed
        self.spread = spread

    def __len__(self):
        return len(self.sizes)

    def get_metadata(self, idx):
        return self.sizes[idx], 0

    def __getitem__(self, idx):
        g = torch.Generator().manual_seed(self.seed + idx)
        n = self.sizes[idx]
        data = AtomicData(
            positions=self.spread * torch.randn(n, 3, generator=g, dtype=torch.float64),
            atomic_numbers=torch.randint(1, 10, (n,), generator=g),
        )
        return data, {}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return DemoModelWrapper().double()


def _fire(model, threshold=0.05, n_steps=None, hooks=None):
    return FIRE(model, convergence_hook=ConvergenceHook.from_forces(threshold), n_steps=n_steps, hooks=hooks)


@pytest.mark.parametrize(
    "sizes,refill,max_atoms,budget",
    [
        ([4, 5, 6] * 7, 1, 20, None),
        ([3, 9, 2, 7, 5, 4, 8, 6] * 3, 3, 24, 40),
        ([5] * 15, 7, 15, 25),  # same-size refills
        ([2, 11, 3, 12, 4], 2, 14, 7),  # tiny budget: many OUT_OF_STEPS
    ],
)
def test_every_sample_graduates_exactly_once(model, sizes, refill, max_atoms, budget):
    dataset = RandomClusters(sizes, seed=11)
    sink = HostMemory(capacity=len(sizes))
    fused = FusedStage(
        [(0, _fire(model, n_steps=budget))],
        sampler=SizeAwareSampler(dataset, max_atoms=max_atoms, max_batch_size=5),
        sinks=[sink],
        refill_frequency=refill,
    )
    assert fused.run(batch=None) is None
    out = sink.drain()
    assert sorted(out.system_id.reshape(-1).tolist()) == list(range(len(sizes)))
    assert sorted(out["sample_index"].reshape(-1).tolist()) == list(range(len(sizes)))
    status = out["status"]
    assert bool(((status == SystemStatus.CONVERGED) | (status == SystemStatus.OUT_OF_STEPS)).all())
    assert torch.equal(out.converged.reshape(-1), status == SystemStatus.CONVERGED)
    if budget is not None:
        assert int(out["n_steps"].max()) <= budget
    assert fused.stats.systems_graduated == len(sizes)
    # energies and forces are those of the final positions
    fresh = model(out)
    assert torch.allclose(fresh["energy"], out.energies, rtol=0, atol=1e-12)
    assert torch.allclose(fresh["forces"], out.forces, rtol=0, atol=1e-12)


def test_inflight_result_equals_running_alone(model):
    sizes = [4, 7, 3, 6, 5, 4, 8, 3, 5, 5]
    dataset = RandomClusters(sizes, seed=5)
    sink = HostMemory(capacity=len(sizes))
    fused = FusedStage(
        [(0, _fire(model, n_steps=200))],
        sampler=SizeAwareSampler(dataset, max_atoms=16, max_batch_size=4),
        sinks=[sink],
        refill_frequency=4,
    )
    fused.run(batch=None)
    out = sink.drain()
    for k in range(out.num_graphs):
        index = int(out["sample_index"][k])
        alone = Batch.from_data_list([dataset[index][0]])
        alone = _fire(model, n_steps=200).run(alone)
        got = out.index_select(torch.tensor([k]))
        assert int(got["n_steps"]) == int(alone["n_steps"])
        assert torch.allclose(got.positions, alone.positions, rtol=0, atol=1e-10)
        assert torch.allclose(got.energies, alone.energies, rtol=0, atol=1e-10)


def test_status_failed_for_non_finite_forces_without_stopping_others(model):
    def poisoned(batch):
        out = model(batch)
        bad = batch.batch_idx == 1
        out["forces"] = torch.where(bad[:, None], torch.full_like(out["forces"], float("nan")), out["forces"])
        return out

    batch = Batch.from_data_list([RandomClusters([4, 5, 6], seed=1)[i][0] for i in range(3)])
    out = FIRE(poisoned, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=300).run(batch)
    assert out["status"].tolist() == [SystemStatus.CONVERGED, SystemStatus.FAILED, SystemStatus.CONVERGED]
    assert int(out["n_steps"][1]) == 0


def test_batch_mode_hooks_fire_once_per_system(model):
    sink = HostMemory(capacity=10)
    seen = []

    class CountSteps(Hook):
        stage = HookStage.AFTER_STEP
        frequency = 2

        def __call__(self, batch, context):
            seen.append(context.step)

    trace = TrajectoryHook(frequency=5)
    fire = _fire(model, n_steps=60, hooks=[ConvergedSnapshotHook(sink)])
    batch = Batch.from_data_list([RandomClusters([4, 5, 6], seed=2)[i][0] for i in range(3)])
    batch.set_field("system_id", torch.arange(3, dtype=torch.int64).reshape(-1, 1), "system")
    fused = FusedStage([fire], hooks=[CountSteps(), trace], refill_frequency=3)
    out = fused.run(batch)
    assert len(sink) == 3
    assert sorted(sink.drain().system_id.reshape(-1).tolist()) == [0, 1, 2]
    assert seen and all(step % 2 == 0 for step in seen)
    assert trace.records and set(trace.records[0]) >= {"step", "system_id", "energies", "fmax"}
    assert out.num_graphs == 3


def test_step_budget_returns_live_batch(model):
    dataset = RandomClusters([5] * 10, seed=3, spread=2.0)
    sink = HostMemory(capacity=10)
    fused = FusedStage(
        [_fire(model, threshold=1e-6)],
        sampler=SizeAwareSampler(dataset, max_atoms=10),
        sinks=[sink],
        refill_frequency=5,
    )
    live = fused.run(batch=None, n_steps=10)
    assert live is not None and live.num_graphs >= 1
    ids = set(sink.drain().system_id.reshape(-1).tolist()) if len(sink) else set()
    assert ids.isdisjoint(set(live.system_id.reshape(-1).tolist()))


def test_invalid_configuration_errors(model):
    fire = _fire(model)
    with pytest.raises(ValueError, match="indices must be 0, 1, 2"):
        FusedStage([(1, fire)])
    with pytest.raises(ValueError, match="same model"):
        FusedStage([fire, _fire(DemoModelWrapper())])
    with pytest.raises(ValueError, match="needs a sampler"):
        FusedStage([fire]).run(batch=None)
    with pytest.raises(ValueError, match="refill_frequency"):
        FusedStage([fire], refill_frequency=0)
    with pytest.raises(ValueError, match="n_steps"):
        FIRE(model, n_steps=-1)
    from batchmd.dynamics import NVE

    endless = Batch.from_data_list([RandomClusters([4], seed=0)[0][0]])
    with pytest.raises(ValueError, match="would never finish"):
        NVE(model, dt=1.0).run(endless)
    assert int(NVE(model, dt=1.0).run(endless, n_steps=3)["n_steps"][0]) == 3


def test_throughput_counters(model):
    dataset = RandomClusters([4, 6] * 5, seed=9)
    fused = FusedStage(
        [_fire(model, n_steps=30)],
        sampler=SizeAwareSampler(dataset, max_atoms=20),
        sinks=[HostMemory(capacity=10)],
        refill_frequency=5,
    )
    fused.run(batch=None)
    stats = fused.stats.as_dict()
    assert stats["systems_graduated"] == 10 and stats["systems_total"] == 10
    assert stats["atom_steps"] > 0 and stats["atom_steps_per_second"] > 0
    assert 0.0 < stats["mean_occupancy"] <= 1.0


def test_fire_then_nvt_pipeline_is_batch_invariant(model):
    from batchmd.dynamics import NVTLangevin

    sizes = [4, 6, 5, 3, 6, 4, 5, 5]
    dataset = RandomClusters(sizes, seed=21)

    def stages():
        fire = _fire(model, threshold=0.1, n_steps=150)
        nvt = NVTLangevin(model, dt=0.5, temperature=300.0, friction=0.1, random_seed=7, n_steps=12)
        return fire + nvt

    pipeline = stages()
    assert isinstance(pipeline, FusedStage) and pipeline.num_stages == 2
    sink = HostMemory(capacity=len(sizes))
    pipeline.sampler = SizeAwareSampler(dataset, max_atoms=15, max_batch_size=3)
    pipeline.sinks = [sink]
    pipeline.refill_frequency = 3
    assert pipeline.run(batch=None) is None
    out = sink.drain()
    assert sorted(out.system_id.reshape(-1).tolist()) == list(range(len(sizes)))
    for k in range(out.num_graphs):
        got = out.index_select(torch.tensor([k]))
        if int(got["status"]) != SystemStatus.CONVERGED:
            continue
        assert int(got["stage"]) == 1 and int(got["stage_steps"]) == 12
        alone = Batch.from_data_list([dataset[int(got["sample_index"])][0]])
        alone.set_field("system_id", got.system_id.clone(), "system")
        alone = stages().run(alone)
        assert int(alone["n_steps"]) == int(got["n_steps"])
        assert torch.allclose(got.positions, alone.positions, rtol=0, atol=1e-10)
        assert torch.allclose(got.velocities, alone.velocities, rtol=0, atol=1e-10)
        assert torch.allclose(got.energies, alone.energies, rtol=0, atol=1e-10)


class _ThreadProbe(Hook):
    def __init__(self):
        self.seen = set()

    def __call__(self, batch, context):
        self.seen.add(torch.get_num_threads())


@pytest.mark.parametrize("cpu_threads", ["auto", 1, None])
def test_cpu_threads_policy_is_applied_during_run_and_restored(model, cpu_threads):
    from ase.build import bulk

    from batchmd.models.lj import LennardJones

    before = torch.get_num_threads()
    lj = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5)
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    atoms.rattle(0.05, seed=1)
    for m, warp_model in ((lj, True), (model, False)):
        batch = Batch.from_ase([atoms], dtype=torch.float64)
        probe = _ThreadProbe()
        FusedStage([FIRE(m, n_steps=3)], hooks=[probe], cpu_threads=cpu_threads).run(batch)
        if cpu_threads == 1 or (cpu_threads == "auto" and warp_model):
            assert probe.seen == {1}
        else:
            assert probe.seen == {before}
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="cpu_threads"):
        FusedStage([FIRE(lj, n_steps=3)], cpu_threads=0)


def test_occupancy_counts_steps_and_priming_evaluations_of_refilled_systems(model):
    """Fixed budgets (no convergence): every evaluation in the loop is accounted exactly.

    Five 5-atom systems, 10 steps each, a 10-atom budget, refill every step: the first
    two are primed before the loop; each later one is primed in a loop step (PENDING),
    so the live batch is full in every step but the drain at the end.
    """
    dataset = RandomClusters([5] * 5, seed=2)
    fused = FusedStage([FIRE(model, n_steps=10)], sampler=SizeAwareSampler(dataset, max_atoms=10),
                       sinks=[HostMemory(capacity=5)], refill_frequency=1)
    fused.run(batch=None)
    stats = fused.stats
    assert stats.atom_steps == 5 * 5 * 10
    in_use = 5 * 5 * 10 + 3 * 5  # every step, plus the priming evaluations of the 3 refilled systems
    assert stats.mean_occupancy == pytest.approx(in_use / 10 / stats.steps)


def test_chunked_force_statistics_change_nothing():
    """The GPU path's chunked fmax/finite statistics (forced here on the CPU) give the same run, bitwise."""
    from ase.build import bulk

    from batchmd.models.lj import LennardJones

    frames = [bulk("Ar", "fcc", a=5.26, cubic=True).repeat(r) for r in [(2, 2, 2), (5, 5, 5), (3, 3, 4)]]
    for k, atoms in enumerate(frames):
        atoms.rattle(0.08, seed=k)
    runs = {}
    for chunked in (False, True):
        loop = FusedStage([FIRE(LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125),
                                convergence_hook=ConvergenceHook.from_forces(0.02), n_steps=40)], refill_frequency=7)
        loop.chunked_reductions = chunked
        runs[chunked] = loop.run(Batch.from_ase(frames))
    for name in ("positions", "forces", "fmax", "n_steps", "status"):
        assert torch.equal(runs[False][name], runs[True][name]), name


def test_cuda_graph_policy(model):
    """When the loop may replay steps as CUDA graphs (decided on the host; the replay itself
    is tested on GPUs in test_cuda.py)."""
    import types

    from batchmd.models.lj import LennardJones
    from batchmd.progress import ProgressHook

    lj = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
    on_gpu = types.SimpleNamespace(device=torch.device("cuda"))
    on_cpu = types.SimpleNamespace(device=torch.device("cpu"))

    def loop(m, **kw):
        hooks = kw.pop("hooks", None)
        return FusedStage([_fire(m, hooks=hooks)], **kw)

    assert loop(lj)._graph_steps(on_gpu)
    assert not loop(lj)._graph_steps(on_cpu)
    assert not loop(lj, cuda_graph=False)._graph_steps(on_gpu)
    assert not loop(model)._graph_steps(on_gpu)  # "auto": the model does not declare supports_cuda_graph
    assert loop(model, cuda_graph=True)._graph_steps(on_gpu)
    assert loop(lj, hooks=[ProgressHook(enabled=False)])._graph_steps(on_gpu)  # host-only hook
    assert not loop(lj, hooks=[TrajectoryHook(frequency=5)])._graph_steps(on_gpu)
    sampler = SizeAwareSampler(RandomClusters([3, 4]), max_atoms=8)
    assert not loop(lj, sampler=sampler)._graph_steps(on_gpu)
    assert not loop(lj, sampler=sampler, refill_in_place=True)._graph_steps(on_gpu)  # "auto": not inflight
    assert loop(lj, sampler=sampler, refill_in_place=True, cuda_graph=True)._graph_steps(on_gpu)
    with pytest.raises(ValueError, match="cuda_graph"):
        FusedStage([_fire(lj)], cuda_graph="yes")


def _run_inflight(model, dataset, in_place, **kw):
    sink = HostMemory(capacity=len(dataset))
    fused = FusedStage([(0, _fire(model, threshold=kw.pop("threshold", 0.05), n_steps=kw.pop("budget", 60)))],
                       sampler=SizeAwareSampler(dataset, **kw), sinks=[sink], refill_frequency=3,
                       refill_in_place=in_place)
    fused.run(batch=None)
    out = sink.drain()
    order = torch.argsort(out["sample_index"].reshape(-1))
    return out.index_select(order), fused


@pytest.mark.parametrize("sizes", [[4, 5, 6] * 6, [3, 9, 2, 7, 5, 4, 8, 6] * 3, [5] * 12])
def test_refill_in_place_serves_each_sample_once_with_the_same_results(model, sizes):
    dataset = RandomClusters(sizes, seed=21)
    ref, _ = _run_inflight(model, dataset, False, max_atoms=20, max_batch_size=4)
    got, fused = _run_inflight(model, dataset, True, max_atoms=20, max_batch_size=4)
    assert fused.stats.refills_in_place > 0
    assert sorted(got.system_id.reshape(-1).tolist()) == list(range(len(sizes)))
    assert got["sample_index"].reshape(-1).tolist() == list(range(len(sizes)))
    for name in ("n_steps", "status"):
        assert torch.equal(got[name], ref[name]), name
    # The torch demo model's autograd sums are not bitwise batch-invariant (a system alone and in a
    # batch differ by ~1e-18 eV/Å); the Warp Lennard-Jones test below checks bitwise equality.
    for name in ("positions", "forces", "energies"):
        assert torch.allclose(got[name], ref[name], rtol=0, atol=1e-12), name


def test_refill_in_place_with_lennard_jones_neighbor_lists():
    """Periodic argon cells of three sizes: neighbor lists rebuilt for replaced slots, results bitwise the default's."""
    from ase.build import bulk

    from batchmd.ase import AtomsDataset
    from batchmd.models.lj import LennardJones

    frames = []
    for k in range(15):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat([(2, 2, 2), (2, 2, 3), (3, 3, 3)][k % 3])
        atoms.rattle(0.05 + 0.02 * (k % 5), seed=k)
        frames.append(atoms)
    lj = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
    dataset = AtomsDataset(frames)
    ref, _ = _run_inflight(lj, dataset, False, threshold=0.01, budget=200, max_atoms=230, max_batch_size=4)
    got, fused = _run_inflight(lj, dataset, True, threshold=0.01, budget=200, max_atoms=230, max_batch_size=4)
    assert fused.stats.refills_in_place > 0
    for name in ("positions", "forces", "energies", "n_steps", "status"):
        assert torch.equal(got[name], ref[name]), name


def test_overwrite_systems_in_place_and_its_errors():
    a = Batch.from_data_list([RandomClusters([3, 4, 5], seed=1)[i][0] for i in range(3)])
    b = Batch.from_data_list([RandomClusters([5, 3], seed=2)[i][0] for i in range(2)])
    positions = a.positions
    a.overwrite_systems([2, 0], b)
    assert a.positions is positions  # same tensor, rows rewritten
    assert torch.equal(a.positions[0:3], b.positions[5:8]) and torch.equal(a.positions[7:12], b.positions[0:5])
    with pytest.raises(ValueError, match="sizes must match"):
        a.overwrite_systems([1], Batch.from_data_list([RandomClusters([3], seed=3)[0][0]]))
    with pytest.raises(ValueError, match="distinct"):
        a.overwrite_systems([0, 0], b)
