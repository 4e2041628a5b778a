"""Campaign runs in one process: results, contract refusal, crash repair, exactly-once resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import ase.io
import numpy as np
import pytest
import torch

from batchmd.campaign import ContractMismatch, CorruptFileError, read_results, run_campaign, write_dataset
from batchmd.campaign.distributed import RankContext
from batchmd.campaign.durable import read_json, read_records
from batchmd.campaign.layout import CampaignLayout
from batchmd.data import Batch
from batchmd.dynamics import FIRE, ConvergenceHook

sys.path.insert(0, os.path.dirname(__file__))
from test_campaign_data import argon_frames, lj_config, make_dataset  # noqa: E402


def reference_energies(tmp_path) -> np.ndarray:
    """Final energies (eV) of relaxing the input frames directly, one batch, no campaign."""
    from batchmd.models.lj import LennardJones

    frames = ase.io.read(os.path.join(tmp_path, "in.extxyz"), ":")
    model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5)
    fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=400)
    out = fire.run(Batch.from_ase(frames, dtype=torch.float64))
    return out.energies.reshape(-1).numpy()


def assert_exactly_once(outdir, expected_energies):
    batch = read_results(outdir, require_complete=True)
    ids = batch.system_id.reshape(-1).tolist()
    assert ids == list(range(len(expected_energies)))
    np.testing.assert_allclose(batch.energies.reshape(-1).numpy(), expected_energies, rtol=0, atol=1e-9)
    return batch


@pytest.fixture
def dataset(tmp_path):
    make_dataset(tmp_path, n=20, max_rows=4)
    return tmp_path


def test_results_match_a_direct_relaxation(dataset):
    report = run_campaign(lj_config(dataset))
    assert (report.owned, report.committed, report.skipped, report.attempt) == (20, 20, 0, 1)
    batch = assert_exactly_once(dataset / "run", reference_energies(dataset))
    assert torch.equal(batch["input_index"].reshape(-1), batch.system_id.reshape(-1))
    assert bool(batch["converged"].all())
    frames = read_results(dataset / "run", as_atoms=True)
    assert [a.info["tag"] for a in frames[:2]] == ["cluster-0", "cluster-1"]  # the input's own info
    assert frames[3].info["source_index"] == 3 and frames[3].get_potential_energy() == batch.energies[3].item()
    # a second run has nothing left to do and writes nothing new
    again = run_campaign(lj_config(dataset))
    assert (again.attempt, again.skipped, again.committed) == (2, 20, 0)
    assert_exactly_once(dataset / "run", reference_energies(dataset))


def test_metrics_checkpoint_and_summary(dataset):
    run_campaign(lj_config(dataset, metrics_interval_s=0.0, checkpoint_interval_s=0.0))
    layout = CampaignLayout(dataset / "run")
    lines = [json.loads(x) for x in open(layout.metrics(0))]
    assert len(lines) >= 2 and lines[-1]["final"] and lines[-1]["systems_done"] == 20
    for key in ("atom_steps_per_second", "occupancy", "systems_done", "invalid_structures", "lag_progress"):
        assert key in lines[0]
    assert 0 < lines[-1]["occupancy"] <= 1 and lines[-1]["atom_steps_per_second"] > 0
    checkpoint = read_json(layout.checkpoint(0))
    assert checkpoint["cursor"]["final"] and checkpoint["cursor"]["committed"] == 20
    assert checkpoint["contract"] == read_json(layout.contract)
    summary = read_json(layout.summary)
    assert summary["systems_done"] == 20 and summary["ranks"][0]["lag_s"] == 0.0


def test_resume_refuses_a_changed_config_or_manifest(dataset):
    run_campaign(lj_config(dataset, commit_every=100))
    with pytest.raises(ContractMismatch, match="physics"):
        run_campaign(lj_config(dataset, stages=[{"method": "fire", "fmax": 0.02, "max_steps": 400}]))
    with pytest.raises(ContractMismatch, match="model"):
        run_campaign(lj_config(dataset, model={"name": "lj", "sigma": 3.4, "epsilon": 0.0104, "cutoff": 8.5}))
    ase.io.write(dataset / "other.extxyz", argon_frames(20, seed=9))
    write_dataset([dataset / "other.extxyz"], dataset / "ds_other", max_rows=4)
    with pytest.raises(ContractMismatch, match="manifest_version"):
        run_campaign(lj_config(dataset, manifest=str(dataset / "ds_other")))
    # operational settings may change
    assert run_campaign(lj_config(dataset, commit_every=3, max_atoms=60)).skipped == 20


def test_damaged_result_or_checkpoint_is_refused(dataset):
    run_campaign(lj_config(dataset))
    layout = CampaignLayout(dataset / "run")
    first = read_records(layout.commit_log(0))[0][0]["file"]
    path = layout.result_path(first)
    raw = bytearray(open(path, "rb").read())
    raw[-20] ^= 0x01
    open(path, "wb").write(bytes(raw))
    with pytest.raises(CorruptFileError, match="checksum"):
        read_results(dataset / "run")
    with pytest.raises(CorruptFileError):
        run_campaign(lj_config(dataset))
    raw[-20] ^= 0x01
    open(path, "wb").write(bytes(raw))
    text = open(layout.checkpoint(0)).read()
    open(layout.checkpoint(0), "w").write(text.replace('"final": true', '"final": false'))
    with pytest.raises(CorruptFileError, match="checksum"):
        run_campaign(lj_config(dataset))


def test_torn_commit_line_is_discarded_and_rerun_once(dataset):
    run_campaign(lj_config(dataset))
    layout = CampaignLayout(dataset / "run")
    log = layout.commit_log(0)
    raw = open(log, "rb").read()
    open(log, "wb").write(raw[: len(raw) - 30])  # the last commit record is torn: never committed
    records, torn = read_records(log)
    assert torn
    lost = 20 - sum(r["rows"] for r in records)
    with pytest.raises(Exception):
        read_results(dataset / "run", require_complete=True)
    report = run_campaign(lj_config(dataset))
    assert report.committed == lost > 0
    attempt = read_records(layout.attempts)[0][-1]
    assert attempt["torn_commit_lines"] == 1 and len(attempt["orphans_removed"]) == 1
    assert_exactly_once(dataset / "run", reference_energies(dataset))


_CRASH = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import batchmd.campaign.commits as commits
    from batchmd.campaign import run_campaign
    from test_campaign_data import lj_config
    calls = []
    real = commits.append_record
    def append_then_die(path, record):
        calls.append(record)
        if len(calls) == 3:   # the third shard is renamed into place but never recorded
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, record)
    commits.append_record = append_then_die
    run_campaign(lj_config({tmp!r}))
""")


def test_kill_between_rename_and_commit_record(dataset):
    script = _CRASH.format(tests=os.path.dirname(__file__), tmp=str(dataset))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    layout = CampaignLayout(dataset / "run")
    records, _ = read_records(layout.commit_log(0))
    assert len(records) == 2 and len(os.listdir(layout.results_dir)) == 3  # one renamed, uncommitted shard
    done = sum(r["rows"] for r in records)
    assert read_results(dataset / "run").num_graphs == done  # the uncommitted shard is not a result
    report = run_campaign(lj_config(dataset))
    assert report.skipped == done and report.committed == 20 - done
    assert len(read_records(layout.attempts)[0][-1]["orphans_removed"]) == 1
    assert_exactly_once(dataset / "run", reference_energies(dataset))


def test_resume_with_a_different_world_size(dataset):
    # attempt 1: two ranks planned, only rank 0 ran (rank 1 lost); attempt 2: three ranks
    first = run_campaign(lj_config(dataset), context=RankContext(rank=0, world_size=2))
    assert 0 < first.committed < 20
    reports = [run_campaign(lj_config(dataset), context=RankContext(rank=r, world_size=3)) for r in range(3)]
    assert sum(r.committed for r in reports) == 20 - first.committed
    assert sum(r.skipped for r in reports) == first.committed
    assert_exactly_once(dataset / "run", reference_energies(dataset))
