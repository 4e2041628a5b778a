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
    w4w = wl.w4w_structures(50)
    assert [len(a) for a in w4w] == [len(a) for a in w4]
    assert np.abs(w4w[0].positions - w4[0].positions).max() > 0  # larger rattles, same cells


def test_merge_replaces_only_what_was_rerun(tmp_path):
    import json

    from benchmarks.run_report import merge_into_existing

    old = {"quick": False, "results": {"W1": {"a": 1}, "W4": {"b": 2}}, "skipped": {}, "errors": {},
           "cold": [{"peer": "batchmd", "workload": "W1", "x": 1}, {"peer": "ase", "workload": "W1", "x": 2}],
           "raw": {"W1": [1], "W4": [2]}}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(old))
    new = {"quick": False, "results": {"W4": {"b": 3}}, "skipped": {}, "errors": {}, "started": "t", "argv": [],
           "rounds": 3, "cold": [{"peer": "batchmd", "workload": "W1", "x": 9}]}
    merged, raw = merge_into_existing(path, new, {"W4": [5]}, ["W4"])
    assert merged["results"] == {"W1": {"a": 1}, "W4": {"b": 3}} and raw == {"W1": [1], "W4": [5]}
    assert sorted((c["peer"], c["x"]) for c in merged["cold"]) == [("ase", 2), ("batchmd", 9)]
    assert merged["merged"][0]["workloads"] == ["W4"] and merged["merged"][0]["cold"]
