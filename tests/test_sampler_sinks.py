"""SizeAwareSampler and sinks: determinism, budgets, clear errors, durability."""

from __future__ import annotations

import pytest
import torch

from batchmd.data import AtomicData, Batch
from batchmd.dynamics import SizeAwareSampler
from batchmd.dynamics.sinks import ExtXYZSink, HostMemory, SinkFullError, read_extxyz


class SizedDataset:
    """Random systems with given atom counts; counts loads to prove metadata-only scans."""

    def __init__(self, sizes, edges=None, seed=0):
        self.sizes = list(sizes)
        self.edges = list(edges) if edges is not None else [0] * len(self.sizes)
        self.seed = seed
        self.loads = 0

    def __len__(self):
        return len(self.sizes)

    def get_metadata(self, idx):
        return self.sizes[idx], self.edges[idx]

    def __getitem__(self, idx):
        self.loads += 1
        g = torch.Generator().manual_seed(self.seed + idx)
        n = self.sizes[idx]
        data = AtomicData(
            positions=2.0 * torch.randn(n, 3, generator=g, dtype=torch.float64),
            atomic_numbers=torch.full((n,), 18, dtype=torch.long),
        )
        return data, {"tag": idx}


def test_sampler_scans_metadata_only_and_bins_by_size():
    ds = SizedDataset([4, 5, 6, 4, 5, 6])
    sampler = SizeAwareSampler(ds, max_atoms=12, max_batch_size=4)
    assert ds.loads == 0
    assert sorted(sampler._bins) == [4, 5, 6]
    assert len(sampler) == 6 and sampler.remaining == 6 and not sampler.exhausted


def test_sampler_serves_in_order_with_system_ids_equal_to_the_sample_identity():
    ds = SizedDataset([4, 5, 6, 4, 5, 6])
    sampler = SizeAwareSampler(ds, max_atoms=12, max_batch_size=4)
    batch = sampler.build_initial_batch()
    assert batch.system_id.reshape(-1).tolist() == [0, 1]  # 4 + 5 atoms; 6 more would exceed 12
    assert batch["sample_index"].reshape(-1).tolist() == [0, 1]
    data = sampler.request_replacement(num_atoms=3)
    assert data is None
    data = sampler.request_replacement(num_atoms=5)
    # sample 2 (6 atoms) does not fit; system_id is the sample's identity, not its serving rank
    assert int(data.sample_index) == 3 and int(data.system_id) == 3
    data = sampler.request_replacement(num_atoms=100)
    assert int(data.sample_index) == 2 and int(data.system_id) == 2
    rest = [int(sampler.request_replacement(100).sample_index) for _ in range(2)]
    assert rest == [4, 5]
    assert sampler.exhausted and sampler.request_replacement(100) is None


def test_sampler_shuffle_is_deterministic_for_a_seed():
    def order(seed):
        sampler = SizeAwareSampler(SizedDataset([3] * 20), max_atoms=100, shuffle=True, seed=seed)
        return [int(sampler.request_replacement(100).sample_index) for _ in range(20)]

    assert order(7) == order(7)
    assert order(7) != order(8)
    assert sorted(order(7)) == list(range(20))


def test_sampler_rejects_oversized_sample_naming_it():
    with pytest.raises(ValueError, match="sample 2 has 30 atoms"):
        SizeAwareSampler(SizedDataset([4, 5, 30]), max_atoms=24)
    with pytest.raises(ValueError, match="sample 1 has 50 edges"):
        SizeAwareSampler(SizedDataset([4, 5], edges=[10, 50]), max_atoms=24, max_edges=40)
    with pytest.raises(ValueError, match="max_atoms must be > 0"):
        SizeAwareSampler(SizedDataset([4]), max_atoms=0)
    with pytest.raises(TypeError, match="get_metadata"):
        SizeAwareSampler([1, 2, 3], max_atoms=10)


def test_sampler_respects_edge_budget():
    ds = SizedDataset([2, 2, 2], edges=[10, 30, 5])
    sampler = SizeAwareSampler(ds, max_atoms=100, max_edges=40)
    batch = sampler.build_initial_batch()
    assert batch["sample_index"].reshape(-1).tolist() == [0, 1]  # 10 + 30 edges; the third (5) no longer fits
    assert int(sampler.request_replacement(10, num_edges=5).sample_index) == 2


@pytest.mark.parametrize("shuffle", [False, True])
def test_prefetch_serves_exactly_what_loading_on_request_serves(shuffle):
    import threading

    sizes = [4, 9, 2, 7, 3, 8, 5, 6, 1, 9, 2, 4] * 3
    requests = [5, 12, 1, 9, 3, 100, 2, 7, 4, 8, 6, 100] * 4

    threads = set()

    class Recording(SizedDataset):
        def __getitem__(self, idx):
            threads.add(threading.current_thread().name)
            return super().__getitem__(idx)

    def serve(prefetch):
        threads.clear()
        ds = Recording(sizes, seed=3)
        sampler = SizeAwareSampler(ds, max_atoms=100, shuffle=shuffle, seed=5, prefetch=prefetch)
        out = []
        for free in requests:
            data = sampler.request_replacement(free)
            if data is not None:
                out.append((int(data.sample_index), int(data.system_id), data.positions.clone(), data.info))
        return out, set(threads), sampler

    plain, plain_threads, _ = serve(0)
    ahead, ahead_threads, sampler = serve(3)
    assert [o[:2] for o in ahead] == [o[:2] for o in plain] and len(plain) == len(sizes)
    assert all(torch.equal(a[2], p[2]) and a[3] == p[3] for a, p in zip(ahead, plain))
    assert plain_threads == {threading.current_thread().name}
    assert any(name.startswith("batchmd-prefetch") for name in ahead_threads)
    assert sampler.exhausted and sampler._pool is None  # the thread stops once everything is served


def test_prefetch_reraises_a_failing_load_and_rejects_bad_values():
    class Broken(SizedDataset):
        def __getitem__(self, idx):
            if idx == 1:
                raise OSError("disk gone")
            return super().__getitem__(idx)

    ds = Broken([3, 3, 3])
    sampler = SizeAwareSampler(ds, max_atoms=10, prefetch=2)
    assert int(sampler.request_replacement(10).sample_index) == 0
    with pytest.raises(OSError, match="disk gone"):
        sampler.request_replacement(10)
    sampler.close()
    with pytest.raises(ValueError, match="prefetch must be an integer >= 0"):
        SizeAwareSampler(ds, max_atoms=10, prefetch=-1)


def test_sampler_checks_metadata_against_loaded_sample():
    ds = SizedDataset([4])
    ds.get_metadata = lambda i: (5, 0)
    sampler = SizeAwareSampler(ds, max_atoms=10)
    with pytest.raises(ValueError, match="get_metadata said 5"):
        sampler.request_replacement(10)


def _small_batch(n_systems, first_id=0):
    data = []
    for k in range(n_systems):
        d = AtomicData(positions=torch.randn(3, 3, dtype=torch.float64), atomic_numbers=torch.tensor([1, 8, 1]))
        d.add_system_property("system_id", torch.tensor([[first_id + k]]))
        data.append(d)
    return Batch.from_data_list(data)


def test_host_memory_capacity_error_drops_nothing():
    sink = HostMemory(capacity=3)
    sink.write(_small_batch(2))
    with pytest.raises(SinkFullError, match="capacity=3"):
        sink.write(_small_batch(2, first_id=2))
    assert len(sink) == 2
    out = sink.drain()
    assert out.system_id.reshape(-1).tolist() == [0, 1]
    assert len(sink) == 0 and sink.drain() is None
    with pytest.raises(ValueError):
        HostMemory(capacity=0)


def test_extxyz_sink_appends_durably_and_reads_back(tmp_path):
    path = tmp_path / "out.extxyz"
    sink = ExtXYZSink(path)
    first = _small_batch(2)
    first.set_field("energies", torch.tensor([[1.5], [2.5]], dtype=torch.float64), "system")
    first.set_field("forces", torch.randn(6, 3, dtype=torch.float64), "atom")
    first.set_field("status", torch.tensor([1, 2], dtype=torch.int32), "system")
    sink.write(first)
    sink.write(_small_batch(1, first_id=2))
    frames = read_extxyz(path)
    assert [a.info["system_id"] for a in frames] == [0, 1, 2]
    assert frames[0].info["status"] == "converged" and frames[1].info["status"] == "out_of_steps"  # the CLI's words
    assert frames[1].get_potential_energy() == pytest.approx(2.5)
    assert torch.allclose(torch.from_numpy(frames[0].get_forces()), first.forces[:3])
    # a crash mid-write leaves a truncated tail: complete frames still read back
    with open(path, "a") as handle:
        handle.write("3\nLattice=\"0 0 0")
    with pytest.warns(UserWarning, match="3 complete frames"):
        frames = read_extxyz(path)
    assert len(frames) == 3
