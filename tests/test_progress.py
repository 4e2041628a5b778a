"""ProgressHook: quiet off a terminal, host-side only, live line and one-line summary."""

from __future__ import annotations

import io
import types

import pytest
import torch

from batchmd.data import AtomicData
from batchmd.dynamics import FIRE, ConvergenceHook, FusedStage, RunStats, SizeAwareSampler
from batchmd.dynamics.hooks import HookContext, HookStage
from batchmd.models.demo import DemoModelWrapper
from batchmd.progress import ProgressHook, format_duration, format_summary


class TTY(io.StringIO):
    def isatty(self):
        return True


class Clusters:
    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def get_metadata(self, i):
        return self.sizes[i], 0

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        n = self.sizes[i]
        return AtomicData(positions=1.2 * torch.randn(n, 3, generator=g, dtype=torch.float64),
                          atomic_numbers=torch.full((n,), 6)), {}


def _run(hook, sizes=(3, 4, 5, 3, 4, 5)):
    torch.manual_seed(0)
    model = DemoModelWrapper().double()
    fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=200)
    fused = FusedStage([(0, fire)], sampler=SizeAwareSampler(Clusters(list(sizes)), max_atoms=10),
                       hooks=[hook], refill_frequency=5)
    assert fused.run(batch=None) is None
    hook.close()
    return fused.stats


def test_quiet_when_not_a_terminal():
    stream = io.StringIO()
    hook = ProgressHook(frequency=1, stream=stream)
    assert hook.enabled is False and hook.stage == HookStage.AFTER_STEP
    stats = _run(hook)
    assert stream.getvalue() == ""
    assert hook.stats is stats  # it still follows the run's counters


def test_draws_on_a_terminal_and_ends_the_line():
    stream = TTY()
    hook = ProgressHook(frequency=2, stream=stream, min_interval=0.0)
    stats = _run(hook)
    text = stream.getvalue()
    assert text.startswith("\r[") and text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    assert "/6 systems]" in last and "atom-steps/s" in last and "occupancy" in last and "elapsed" in last
    assert stats.systems_graduated == 6


def test_line_reads_host_counters_only():
    # A batch stand-in without tensors: the line needs no device data, hence no sync.
    batch = types.SimpleNamespace(num_nodes=30)
    stats = RunStats(steps=40, atom_steps=1200, systems_total=10, systems_graduated=5, max_atoms=40)
    line = ProgressHook(enabled=True).line(batch, stats)
    assert "[5/10 systems]" in line and "occupancy 75%" in line and "remaining ~" in line


def test_frequency_and_rate_limit():
    stream = TTY()
    hook = ProgressHook(frequency=3, stream=stream, min_interval=3600.0)
    batch = types.SimpleNamespace(num_nodes=4)
    for step in range(5):
        hook(batch, HookContext(step, None, RunStats(max_atoms=8)))
    assert stream.getvalue().count("\r") == 1  # rate-limited to one redraw
    assert hook.frequency == 3
    with pytest.raises(ValueError, match="frequency"):
        ProgressHook(frequency=0)


def test_summary_and_durations():
    stats = RunStats(systems_total=7, systems_graduated=7, systems_converged=5, systems_out_of_steps=1,
                     systems_failed=1, atom_steps=3000)
    line = format_summary(stats, elapsed=3725.0)
    assert line.startswith("7 systems: 5 converged, 1 out of steps, 1 failed in 1:02:05")
    assert "\n" not in line
    assert format_duration(59.6) == "0:01:00" and format_duration(float("nan")) == "?"
