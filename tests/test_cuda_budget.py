"""Budgets and out-of-memory recovery on a real GPU (skipped without CUDA).

``choose_budget`` probes the demo network's peak memory with CUDA's allocator statistics;
a model that asks the allocator for more than the free memory above N atoms raises a
real ``torch.OutOfMemoryError`` (nothing is actually used), which the loop recovers from.
"""

from __future__ import annotations

import pytest
import torch

from batchmd.data import AtomicData, Batch
from batchmd.dynamics import FIRE, ConvergenceHook, FusedStage, SizeAwareSampler
from batchmd.dynamics import budget as bud
from batchmd.dynamics.sinks import HostMemory
from batchmd.models.demo import DemoModelWrapper

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Clusters:
    def __init__(self, sizes, seed=0):
        self.sizes = list(sizes)
        self.seed = seed

    def __len__(self):
        return len(self.sizes)

    def get_metadata(self, idx):
        return self.sizes[idx], 0

    def __getitem__(self, idx):
        g = torch.Generator().manual_seed(self.seed + idx)
        n = self.sizes[idx]
        return AtomicData(positions=1.2 * torch.randn(n, 3, generator=g, dtype=torch.float64),
                          atomic_numbers=torch.randint(1, 10, (n,), generator=g)), {}


class GreedyAbove(torch.nn.Module):
    """Asks CUDA's allocator for more than the free memory when called on more than ``limit`` atoms."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.failed = inner, limit, 0
        self.per_atom = int(torch.cuda.mem_get_info()[0] / (limit + 0.5)) + 1

    def forward(self, batch):
        try:
            block = torch.empty(batch.num_nodes * self.per_atom, dtype=torch.uint8, device=batch.device)
            del block
        except torch.OutOfMemoryError:
            self.failed += 1
            raise
        return self.inner(batch)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHMD_CACHE_DIR", str(tmp_path))
    bud.clear_cache()


def test_memory_model_budget_on_cuda():
    torch.manual_seed(0)
    model = DemoModelWrapper().double().cuda()
    systems = [Clusters([12, 20])[i][0] for i in range(2)]
    budget = bud.choose_budget(model, systems, device="cuda", dtype=torch.float64)
    mm = budget.memory_model
    assert budget.source == "memory" and len(mm.points) >= 2 and mm.bytes_per_atom > 0
    assert mm.predict(budget.max_atoms) <= 0.8 * budget.details["free_bytes"] + 1
    again = bud.choose_budget(model, systems, device="cuda", dtype=torch.float64)
    assert again.details["cache_hit"] and again.memory_model == mm


def test_real_cuda_oom_is_recovered_without_loss():
    torch.manual_seed(0)
    inner = DemoModelWrapper().double().cuda()
    sizes = [5, 9, 6, 4, 8, 7, 5, 6, 9, 4]

    def run(model, max_atoms):
        sink = HostMemory(capacity=len(sizes))
        fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=100)
        fused = FusedStage([fire], sampler=SizeAwareSampler(Clusters(sizes, 3), max_atoms=max_atoms),
                           sinks=[sink], refill_frequency=2, device="cuda")
        fused.run(batch=None)
        out = sink.drain()
        order = torch.argsort(out["sample_index"].reshape(-1))
        return fused, out.energies.reshape(-1)[order], out["n_steps"].reshape(-1)[order]

    _, e_ref, n_ref = run(inner, 18)
    greedy = GreedyAbove(inner, 18)
    fused, e, n = run(greedy, 40)
    assert greedy.failed >= 1 and fused.stats.oom_events == greedy.failed
    assert torch.equal(n, n_ref)
    torch.testing.assert_close(e, e_ref, rtol=0, atol=1e-10)
