"""Campaigns on 2 gloo processes (CPU) under torchrun: same results as one process; kill -9 and resume.

Run as a script (``python tests/test_campaign_distributed.py worker TMP KILL_RANK``) it is the
fault-injection worker: rank KILL_RANK kills itself with SIGKILL in the middle of its run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_campaign_data import LJ, lj_config, make_dataset  # noqa: E402

from batchmd.campaign import read_results  # noqa: E402
from batchmd.campaign.durable import read_json, read_records  # noqa: E402
from batchmd.campaign.layout import CampaignLayout  # noqa: E402
from batchmd.dynamics.hooks import Hook, HookStage  # noqa: E402

N = 24


def torchrun(*args, timeout=240) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 ARGS`` (gloo on CPU)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=0",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def write_config(tmp_path) -> str:
    path = os.path.join(tmp_path, "campaign.json")
    with open(path, "w") as handle:
        json.dump({"manifest": "ds", "output": "run", "model": LJ, "max_atoms": 40, "commit_every": 4,
                   "refill_frequency": 5, "stages": [{"method": "fire", "fmax": 0.01, "max_steps": 400}]}, handle)
    return path


def single_process_energies(tmp_path):
    """The same campaign in one process (another output directory)."""
    from batchmd.campaign import run_campaign

    run_campaign(lj_config(tmp_path, output="single"))
    return read_results(os.path.join(tmp_path, "single"), require_complete=True).energies.reshape(-1)


def check_union(tmp_path, expected):
    batch = read_results(os.path.join(tmp_path, "run"), require_complete=True)  # raises on a duplicate
    assert batch.system_id.reshape(-1).tolist() == list(range(N))
    assert float((batch.energies.reshape(-1) - expected).abs().max()) <= 1e-9
    return batch


def test_two_ranks_match_one_process(tmp_path):
    make_dataset(tmp_path, n=N, max_rows=5)
    proc = torchrun("-m", "batchmd.cli.campaign_cmds", "run", write_config(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{N}/{N} structures done on 2 rank(s)" in proc.stdout
    layout = CampaignLayout(os.path.join(tmp_path, "run"))
    per_rank = [sum(r["rows"] for r in read_records(layout.commit_log(rank))[0]) for rank in (0, 1)]
    assert min(per_rank) > 0 and sum(per_rank) == N  # both ranks worked, each on its own shards
    summary = read_json(layout.summary)
    assert summary["world_size"] == 2 and min(r["lag_s"] for r in summary["ranks"]) == 0.0
    check_union(tmp_path, single_process_energies(tmp_path))


class _KillSelf(Hook):
    """SIGKILL this process once it has graduated ``after`` systems (some committed, some not)."""

    stage = HookStage.AFTER_STEP
    frequency = 1

    def __init__(self, after: int) -> None:
        self.after = after

    def __call__(self, batch, context) -> None:
        if context.stats.systems_graduated >= self.after:
            os.kill(os.getpid(), signal.SIGKILL)


def _worker(tmp: str, kill_rank: int) -> None:
    from batchmd.campaign import run_campaign

    hooks = [_KillSelf(after=6)] if int(os.environ["RANK"]) == kill_rank else []
    run_campaign(lj_config(tmp), hooks=hooks)


def test_kill_one_rank_then_resume_exactly_once(tmp_path):
    make_dataset(tmp_path, n=N, max_rows=5)
    crashed = torchrun(os.path.abspath(__file__), "worker", str(tmp_path), "1")
    assert crashed.returncode != 0
    layout = CampaignLayout(os.path.join(tmp_path, "run"))
    killed = read_records(layout.commit_log(1))[0]
    assert 0 < sum(r["rows"] for r in killed) < 12  # rank 1 died mid-run, after committing some shards
    partial = read_results(layout.root)
    assert partial.num_graphs < N
    resumed = torchrun("-m", "batchmd.cli.campaign_cmds", "run", write_config(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    attempts = read_records(layout.attempts)[0]
    assert [a["attempt"] for a in attempts] == [1, 2] and attempts[1]["committed_before"] == partial.num_graphs
    check_union(tmp_path, single_process_energies(tmp_path))


@pytest.mark.slow
def test_kill_every_rank_at_random_times(tmp_path):
    """Repeatedly kill -9 the whole job at a random moment, resume, and finally check exactly-once."""
    import random
    import time

    make_dataset(tmp_path, n=N, max_rows=5)
    config = write_config(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=0",
           "-m", "batchmd.cli.campaign_cmds", "run", config]
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(8.0, 20.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    final = torchrun("-m", "batchmd.cli.campaign_cmds", "run", config)
    assert final.returncode == 0, final.stderr[-3000:]
    check_union(tmp_path, single_process_energies(tmp_path))


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    _worker(sys.argv[2], int(sys.argv[3]))


@pytest.mark.parametrize("flag,phrase", [("--ignore-constraints", "batchmd shard --ignore-constraints"),
                                         ("--no-guards", "not available in campaigns")])
def test_single_process_flags_under_torchrun_are_one_line_errors(tmp_path, monkeypatch, capsys, flag, phrase):
    """Under torchrun a CLI flag the campaign path cannot honour is refused (exit 2), never silently dropped."""
    from batchmd.cli import main

    monkeypatch.setenv("WORLD_SIZE", "1")
    rc = main(["relax", str(tmp_path / "dataset"), "-o", str(tmp_path / "run"), flag])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and phrase in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
