"""The cost of one refill point of an inflight run (64 slots), in wall and CPU time, by phase.

    PYTHONPATH=src:. python -m benchmarks.refill_cost [cpu|cuda] [n_structures] [refill_frequency]

Runs W4W (LJ argon cells of 32-108 atoms, FIRE) inflight with 64 slots, refilling every
``refill_frequency`` steps (default 5), with and without refills in place (padded slots for Lennard-Jones), and
times every refill point: host wall time (after the status read, as
``RunStats.refill_seconds``) and this thread's CPU time (``time.thread_time``: on a machine
shared with other sessions, CPU time is far steadier than wall time), split into
graduation (hooks and sinks), sampling (loading samples and building the newcomers'
batch) and the new live batch (in-place writes and ``select_and_append``). The issue's
goal on a GPU: under 0.5 ms for 64 slots.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections import defaultdict

device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
refill = int(sys.argv[3]) if len(sys.argv) > 3 else 5
os.environ["BENCH_DEVICE"] = device

from benchmarks import workloads as wl  # noqa: E402
from benchmarks.peers import batchmd_peer as bp  # noqa: E402
from batchmd.dynamics.refill import RefillPoints  # noqa: E402

TIMES: dict[str, list[tuple[float, float]]] = defaultdict(list)


def timed(name, method):
    def wrapper(*args, **kwargs):
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return method(*args, **kwargs)
        finally:
            TIMES[name].append((time.perf_counter() - w0, time.thread_time() - c0))
    return wrapper


# The phases of RefillPoints._refill_after_status (graduate, then sample, then the new batch).
RefillPoints._refill_after_status = timed("refill point", RefillPoints._refill_after_status)
RefillPoints._graduate = timed("graduation", RefillPoints._graduate)
RefillPoints._new_systems = timed("sampling (appended)", RefillPoints._new_systems)
RefillPoints._refill_in_place = timed("in-place refills (sampling + writes)", RefillPoints._refill_in_place)
RefillPoints._insert = staticmethod(timed("select_and_append", RefillPoints._insert))
# A padded live batch (Lennard-Jones with refill_in_place, dynamics/slot_layout.py).
from batchmd.dynamics.slot_layout import SlotLayout  # noqa: E402
from batchmd.models.lj import LennardJones  # noqa: E402

SlotLayout.plan = timed("padded: plan + loading samples", SlotLayout.plan)
RefillPoints._prepare_new = timed("newcomers' loop and stage-0 state", RefillPoints._prepare_new)
SlotLayout.write = timed("padded: ptr, batch_idx, newcomers' rows", SlotLayout.write)
LennardJones.systems_replaced = timed("padded: neighbor-list grids (systems_replaced)", LennardJones.systems_replaced)
RefillPoints._compact = timed("padded: compaction", RefillPoints._compact)

structures = wl.w4w_structures(n)
bp.run_w4_inflight([a.copy() for a in structures[:100]], 64, refill, in_place=True)  # compile and warm
lines = [f"Refill points of W4W inflight ({n} structures, 64 slots, refill every {refill}, {device}); "
         f"ms per refill point, median (mean) over the run; load average {os.getloadavg()[0]:.1f}.", "",
         "| mode | phase | calls | wall ms median (mean) | CPU ms median (mean) |", "|---|---|---|---|---|"]
for in_place in (False, True):
    TIMES.clear()
    res = bp.run_w4_inflight([a.copy() for a in structures], 64, refill, in_place=in_place)
    mode = "in place (padded)" if in_place else "select_and_append"
    for phase, xs in TIMES.items():
        wall = [1e3 * w for w, _ in xs]
        cpu = [1e3 * c for _, c in xs]
        lines.append(f"| {mode} | {phase} | {len(xs)} | {statistics.median(wall):.2f} ({statistics.mean(wall):.2f}) | "
                     f"{statistics.median(cpu):.2f} ({statistics.mean(cpu):.2f}) |")
    lines.append(f"| {mode} | whole run: {res.wall:.2f} s wall, occupancy {res.extra['mean_occupancy']:.1%}, "
                 f"refill overhead {res.extra['refill_overhead']:.1%} | | | |")
print("\n".join(lines))
