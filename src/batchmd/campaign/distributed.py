"""Rank, device and the few collectives a campaign needs (start/end barriers, gathers).

Under ``torchrun`` the environment holds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and
``MASTER_ADDR``/``MASTER_PORT`` for the rendezvous). :meth:`RankContext.from_env` reads
them, picks the rank's device (``cuda:LOCAL_RANK`` when CUDA is available, else the CPU)
and joins a process group with the *gloo* backend: a campaign only synchronises control
data (a status integer, a few floats per rank), never device tensors, so gloo serves on
CPU and GPU clusters alike. Without ``WORLD_SIZE`` it is a single process and the
collectives are no-ops.

Example
-------
>>> from batchmd.campaign.distributed import RankContext
>>> ctx = RankContext(rank=0, world_size=1, local_rank=0)
>>> ctx.all_gather_floats([1.0, 2.0])
[[1.0, 2.0]]
"""

from __future__ import annotations

import datetime
import os

import torch

__all__ = ["RankContext", "under_torchrun"]


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (``WORLD_SIZE`` is set)."""
    return "WORLD_SIZE" in os.environ


def default_device(local_rank: int) -> torch.device:
    """``cuda:local_rank`` when CUDA is available, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


class RankContext:
    """Who this process is in a campaign, and its collectives.

    Parameters
    ----------
    rank, world_size, local_rank : int
    device : torch.device, optional
        Default :func:`default_device`.
    group : optional
        A gloo process group (None for a single process).
    owns_group : bool
        Whether :meth:`close` destroys the default process group.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, device=None, group=None,
                 owns_group: bool = False) -> None:
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        self.device = torch.device(device) if device is not None else default_device(self.local_rank)
        self.group = group
        self.owns_group = owns_group

    @classmethod
    def from_env(cls, device=None, timeout_s: float = 7 * 24 * 3600.0) -> "RankContext":
        """Context of a torchrun worker (joining a gloo group), or of a lone process.

        ``timeout_s`` bounds how long a barrier waits: the end barrier waits for the
        slowest rank, so it is long by default.
        """
        if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
            return cls(device=device)
        import torch.distributed as dist

        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", 0))
        owns = False
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
            owns = True
            group = None
        else:
            group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        context = cls(rank, world, local, device=device, group=group, owns_group=owns)
        context._distributed = True
        if context.device.type == "cuda":
            torch.cuda.set_device(context.device)
        return context

    @property
    def distributed(self) -> bool:
        """Whether collectives talk to other processes."""
        return getattr(self, "_distributed", False)

    def barrier(self) -> None:
        """Wait for every rank (no-op alone)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def broadcast_int(self, value: int, src: int = 0) -> int:
        """Rank ``src``'s ``value`` on every rank."""
        if not self.distributed:
            return int(value)
        import torch.distributed as dist

        tensor = torch.tensor([int(value)], dtype=torch.int64)
        dist.broadcast(tensor, src=src, group=self.group)
        return int(tensor.item())

    def all_gather_floats(self, values: list[float]) -> list[list[float]]:
        """Every rank's ``values`` (same length on all ranks), indexed by rank."""
        if not self.distributed:
            return [[float(v) for v in values]]
        import torch.distributed as dist

        mine = torch.tensor([float(v) for v in values], dtype=torch.float64)
        out = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine, group=self.group)
        return [t.tolist() for t in out]

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.distributed and self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._distributed = False

    def __repr__(self) -> str:
        return f"RankContext(rank={self.rank}, world_size={self.world_size}, device={self.device})"
