"""ShardedDataset: the sampler's dataset protocol over a sharded structure dataset.

::

    len(dataset)                          structures in this view
    dataset[i] -> (AtomicData, dict)      loads row i (its shard is read once and cached)
    dataset.get_metadata(i) -> (num_atoms, 0)   from the manifest, no shard is read

A view may cover every structure of the manifest or a chosen subset of global indices
(a rank's own shards minus those already committed). Local index ``i`` (what
:class:`~batchmd.dynamics.SizeAwareSampler` stamps as ``sample_index``) maps to the
structure's global input index with :meth:`ShardedDataset.global_index`; the global index
is the structure's identity in results.

Example
-------
>>> # from batchmd.campaign import Manifest, ShardedDataset
>>> # dataset = ShardedDataset(Manifest.load("dataset/"))
>>> # data, meta = dataset[0]; meta["index"], data.num_nodes
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from batchmd.campaign.manifest import Manifest
from batchmd.campaign.shards import DecodedShard

__all__ = ["ShardedDataset"]


class ShardedDataset:
    """Structures of a manifest (or a subset of them), in the sampler's dataset protocol.

    Parameters
    ----------
    manifest : Manifest or path
        The dataset (a :class:`Manifest` or a path :meth:`Manifest.load` accepts).
    indices : sequence of int, optional
        Global indices in this view, in serving order (default: all, in order).
    dtype : torch.dtype
        Floating dtype of the returned data (float64 default).
    cache_shards : int
        Decoded shards kept in memory (least recently used are dropped).
    verify : bool
        Check each shard's SHA-256 against the manifest when it is read.

    Examples
    --------
    >>> # dataset = ShardedDataset("dataset/", indices=[5, 6, 9])
    >>> # len(dataset), dataset.global_index(0), dataset.get_metadata(0)
    """

    def __init__(self, manifest, indices=None, dtype: torch.dtype = torch.float64, cache_shards: int = 4,
                 verify: bool = True) -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        if indices is None:
            self._indices = np.arange(self.manifest.num_structures, dtype=np.int64)
        else:
            self._indices = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
            if self._indices.size and (self._indices.min() < 0 or self._indices.max() >= self.manifest.num_structures):
                raise IndexError(f"ShardedDataset: indices must lie in 0..{self.manifest.num_structures - 1}")
        self.dtype = dtype
        self.verify = bool(verify)
        self.cache_shards = max(1, int(cache_shards))
        self._cache: OrderedDict[int, DecodedShard] = OrderedDict()

    def __len__(self) -> int:
        """Structures in this view."""
        return int(self._indices.size)

    @property
    def indices(self) -> np.ndarray:
        """Global indices of the view, in order (int64 array)."""
        return self._indices

    def global_index(self, i: int) -> int:
        """Global input index of local index ``i``."""
        return int(self._indices[i])

    def identity(self, i: int) -> int:
        """The sampler's ``system_id`` of local index ``i``: its global input index (stable across ranks)."""
        return int(self._indices[i])

    def get_metadata(self, i: int) -> tuple[int, int]:
        """(num_atoms, num_edges) of local index ``i``, from the manifest; edges are not precomputed (0)."""
        return self.manifest.atom_count(int(self._indices[i])), 0

    def _shard(self, position: int) -> DecodedShard:
        shard = self._cache.get(position)
        if shard is None:
            shard = DecodedShard(self.manifest.read_shard(position, verify=self.verify))
            self._cache[position] = shard
            while len(self._cache) > self.cache_shards:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(position)
        return shard

    def __getitem__(self, i: int):
        """``(AtomicData, {"index", "source", "frame", "info"})`` of local index ``i``.

        ``info`` is the JSON text of the input's ``atoms.info``; ``data.info`` holds the same.
        """
        index = int(self._indices[i])
        position, row = self.manifest.locate(index)
        shard = self._shard(position)
        data = shard.atomic_data(row, dtype=self.dtype)
        meta = {"index": index, "source": shard.source[row], "frame": int(shard.frame[row]), "info": shard.info[row]}
        return data, meta

    def __repr__(self) -> str:
        return f"ShardedDataset(structures={len(self)}, manifest_version={self.manifest.version})"
