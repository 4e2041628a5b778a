"""Every gallery script in examples/ runs to completion (headless matplotlib), in-process with runpy."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from cell_helpers import one_blas_thread

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


@pytest.fixture(autouse=True)
def headless(monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    monkeypatch.setenv("MPLBACKEND", "Agg")
    matplotlib.use("Agg", force=True)
    with one_blas_thread():  # examples that check against ASE's FrechetCellFilter: ~20x slower with BLAS threads
        yield
    import matplotlib.pyplot as plt

    plt.close("all")


def run(name: str) -> dict:
    return runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_every_example_is_covered():
    assert "inflight_batching.py" in SCRIPTS and len(SCRIPTS) >= 6


@pytest.mark.parametrize("name", [s for s in SCRIPTS if s != "inflight_batching.py"])
def test_example_runs(name, tmp_path, monkeypatch):
    if name == "plot_mlip_relaxation.py":
        pytest.importorskip("sevenn")  # the [sevennet] extra (in [test])
    monkeypatch.chdir(tmp_path)
    namespace = run(name)
    import matplotlib.pyplot as plt

    assert plt.get_fignums(), f"{name} drew no figure"
    stem = name.removeprefix("plot_").removesuffix(".py")
    assert (tmp_path / f"{stem}.png").stat().st_size > 0, "headless: the figure is saved, not shown"
    if name == "plot_relaxation.py":
        assert bool(namespace["relaxed"].converged.all())
    if name == "plot_pipeline.py":
        frames = namespace["result"].frames
        assert [a.info["input_index"] for a in frames] == list(range(40))
        # the x axis is what it plots: the input index (system_id equals it; it is not the order of entry)
        assert namespace["index"].tolist() == [a.info["system_id"] for a in frames] == list(range(40))
        assert namespace["left"].get_xlabel().startswith("input index")
        assert "eV/atom" in namespace["right"].get_xlabel()
    if name == "plot_mlip_relaxation.py":
        assert bool(namespace["relaxed"].converged.all())
    if name == "plot_custom_hook.py":
        assert len(namespace["graduation_hook"].rows) == 24


def test_seed_tutorial_collects_all_30_systems():
    namespace = run("inflight_batching.py")
    assert namespace["result"] is None  # sampler exhausted
    assert namespace["n_collected"] == 30
    assert sorted(namespace["system_ids"]) == list(range(30))
