"""W2 (NVT Langevin, 1,560 atoms, 80 K, 2 fs) per peer, 50 steps per round."""

import pytest

from benchmarks.bench_helpers import load, run_or_skip

STEPS = 50


@pytest.mark.parametrize("peer", ["batchmd", "ase", "torchsim", "nvalchemi", "lammps"])
def test_w2(benchmark, w2, peer):
    mod = load(peer)
    benchmark.group = f"W2 ({STEPS} steps)"
    result = run_or_skip(benchmark, lambda s: mod.run_w2(s, n_steps=STEPS),
                         lambda: ([a.copy() for a in w2],))
    benchmark.extra_info["atom_steps_per_s"] = result.rate
    assert result.rate > 0
