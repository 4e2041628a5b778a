"""Deterministic assignment of shards to ranks.

The assignment is a pure function of ``(seed, manifest version, world size)`` and the
manifest's shard entries: every rank computes it independently and all agree, with no
communication. Two steps:

1. *Order*: shards are ordered by ``SHA-256(f"{seed}:{version}:{shard name}")`` -- a
   stable pseudo-random permutation (no RNG library whose stream could change).
2. *Balance*: in decreasing order of atoms (ties in the permuted order), each shard goes
   to the rank with the fewest atoms so far (ties to the lowest rank): the
   longest-processing-time rule, so ranks get near-equal work measured in atoms.

Each rank processes its shards in the permuted order. Results are keyed by global input
index, not by rank, so a campaign may resume with a different world size: the
assignment changes, but structures already committed are skipped wherever they are.

Example
-------
>>> from batchmd.campaign.ownership import assign
>>> assign([("a", 10), ("b", 10), ("c", 5), ("d", 5)], world_size=2, seed=0, version="v1")
[[3, 1], [0, 2]]
"""

from __future__ import annotations

import hashlib

__all__ = ["assign", "assign_manifest", "owned_indices"]


def _key(seed: int, version: str, name: str) -> str:
    return hashlib.sha256(f"{int(seed)}:{version}:{name}".encode()).hexdigest()


def assign(shards, world_size: int, seed: int, version: str) -> list[list[int]]:
    """Shard positions owned by each rank.

    Parameters
    ----------
    shards : sequence of (name, num_atoms)
        Shard names and sizes, in manifest order.
    world_size : int
        Number of ranks (>= 1).
    seed : int
        Campaign seed.
    version : str
        Manifest version.

    Returns
    -------
    list of list of int
        ``result[rank]`` lists positions into ``shards``, in that rank's processing order.
    """
    if int(world_size) < 1:
        raise ValueError(f"assign: world_size must be >= 1, got {world_size}")
    permuted = sorted(range(len(shards)), key=lambda p: _key(seed, version, shards[p][0]))
    rank_in_order = {p: k for k, p in enumerate(permuted)}
    by_size = sorted(permuted, key=lambda p: (-int(shards[p][1]), rank_in_order[p]))
    load = [0] * int(world_size)
    owned: list[list[int]] = [[] for _ in range(int(world_size))]
    for position in by_size:
        rank = min(range(len(load)), key=lambda r: (load[r], r))
        owned[rank].append(position)
        load[rank] += int(shards[position][1])
    return [sorted(mine, key=rank_in_order.__getitem__) for mine in owned]


def assign_manifest(manifest, world_size: int, seed: int) -> list[list[int]]:
    """:func:`assign` over a :class:`~batchmd.campaign.manifest.Manifest`'s shards."""
    return assign([(s.name, s.num_atoms) for s in manifest.shards], world_size, seed, manifest.version)


def owned_indices(manifest, rank: int, world_size: int, seed: int) -> list[int]:
    """Global input indices owned by ``rank``, in its processing order."""
    positions = assign_manifest(manifest, world_size, seed)[rank]
    out: list[int] = []
    for position in positions:
        out.extend(manifest.shards[position].indices)
    return out
