"""Helpers for the pytest-benchmark entry points: load a peer or skip, benchmark a runner."""

import pytest

from benchmarks.common import PeerUnavailable


def load(name: str):
    """The peer runner module, or skip the test with the reason it is unavailable."""
    import importlib

    try:
        mod = importlib.import_module(f"benchmarks.peers.{name}_peer")
        mod.setup()
        return mod
    except PeerUnavailable as exc:
        pytest.skip(f"{name}: {exc}")
    except Exception as exc:
        pytest.skip(f"{name}: {type(exc).__name__}: {exc}")


def run_or_skip(benchmark, func, make_args):
    """Benchmark ``func(*make_args())`` (fresh inputs each round, built outside the timing)."""
    try:
        func(*make_args())  # first call: JIT / kernel loading, not benchmarked
    except PeerUnavailable as exc:
        pytest.skip(str(exc))
    return benchmark.pedantic(func, setup=lambda: (make_args(), {}), rounds=3, iterations=1)
