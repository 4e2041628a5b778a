"""Where an inflight W4W run spends its time (cProfile), and static vs inflight wall times.

Run: ``python -m benchmarks.profile_inflight [cpu|cuda] [n_structures]``. Prints the wall
times of static batching and inflight refilling every step and every 5 steps, then the
functions with the most own time and the most cumulative time in one inflight run.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time

device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
os.environ["BENCH_DEVICE"] = device

from benchmarks import workloads as wl  # noqa: E402
from benchmarks.peers import batchmd_peer as bp  # noqa: E402

structures = wl.w4w_structures(n)
bp.run_w4_inflight([a.copy() for a in structures[:100]], 64, 1)  # compile and warm
bp.run_w4_static([a.copy() for a in structures[:100]], 64)
for label, fn in [("static", lambda s: bp.run_w4_static(s, 64)),
                  ("inflight rf1", lambda s: bp.run_w4_inflight(s, 64, 1)),
                  ("inflight rf5", lambda s: bp.run_w4_inflight(s, 64, 5))]:
    t0 = time.perf_counter()
    res = fn([a.copy() for a in structures])
    print(f"{label}: {time.perf_counter() - t0:.3f} s, occupancy {res.extra['mean_occupancy']:.3f}", flush=True)

prof = cProfile.Profile()
copies = [a.copy() for a in structures]
prof.enable()
bp.run_w4_inflight(copies, 64, 1)
prof.disable()
for key in ("tottime", "cumulative"):
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(28)
    print("\n".join(line[:150] for line in buf.getvalue().splitlines()[:45]))
