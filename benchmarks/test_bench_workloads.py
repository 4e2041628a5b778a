"""The workload builders are deterministic and have the sizes the issue states."""

import numpy as np

from benchmarks import workloads as wl


def test_sizes_and_determinism():
    w1 = wl.w1_structures()
    assert len(w1) == 64 and wl.n_atoms(w1) == 7056
    assert wl.n_atoms(wl.w2_structures()) == 1560
    assert np.array_equal(w1[5].positions, wl.w1_structures()[5].positions)
    assert np.array_equal(w1[3].positions, wl.w1_structures(4)[3].positions)
    w4 = wl.w4_structures(50)
    assert len(w4) == 50 and all(32 <= len(a) <= 108 for a in w4)
