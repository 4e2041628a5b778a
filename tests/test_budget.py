"""Budgets chosen for the user (memory model, throughput probe, cache) and out-of-memory recovery.

The out-of-memory tests run on the CPU with a model wrapper that raises
``torch.OutOfMemoryError`` whenever it is called on more than N atoms, as CUDA's
allocator would.
"""

from __future__ import annotations

import pytest
import torch

from batchmd.data import AtomicData, Batch
from batchmd.dynamics import FIRE, ConvergenceHook, FusedStage, SizeAwareSampler
from batchmd.dynamics import budget as bud
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
        data = AtomicData(positions=self.spread * torch.randn(n, 3, generator=g, dtype=torch.float64),
                          atomic_numbers=torch.randint(1, 10, (n,), generator=g))
        return data, {}


class OOMAbove(torch.nn.Module):
    """Raises torch.OutOfMemoryError when called on more than ``limit`` atoms (a simulated GPU)."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.calls = []

    def forward(self, batch):
        self.calls.append(batch.num_nodes)
        if batch.num_nodes > self.limit:
            raise torch.OutOfMemoryError(f"simulated: {batch.num_nodes} atoms > {self.limit}")
        return self.inner(batch)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHMD_CACHE_DIR", str(tmp_path / "cache"))
    bud.clear_cache()
    yield
    bud.clear_cache()


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(3)
    return DemoModelWrapper().double()


def _fire(model):
    return FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=150)


def _inflight(model, sizes, max_atoms, refill=2, in_place=False):
    sampler = SizeAwareSampler(RandomClusters(sizes, seed=5), max_atoms=max_atoms, max_batch_size=8)
    sink = HostMemory(capacity=len(sizes))
    fused = FusedStage([_fire(model)], sampler=sampler, sinks=[sink], refill_frequency=refill,
                       refill_in_place=in_place)
    assert fused.run(batch=None) is None
    out = sink.drain()
    order = torch.argsort(out["sample_index"].reshape(-1))
    return fused, {name: out[name].reshape(out.num_graphs, -1)[order] for name in
                   ("sample_index", "system_id", "energies", "n_steps", "status")}, out


SIZES = [4, 7, 5, 9, 6, 3, 8, 5, 7, 4, 6, 9, 5, 3]


@pytest.mark.parametrize("in_place", [False, True])
def test_inflight_oom_returns_unmoved_systems_and_loses_nothing(demo, in_place):
    _, reference, _ = _inflight(demo, SIZES, max_atoms=20, in_place=in_place)
    flaky = OOMAbove(demo, limit=20)
    fused, got, out = _inflight(flaky, SIZES, max_atoms=40, in_place=in_place)
    assert fused.stats.oom_events >= 1 and fused.stats.systems_returned >= 1
    assert max(n for n in flaky.calls if n <= 20) <= 20 and any(n > 20 for n in flaky.calls)
    # every sample exactly once, system ids unique
    assert sorted(out["sample_index"].reshape(-1).tolist()) == list(range(len(SIZES)))
    assert len(set(out["system_id"].reshape(-1).tolist())) == len(SIZES)
    assert fused.stats.systems_graduated == len(SIZES)
    # the same trajectory per system as a run that never ran out of memory
    assert torch.equal(got["n_steps"], reference["n_steps"])
    assert torch.equal(got["status"], reference["status"])
    torch.testing.assert_close(got["energies"], reference["energies"], rtol=0, atol=1e-10)
    assert fused.sampler.max_atoms <= 20


def test_static_batch_oom_evaluates_in_chunks(demo):
    data = [RandomClusters(SIZES, seed=9)[i][0] for i in range(len(SIZES))]
    reference = _fire(demo).run(Batch.from_data_list(data))
    flaky = OOMAbove(demo, limit=25)
    fire = _fire(flaky)
    out = fire.run(Batch.from_data_list(data))
    failed = [i for i, n in enumerate(flaky.calls) if n > 25]
    assert failed and fire._solo_loop().stats.oom_events == len(failed)  # 81 -> 56 -> 39 -> 27 -> 18 atoms
    assert all(n <= 25 for n in flaky.calls[failed[-1] + 1:])  # then chunks only, every step
    assert torch.equal(out.n_steps, reference.n_steps)
    torch.testing.assert_close(out.energies, reference.energies, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.positions, reference.positions, rtol=0, atol=1e-10)


def test_oom_on_a_single_system_is_a_clear_error(demo):
    data = [RandomClusters([9, 4], seed=1)[i][0] for i in range(2)]
    with pytest.raises(RuntimeError, match="single system of 9 atoms"):
        _fire(OOMAbove(demo, limit=6)).run(Batch.from_data_list(data))


def test_oom_retry_off_reraises(demo):
    data = [RandomClusters([5, 5], seed=1)[i][0] for i in range(2)]
    fire = _fire(OOMAbove(demo, limit=6))
    fire._solo_loop().oom_retry = False
    with pytest.raises(torch.OutOfMemoryError):
        fire.run(Batch.from_data_list(data))


def test_sampler_give_back_serves_same_samples_in_order():
    sampler = SizeAwareSampler(RandomClusters([3, 4, 3, 5, 3]), max_atoms=20)
    first = sampler.take(10)  # samples 0, 1, 2
    assert [int(d.sample_index) for d in first] == [0, 1, 2]
    sampler.give_back([first[2], first[1]])
    assert sampler.remaining == 4 and sampler.largest_remaining() == (5, 0)
    again = sampler.take(20)
    assert [int(d.sample_index) for d in again] == [1, 2, 3, 4]
    assert again[0] is first[1] and again[1] is first[2]  # the same objects, same system_id
    assert [int(d.system_id) for d in again] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="not out"):
        sampler.give_back([first[0], first[0]])


def test_fit_memory_model_recovers_coefficients_and_covers_points():
    pts = [(a, 12 * a + (a % 7), 5e6 + 800.0 * a + 60.0 * (12 * a + (a % 7))) for a in (256, 512, 1024, 2048)]
    mm = bud.fit_memory_model(pts)
    for a, e, m in pts:
        assert mm.predict(a, e) >= m - 1e-3
    pts2 = [(a, 0, 1e6 + 1000.0 * a) for a in (100, 200, 400)]
    mm2 = bud.fit_memory_model(pts2)
    assert mm2.base_bytes == pytest.approx(1e6) and mm2.bytes_per_atom == pytest.approx(1000.0)
    assert mm2.max_atoms(1e6 + 1000.0 * 5000.5) == 5000
    with pytest.raises(ValueError):
        bud.fit_memory_model([(10, 0, 1.0)])


def test_choose_budget_memory_model_headroom_cache_and_oom(demo):
    systems = [RandomClusters([6, 10], seed=2)[i][0] for i in range(2)]
    probed = []

    def measure(model, batch):  # a fake allocator: 2 MB fixed + 4 kB per atom
        probed.append(batch.num_nodes)
        return 2e6 + 4096.0 * batch.num_nodes

    free = 2e6 + 4096.0 * 100_000
    b1 = bud.choose_budget(demo, systems, device="cpu", dtype=torch.float64, measure=measure, free_bytes=free,
                           headroom=0.5)
    assert b1.source == "memory" and b1.details["cache_hit"] is False
    assert b1.memory_model.predict(b1.max_atoms) <= 0.5 * free + 1
    assert b1.memory_model.predict(b1.max_atoms + 10) > 0.5 * free
    assert len(probed) >= 2 and probed == sorted(probed)
    n_probes = len(probed)
    b2 = bud.choose_budget(demo, systems, device="cpu", dtype=torch.float64, measure=measure, free_bytes=free,
                           headroom=0.5)
    assert len(probed) == n_probes and b2.details["cache_hit"] and b2.max_atoms == b1.max_atoms
    # the cache survives the process (disk) and is per dtype
    bud._CACHE.clear()
    b3 = bud.choose_budget(demo, systems, device="cpu", dtype=torch.float64, measure=measure, free_bytes=free,
                           headroom=0.5)
    assert len(probed) == n_probes and b3.max_atoms == b1.max_atoms
    bud.choose_budget(demo, systems, device="cpu", dtype=torch.float32, measure=measure, free_bytes=free)
    assert len(probed) > n_probes
    # an out-of-memory error recorded during a run caps later budgets
    bud.record_oom(demo, torch.float64, "cpu", 1000)
    b4 = bud.choose_budget(demo, systems, device="cpu", dtype=torch.float64, measure=measure, free_bytes=free)
    assert b4.max_atoms == 800


def test_choose_budget_cpu_throughput_and_user_budgets(demo):
    systems = [RandomClusters([6, 10], seed=2)[i][0] for i in range(2)]
    b = bud.choose_budget(demo, systems, device="cpu", dtype=torch.float64, max_probe_atoms=128)
    assert b.source == "throughput" and b.max_atoms >= 10 and b.max_edges is None
    assert [a for a, _ in b.details["rates"]] == sorted(a for a, _ in b.details["rates"])
    assert bud.choose_budget(demo, systems, max_atoms=500, max_edges=9000).sampler_kwargs() == \
        {"max_atoms": 500, "max_edges": 9000}
    with pytest.raises(ValueError):
        bud.choose_budget(demo, systems, headroom=1.5)


def test_choose_budget_edge_budget_from_cutoff():
    from ase.build import bulk

    class Cut(torch.nn.Module):
        cutoff = 3.0

        def forward(self, batch):
            return {"energy": torch.zeros(batch.num_graphs, 1, dtype=batch.dtype),
                    "forces": torch.zeros_like(batch.positions)}

    si = bulk("Si", cubic=True)  # 8 atoms, 4 neighbors each within 3 Å
    budget = bud.choose_budget(Cut(), [si], device="cpu", dtype=torch.float64,
                               measure=lambda m, b: 1e5 + 1e3 * b.num_nodes, free_bytes=1e5 + 1e3 * 2000)
    assert budget.details["edges_per_atom"] == pytest.approx(4.0)
    assert budget.max_edges == 4 * budget.max_atoms
