"""Micro-benchmark of LennardJones force evaluations (run by hand, not a test).

Workloads (float32 by default):

- ``w1``: the 64 rattled FCC argon supercells of W1 (7,056 atoms), one batch.
- ``w3``: one 32,000-atom argon FCC box (20x20x20 cubic cells).

Paths timed:

- ``reuse``: repeated ``model(batch)`` with unchanged positions (the skin check finds
  nothing to rebuild: the steady state of dynamics between rebuilds).
- ``rebuild``: every call rebuilds every system (reference positions set to NaN first,
  as for freshly refilled slots).

Usage::

    python benchmarks/bench_lj_micro.py [--dtype float32|float64] [--seconds 3] [--no-stress]

Prints evaluations per second, microseconds per call and atom-evaluations per second.
"""

from __future__ import annotations

import argparse
import time

import torch

from batchmd.data import Batch
from batchmd.models.lj import LennardJones
from benchmarks.workloads import CUTOFF, EPSILON, SIGMA, w1_structures, w3_structure


def _time(fn, seconds: float, rounds: int = 5) -> tuple[float, float, int]:
    """Best (lowest) wall and CPU seconds per call over ``rounds`` rounds of ``seconds / rounds``.

    The best round is reported because a shared machine's speed drifts; CPU time (this
    process) is less sensitive to other load than wall time. Warp's CPU kernels are
    single-threaded, so on an idle machine both agree.
    """
    fn()  # warm-up (compiles/loads kernels)
    best_wall, best_cpu, total = float("inf"), float("inf"), 0
    for _ in range(rounds):
        calls, start, cpu = 0, time.perf_counter(), time.process_time()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / rounds and calls >= 2:
                break
        best_wall = min(best_wall, elapsed / calls)
        best_cpu = min(best_cpu, (time.process_time() - cpu) / calls)
        total += calls
    return best_wall, best_cpu, total


def bench(name: str, atoms_list, dtype: torch.dtype, seconds: float, stress: bool) -> None:
    batch = Batch.from_ase(atoms_list, dtype=dtype)
    model = LennardJones(sigma=SIGMA, epsilon=EPSILON, cutoff=CUTOFF, skin=1.0, compute_stress=stress)
    model(batch)
    n = batch.num_nodes

    def reuse():
        model(batch)

    def rebuild():
        batch["_nl_ref_positions"].fill_(float("nan"))
        model(batch)

    for label, fn in (("reuse", reuse), ("rebuild", rebuild)):
        wall, cpu, calls = _time(fn, seconds)
        print(f"{name:>3} {label:>8}: N={n:6d} B={batch.num_graphs:3d} | wall {1.0 / wall:7.1f} evals/s "
              f"{wall * 1e6:9.0f} us/call {n / wall / 1e6:6.3f} M atom-evals/s | cpu {cpu * 1e6:9.0f} us/call "
              f"{n / cpu / 1e6:6.3f} M atom-evals/s ({calls} calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-stress", action="store_true")
    parser.add_argument("--only", choices=["w1", "w3"], default=None)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"LennardJones micro-benchmark, {args.dtype}, stress={'off' if args.no_stress else 'on'}, "
          f"torch threads={torch.get_num_threads()}")
    if args.only in (None, "w1"):
        bench("w1", w1_structures(), dtype, args.seconds, not args.no_stress)
    if args.only in (None, "w3"):
        bench("w3", [w3_structure()], dtype, args.seconds, not args.no_stress)


if __name__ == "__main__":
    main()
