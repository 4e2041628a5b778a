"""W5 (benchmarks/w5.py): gpu_session.sh's command lines parse, the summed model carries the stress and
in-place refills, a tiny campaign runs with fixed and variable cells with identical energies in both modes,
and (when a TorchSim venv is named) batchmd's and TorchSim's models agree and TorchSim's row is filled."""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest
import torch

from benchmarks import w5
from benchmarks import workloads as wl


def test_gpu_session_w5_commands_parse():
    text = (w5.HERE / "gpu_session.sh").read_text()
    block = text[text.index("stage_w5()"):text.index("stage_refill()")].replace("\\\n", " ")
    commands = re.findall(r"-m benchmarks\.w5 (.*?) 2>&1", block)
    assert len(commands) == 2
    cells = set()
    for command in commands:
        command = re.sub(r'"\$\{\w+:-([^}]*)\}"', r"\1", command).replace("$REPORT", "/tmp")
        args = w5.parser().parse_args(shlex.split(command))
        cells.add((args.model, args.cell))
    assert cells == {("demo", "fixed"), ("mace-random+lj", "frechet")}


def test_sum_model_adds_stress_and_passes_refills_on():
    from batchmd.data import Batch
    from batchmd.models.lj import LennardJones

    sigma, epsilon, cutoff = w5.W5_LJ
    parts = [LennardJones(sigma=sigma, epsilon=epsilon, cutoff=cutoff, shift=False) for _ in range(2)]
    total = w5.SumModel(*parts)
    double = LennardJones(sigma=sigma, epsilon=2 * epsilon, cutoff=cutoff, shift=False)
    batch = Batch.from_ase(wl.w5_structures(3), dtype=torch.float64)
    out, ref = total(batch), double(Batch.from_ase(wl.w5_structures(3), dtype=torch.float64))
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(out[key], ref[key], atol=1e-12), key
    total.computes_stress = False
    assert not total.computes_stress and "stress" not in total(batch)
    assert all(not p.computes_stress for p in parts)

    class Recorder(torch.nn.Module):
        computes_stress = True

        def __init__(self):
            super().__init__()
            self.replaced = []

        def systems_replaced(self, batch, systems):
            self.replaced.append(systems.tolist())

    rec = Recorder()
    w5.SumModel(rec, parts[0]).systems_replaced(batch, torch.tensor([1]))
    assert rec.replaced == [[1]]


@pytest.mark.parametrize("cell", ["fixed", "frechet"])
def test_tiny_campaign(tmp_path, cell):
    pytest.importorskip("mace")
    out = tmp_path / "w5.md"
    w5.main(["--model", "mace-random+lj", "--n", "4", "--batch-sizes", "2,4", "--chunks", "0,64", "--rounds", "1",
             "--cell", cell, "--dtype", "float64", "--torchsim", "", "--out", str(out)])
    text = out.read_text()
    assert f"cell {cell}" in text and "Time to solution" in text
    data = json.loads(out.with_suffix(".json").read_text())
    static, inflight = data["rows"]["static"][0], data["rows"]["inflight"][0]
    # float64: MACE's GEMMs differ with the batch's shape only at ~1e-17 (float32: ~1e-6 eV per evaluation)
    assert max(abs(a - b) for a, b in zip(static["energies"], inflight["energies"])) < 1e-8
    assert static["steps"] == inflight["steps"]
    assert len(static["energies"]) == 4 and data["args"]["cell"] == cell
    assert 0 < static["evaluated_occupancy"] <= inflight["evaluated_occupancy"] <= 1.0
    assert inflight["atom_evals"] <= static["atom_evals"]
    assert 0.0 <= inflight["drain_wall_fraction"] <= 1.0
    assert len(data["sweep"]) == 3  # chunks of 64 atoms never split a batch of 2 (<= 64 atoms): skipped
    again = tmp_path / "again.md"
    w5.main(["--from-json", str(out.with_suffix(".json")), "--out", str(again)])
    assert again.read_text() == text  # the same report, date and load average included


@pytest.mark.skipif(not os.path.isfile(os.environ.get("BENCH_TORCHSIM_PYTHON", "")),
                    reason="BENCH_TORCHSIM_PYTHON names no TorchSim 0.6 venv")
def test_torchsim_row_and_model_check(tmp_path):
    pytest.importorskip("mace")
    out = tmp_path / "w5.md"
    w5.main(["--model", "mace-random+lj", "--n", "3", "--batch-sizes", "3", "--chunks", "0", "--rounds", "1",
             "--cell", "frechet", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    check = data["check"]
    assert check["energy"] < 1e-9 and check["forces"] < 1e-9 and check["stress"] < 1e-10 < check["stress_max"]
    row = data["rows"]["torchsim"][0]
    assert len(row["energies"]) == len(row["steps"]) == 3 and row["atom_evals"] > 0 and row["cpu"] > 0
    assert "FrechetCellFilter" in row["mode"]


def test_ase_baseline_takes_the_same_fire_steps(tmp_path):
    """w5_ase.py: ASE's FIRE(FrechetCellFilter) with MACE's own calculator + ASE's LJ (shift
    removed) relaxes the first W5 structures in the same steps, to the same energies, as batchmd."""
    pytest.importorskip("mace")
    from benchmarks import w5_ase

    out = tmp_path / "w5_ase.md"
    assert w5_ase.main(["--n", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert "ASE / batchmd" in text and "Same FIRE step count for 2 of 2 structures" in text
    worst = float(re.search(r"max ([0-9.e+-]+) eV \(float32", text).group(1))
    assert worst < 1e-3
