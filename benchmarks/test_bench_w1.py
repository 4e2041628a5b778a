"""W1 (FIRE to fmax 0.01 eV/Å) per peer, on the first 16 W1 structures to keep rounds short.
The full 64-structure comparison is benchmarks/run_report.py."""

import numpy as np
import pytest

from benchmarks.bench_helpers import load, run_or_skip

W1_PEERS = [("batchmd", "run_w1"), ("ase", "run_w1"), ("torchsim", "run_w1_batch"),
            ("torchsim", "run_w1_inflight"), ("nvalchemi", "run_w1"), ("lammps", "run_w1")]


@pytest.mark.parametrize("peer,func", W1_PEERS, ids=[f"{p}-{f}" for p, f in W1_PEERS])
def test_w1(benchmark, w1_small, peer, func):
    mod = load(peer)
    benchmark.group = "W1 (16 structures)"
    result = run_or_skip(benchmark, getattr(mod, func), lambda: ([a.copy() for a in w1_small],))
    assert result.energies is not None and len(result.energies) == len(w1_small)
    assert np.all(np.isfinite(result.energies))
    if result.converged is not None:
        assert all(result.converged)
    benchmark.extra_info["variant"] = result.variant
    benchmark.extra_info["atom_evals_per_s"] = result.rate
