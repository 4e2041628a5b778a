"""SizeAwareSampler: serves dataset samples that fit the free capacity of a live batch.

The dataset protocol (three methods)::

    len(dataset)                      number of samples
    dataset[i] -> (AtomicData, dict)  load one sample
    dataset.get_metadata(i) -> (num_atoms, num_edges)   cheap, no loading
    dataset.identity(i) -> int        optional: the sample's stable identity (default i)

The sampler calls ``get_metadata`` once per sample at construction (it never loads a
sample to size it), groups samples in bins by atom count, and serves them in a fixed
*serving order*: dataset order, or a permutation drawn from ``seed`` when
``shuffle=True``. :meth:`request_replacement` returns the earliest sample in serving
order that fits the free atoms (and edges), so the order is deterministic for a given
seed and a given sequence of requests. Each sample handed out is stamped with its
``system_id`` -- the sample's stable identity: ``dataset.identity(i)`` when the dataset
defines it (a campaign's global input index), else its dataset index ``i`` -- its dataset
index ``sample_index`` and its ``sample_num_edges``, all int64 system properties. The
identity never depends on the serving order, the batch budgets, refills or the rank
count, so every random stream keyed on ``system_id`` (Langevin noise, Maxwell-Boltzmann
draws) gives a sample the same trajectory however it is served.

Prefetching (``prefetch=k``): one background thread loads the next ``k`` samples in
serving order while the live batch runs, so a refill finds them ready (Warp kernels
release the GIL, so on CPU the loading runs on another core). What is served, and in
which order, is the same with or without prefetching: the thread only calls
``dataset[i]`` early, and the stamping happens when a sample is handed out. The dataset's
``__getitem__`` must then be safe to call from another thread (read-only datasets are).
It pays when loading mostly waits outside Python (reading files, decompressing); a
loader that runs Python code competes with the loop for the GIL: converting ASE frames
ahead made inflight W4W 1.3-1.6x *slower* on the 2-core CPU machine, so it is off by
default.

Example
-------
See ``examples/inflight_batching.py``::

    sampler = SizeAwareSampler(dataset, max_atoms=24, max_edges=None, max_batch_size=6)
    batch = sampler.build_initial_batch()
    data = sampler.request_replacement(num_atoms=6, num_edges=0)   # or None
"""

from __future__ import annotations

import math
import operator
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import torch

__all__ = ["SizeAwareSampler", "estimate_num_edges"]


def estimate_num_edges(num_atoms: int, cutoff: float, volume: float | None = None,
                       density: float = 0.1) -> int:
    """Cheap estimate of a system's full-list edge count (for ``SizeAwareSampler(max_edges=...)``).

    ``E ~ N * rho * (4/3) pi rc^3`` with ``rho = N / volume`` for a periodic cell, else the
    typical condensed-matter ``density`` (atoms/Å^3; 0.1 is about water or silicon), capped
    at ``N (N - 1)`` for a finite cluster. An estimate, not a bound: leave headroom.

    Example
    -------
    >>> estimate_num_edges(8, 5.0, volume=160.2)
    209
    """
    n = int(num_atoms)
    sphere = 4.0 / 3.0 * math.pi * float(cutoff) ** 3
    if volume is not None and volume > 0:
        return int(round(n * n / volume * sphere))
    return int(min(n * (n - 1), round(n * density * sphere)))


class SizeAwareSampler:
    """Size-aware, deterministic sampler for inflight batching.

    Parameters
    ----------
    dataset : object
        Implements ``__len__``, ``__getitem__(i) -> (AtomicData, dict)`` and
        ``get_metadata(i) -> (num_atoms, num_edges)``.
    max_atoms : int
        Atom budget of the live batch.
    max_edges : int or None
        Edge budget of the live batch (None: no edge limit).
    max_batch_size : int or None
        Most systems in the live batch (None: limited by atoms only).
    shuffle : bool
        Serve samples in a permutation drawn from ``seed`` instead of dataset order.
    seed : int
        Seed of that permutation.
    prefetch : int
        Samples loaded ahead, in serving order, by one background thread (0: load on
        request). See the module docstring.

    Raises
    ------
    ValueError
        If a sample has no atoms, or is larger than the whole atom or edge budget (the
        message names the sample index), or the budgets are not positive.
    """

    def __init__(
        self,
        dataset,
        max_atoms: int,
        max_edges: int | None = None,
        max_batch_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        prefetch: int = 0,
    ) -> None:
        for attr in ("__len__", "__getitem__", "get_metadata"):
            if not hasattr(dataset, attr):
                raise TypeError(f"SizeAwareSampler: the dataset must implement {attr} (see the module docstring)")
        if int(max_atoms) <= 0:
            raise ValueError(f"SizeAwareSampler: max_atoms must be > 0, got {max_atoms}")
        if max_edges is not None and int(max_edges) < 0:
            raise ValueError(f"SizeAwareSampler: max_edges must be >= 0 or None, got {max_edges}")
        if max_batch_size is not None and int(max_batch_size) <= 0:
            raise ValueError(f"SizeAwareSampler: max_batch_size must be > 0 or None, got {max_batch_size}")
        if int(prefetch) != prefetch or prefetch < 0:
            raise ValueError(f"SizeAwareSampler: prefetch must be an integer >= 0, got {prefetch!r}")
        self.dataset = dataset
        self.max_atoms = int(max_atoms)
        self.max_edges = None if max_edges is None else int(max_edges)
        self.max_batch_size = int(max_batch_size) if max_batch_size is not None else self.max_atoms
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        n = len(dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        self._atoms: list[int] = [0] * n
        self._edges: list[int] = [0] * n
        self._bins: dict[int, deque] = {}
        for rank, index in enumerate(order):
            num_atoms, num_edges = dataset.get_metadata(index)
            num_atoms, num_edges = int(num_atoms), int(num_edges or 0)
            if num_atoms <= 0:
                raise ValueError(f"SizeAwareSampler: sample {index} has {num_atoms} atoms; every sample needs at least one")
            if num_atoms > self.max_atoms:
                raise ValueError(
                    f"SizeAwareSampler: sample {index} has {num_atoms} atoms, more than the whole budget "
                    f"max_atoms={self.max_atoms}; raise max_atoms or remove the sample"
                )
            if self.max_edges is not None and num_edges > self.max_edges:
                raise ValueError(
                    f"SizeAwareSampler: sample {index} has {num_edges} edges, more than the whole budget "
                    f"max_edges={self.max_edges}"
                )
            self._atoms[index] = num_atoms
            self._edges[index] = num_edges
            self._bins.setdefault(num_atoms, deque()).append((rank, index))
        if self.max_edges is not None and n and not any(self._edges) and max(self._atoms) > 1:
            raise ValueError(
                "SizeAwareSampler: max_edges is set but the dataset reports 0 edges for every sample "
                "(get_metadata -> (num_atoms, 0)), so the budget would bound nothing; give the dataset an "
                "edge estimate, e.g. AtomsDataset(frames, edge_cutoff=model.cutoff)")
        self._remaining = n
        self._order = order
        self._rank = {index: rank for rank, index in enumerate(order)}
        self._served = [False] * n
        self._cursor = 0  # lowest serving rank not handed out yet
        self._ahead = 0  # ranks below this were submitted to the prefetch thread
        self.prefetch = int(prefetch)
        self._pending: dict[int, Future] = {}
        self._returned: dict[int, object] = {}  # index -> a stamped sample handed back (give_back)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchmd-prefetch") if self.prefetch else None

    # ----------------------------------------------------------------- state
    def __len__(self) -> int:
        """Number of samples in the dataset."""
        return len(self._atoms)

    @property
    def remaining(self) -> int:
        """Samples not yet handed out."""
        return self._remaining

    @property
    def exhausted(self) -> bool:
        """True once every sample has been handed out."""
        return self._remaining == 0

    # ----------------------------------------------------------------- serving
    def _pick(self, num_atoms: int, num_edges: int | None):
        best = None
        for size, queue in self._bins.items():
            if size > num_atoms or not queue:
                continue
            if num_edges is None or self.max_edges is None:
                candidate = queue[0]
            else:
                candidate = next((item for item in queue if self._edges[item[1]] <= num_edges), None)
                if candidate is None:
                    continue
            if best is None or candidate[0] < best[1][0]:
                best = (size, candidate)
        return best

    def request_replacement(self, num_atoms: int, num_edges: int | None = None):
        """Return the next unconsumed sample with at most ``num_atoms`` atoms (and edges), or None.

        The sample is an :class:`~batchmd.data.AtomicData` stamped with ``system_id``,
        ``sample_index`` and ``sample_num_edges``; the dict from the dataset is kept in
        ``data.info`` under ``"metadata"`` when not empty.
        """
        picked = self._pick(int(num_atoms), None if num_edges is None else int(num_edges))
        if picked is None:
            return None
        size, item = picked
        self._bins[size].remove(item)
        if not self._bins[size]:
            del self._bins[size]
        self._remaining -= 1
        return self._load(item[1])

    def request_same_size(self, num_atoms: int):
        """Return the earliest unconsumed sample (serving order) of exactly ``num_atoms`` atoms, or None.

        Used by in-place refills (``FusedStage(refill_in_place=True)``), which serve
        same-size samples ahead of their turn. Not available with an edge budget (None).
        """
        queue = self._bins.get(int(num_atoms)) if self.max_edges is None else None
        if not queue:
            return None
        item = queue.popleft()
        if not queue:
            del self._bins[int(num_atoms)]
        self._remaining -= 1
        return self._load(item[1])

    def _prefetch(self) -> None:
        """Keep the next ``prefetch`` unserved samples (serving order) loading in the background."""
        while self._cursor < len(self._order) and self._served[self._order[self._cursor]]:
            self._cursor += 1
        self._ahead = max(self._ahead, self._cursor)
        submitted = sum(1 for rank in range(self._cursor, self._ahead) if not self._served[self._order[rank]])
        while submitted < self.prefetch and self._ahead < len(self._order):
            index = self._order[self._ahead]
            if not self._served[index] and index not in self._pending:
                self._pending[index] = self._pool.submit(operator.getitem, self.dataset, index)
                submitted += 1
            self._ahead += 1
        if self._remaining == 0:
            self.close()

    def close(self) -> None:
        """Stop the prefetch thread (called automatically once every sample is served)."""
        if self._pool is not None:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)
            self._pool = None

    def _load(self, index: int):
        self._served[index] = True
        returned = self._returned.pop(index, None)
        if returned is not None:  # handed back by give_back: served again as it was, same system_id
            return returned
        future = self._pending.pop(index, None)
        data, meta = future.result() if future is not None else self.dataset[index]
        if data.num_nodes != self._atoms[index]:
            raise ValueError(
                f"SizeAwareSampler: sample {index} has {data.num_nodes} atoms but get_metadata said {self._atoms[index]}"
            )
        identity = getattr(self.dataset, "identity", None)
        system_id = int(identity(index)) if identity is not None else int(index)
        data.add_system_property("system_id", torch.tensor([[system_id]], dtype=torch.int64))
        data.add_system_property("sample_index", torch.tensor([[index]], dtype=torch.int64))
        data.add_system_property("sample_num_edges", torch.tensor([[self._edges[index]]], dtype=torch.int64))
        if meta:
            data.info.setdefault("metadata", meta)
        if self._pool is not None:
            self._prefetch()
        return data

    def take(self, free_atoms: int, free_edges: int | None = None, free_slots: int | None = None) -> list:
        """Samples, in serving order, that together fit ``free_atoms`` (edges, slots); may be empty."""
        slots = self.max_batch_size if free_slots is None else int(free_slots)
        samples = []
        while slots > 0:
            data = self.request_replacement(free_atoms, free_edges)
            if data is None:
                break
            samples.append(data)
            free_atoms -= data.num_nodes
            if free_edges is not None:
                free_edges -= int(data.sample_num_edges.reshape(-1)[0])
            slots -= 1
        return samples

    def give_back(self, samples) -> None:
        """Return served samples, unchanged, to the queue at their place in serving order.

        Used when a live batch must shrink before these systems moved (an out-of-memory
        error at their first evaluation, see :mod:`batchmd.dynamics.budget`): each is served
        again, as the same object with the same ``system_id``, as soon as it fits, so no
        system is lost or duplicated.

        Raises
        ------
        ValueError
            If a sample was not served by this sampler or is already queued.
        """
        for data in samples:
            index = int(data.sample_index.reshape(-1)[0])
            if not 0 <= index < len(self) or not self._served[index] or index in self._returned:
                raise ValueError(f"SizeAwareSampler.give_back: sample {index} is not out (served and not returned)")
            rank = self._rank[index]
            queue = self._bins.setdefault(self._atoms[index], deque())
            position = next((i for i, item in enumerate(queue) if item[0] > rank), len(queue))
            queue.insert(position, (rank, index))
            self._returned[index] = data
            self._remaining += 1

    def smallest_remaining(self) -> int:
        """Atoms of the smallest sample not yet served (0 when exhausted)."""
        return min((size for size, queue in self._bins.items() if queue), default=0)

    def largest_remaining(self) -> tuple[int, int]:
        """(atoms, edges) of the largest samples not yet served ((0, 0) when exhausted)."""
        atoms = max((size for size, queue in self._bins.items() if queue), default=0)
        edges = max((self._edges[index] for queue in self._bins.values() for _, index in queue), default=0)
        return atoms, edges

    def initial_samples(self) -> list:
        """The samples of :meth:`build_initial_batch` (fill the budget in serving order)."""
        if self._pool is not None:
            self._prefetch()
        samples = self.take(self.max_atoms, self.max_edges, self.max_batch_size)
        if not samples:
            raise ValueError("SizeAwareSampler.build_initial_batch: the dataset is empty or already exhausted")
        return samples

    def build_initial_batch(self):
        """Fill the budget (atoms, edges, batch size) with samples in serving order; returns a Batch."""
        from batchmd.data import Batch

        return Batch.from_data_list(self.initial_samples())

    def __repr__(self) -> str:
        return (
            f"SizeAwareSampler(samples={len(self)}, remaining={self.remaining}, max_atoms={self.max_atoms}, "
            f"max_edges={self.max_edges}, max_batch_size={self.max_batch_size}, bins={sorted(self._bins)})"
        )
