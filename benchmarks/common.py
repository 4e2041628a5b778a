"""What every peer runner returns, and the small helpers they share."""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import asdict, dataclass, field


class PeerUnavailable(RuntimeError):
    """A peer (or one of its workloads) cannot run here; the message says why."""


@dataclass
class Result:
    """One run of one workload by one peer.

    ``atom_evals`` counts useful atom force evaluations: sum over structures of
    n_atoms x (force evaluations that structure needed) for relaxations, and
    n_atoms x steps for MD (one force evaluation per step). The rate divides it by
    ``wall`` so batched and one-at-a-time peers compare on the same work.
    """

    peer: str
    workload: str
    wall: float  # s, the timed region only (structures already built)
    atom_evals: float  # atom force evaluations (W1) or atom-steps (W2/W3) done
    n_force_evals: int | None = None  # model calls (batched calls count once)
    energies: list[float] | None = None  # final potential energy per structure, eV (W1)
    n_steps: list[int] | None = None  # optimizer steps per structure (W1)
    converged: list[bool] | None = None
    extrapolated_from: int | None = None  # steps actually run when W3 is extrapolated
    variant: str = ""  # e.g. "fused batch", "inflight" for peers with several APIs
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.atom_evals / self.wall if self.wall > 0 else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rate"] = self.rate
        return d


def require(module: str, pip_name: str | None = None):
    """Import ``module`` or raise PeerUnavailable naming what to install."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken native library (OSError)
        raise PeerUnavailable(
            f"cannot import {module} ({type(exc).__name__}: {exc}); "
            f"pip install {pip_name or module} in the benchmark venv"
        ) from exc


def bench_device() -> str:
    """The device the GPU-capable peers run on: ``BENCH_DEVICE`` (``cpu`` by default, or ``cuda``)."""
    return os.environ.get("BENCH_DEVICE", "cpu")


def device_sync() -> None:
    """Wait for queued GPU work (no-op on CPU), so a wall time covers the work it launched."""
    if bench_device().startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class Timer:
    """Wall time of a block; on a GPU the device is synchronised at both ends."""

    def __enter__(self):
        device_sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        device_sync()
        self.elapsed = time.perf_counter() - self.t0
