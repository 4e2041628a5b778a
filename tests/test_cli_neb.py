"""Issue 22: ``batchmd neb``: pairs, two files, prepared bands; rows, images, plots; errors; Ctrl-C and --resume."""

from __future__ import annotations

import csv
import json

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT

from batchmd.cli import main
from batchmd.models import load_model
from batchmd.models.registry import register_model
from batchmd.neb.systems import adatom_hop, vacancy_hop


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def pairs():
    return [adatom_hop("Al", "Au", calc=EMT), vacancy_hop("Cu", calc=EMT)]


@pytest.fixture
def pairs_file(tmp_path, pairs):
    path = tmp_path / "pairs.extxyz"
    ase.io.write(path, [a for pair in pairs for a in pair])
    return path


def test_pairs_file_rows_images_plots_and_prepared_bands(pairs_file, tmp_path, capsys):
    out = tmp_path / "neb.csv"
    rc = main(["neb", str(pairs_file), "-o", str(out), "--model", "emt", "--n-images", "5", "--climb",
               "--fmax", "0.05"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "2 of 2 bands converged" in text
    rows = read_csv(out)
    assert [r["status"] for r in rows] == ["converged", "converged"]
    assert 0.3 < float(rows[0]["barrier_forward_eV"]) < 0.45 and 0.5 < float(rows[1]["barrier_forward_eV"]) < 1.0
    assert rows[0]["ts_image"] == "2" and len(rows[0]["energies_eV"].split()) == 5
    frames = ase.io.read(tmp_path / "neb_images.extxyz", ":")
    assert len(frames) == 10 and [f.info["neb_image"] for f in frames[:5]] == list(range(5))
    assert sorted(p.name for p in (tmp_path / "neb_plots").iterdir()) == ["band_0000.png", "band_0001.png"]
    # the images file is a file of prepared bands: fed back, already converged, 0 steps
    again = tmp_path / "again.json"
    assert main(["neb", str(tmp_path / "neb_images.extxyz"), "-o", str(again), "--model", "emt", "--climb",
                 "--no-plot", "-q"]) == 0
    rows2 = json.loads(again.read_text())
    assert [r["band"] for r in rows2] == ["0", "1"]
    assert abs(rows2[1]["barrier_forward_eV"] - float(rows[1]["barrier_forward_eV"])) < 1e-6


def test_two_files_and_python_api_agree(pairs, tmp_path):
    from batchmd.neb import run_bands

    ini, fin = tmp_path / "ini.extxyz", tmp_path / "fin.extxyz"
    ase.io.write(ini, [p[0] for p in pairs[:1]])
    ase.io.write(fin, [p[1] for p in pairs[:1]])
    out = tmp_path / "two.csv"
    assert main(["neb", str(ini), str(fin), "-o", str(out), "--model", "emt", "--n-images", "5", "--optimizer",
                 "lbfgs", "--method", "eb", "-q", "--no-plot"]) == 0
    row = read_csv(out)[0]
    ref = run_bands([pairs[0]], load_model("emt"), n_images=5, optimizer="lbfgs", method="eb")[0]
    assert int(row["n_steps"]) == ref.n_steps
    assert abs(float(row["barrier_forward_eV"]) - ref.barrier_forward) < 1e-9


def test_string_method_from_the_cli_equals_the_python_api(pairs, tmp_path):
    from batchmd.neb import run_bands

    ini, fin = tmp_path / "ini.extxyz", tmp_path / "fin.extxyz"
    ase.io.write(ini, pairs[0][0])
    ase.io.write(fin, pairs[0][1])
    out = tmp_path / "string.json"
    assert main(["neb", str(ini), str(fin), "-o", str(out), "--model", "emt", "--n-images", "5", "--method",
                 "string", "-q", "--no-plot"]) == 0
    row = json.loads(out.read_text())[0]
    ref = run_bands([pairs[0]], load_model("emt"), n_images=5, method="string")[0]
    assert row["status"] == "converged" and row["n_steps"] == ref.n_steps == 75
    assert abs(row["barrier_forward_eV"] - ref.barrier_forward) < 1e-9


def test_errors_are_one_line_and_rc_2(pairs, tmp_path, capsys):
    ini, fin = pairs[0]
    bad = tmp_path / "bad.extxyz"
    ase.io.write(bad, [ini, fin, ini, fin[:-1]])
    assert main(["neb", str(bad), "-o", str(tmp_path / "x.csv"), "--model", "emt"]) == 2
    err = capsys.readouterr().err
    assert "band 1: the endpoints have different atom counts (13 and 12)" in err and err.count("\n") == 1
    assert not (tmp_path / "x.csv").exists()
    odd = tmp_path / "odd.extxyz"
    ase.io.write(odd, [ini, fin, ini])
    assert main(["neb", str(odd), "-o", str(tmp_path / "x.csv"), "--model", "emt"]) == 2
    assert "an even count" in capsys.readouterr().err
    assert main(["neb", str(bad), "-o", str(tmp_path / "x.csv"), "--model", "emt", "--n-images", "2"]) == 2
    assert "--n-images must be >= 3" in capsys.readouterr().err
    assert main(["neb", str(bad), "-o", str(tmp_path / "x.xyz"), "--model", "emt"]) == 2
    assert ".csv or .json" in capsys.readouterr().err


def test_band_out_of_steps_rc_3_and_written(pairs_file, tmp_path, capsys):
    out = tmp_path / "short.csv"
    assert main(["neb", str(pairs_file), "-o", str(out), "--model", "emt", "--n-images", "5", "--max-steps", "4",
                 "--no-plot"]) == 3
    rows = read_csv(out)
    assert [r["status"] for r in rows] == ["out_of_steps", "out_of_steps"] and rows[0]["ok"] == "False"
    assert "did not converge in 4 steps" in rows[0]["error"]
    assert "band 0 out_of_steps" in capsys.readouterr().err


_CALLS = {"left": None}


def _interrupting_emt(argument, *, device=None, dtype=None):
    model = load_model("emt")
    forward = model.forward

    def counted(batch):
        if _CALLS["left"] is not None:
            _CALLS["left"] -= 1
            if _CALLS["left"] < 0:
                raise KeyboardInterrupt
        return forward(batch)

    model.forward = counted
    return model


def test_ctrl_c_keeps_finished_bands_and_resume_completes(pairs, tmp_path, capsys):
    register_model("emt-neb-interrupt-test", _interrupting_emt, "test only", overwrite=True)
    path = tmp_path / "pairs.extxyz"
    ini, fin = pairs[0]
    ase.io.write(path, [ini, fin] * 3)
    args = ["neb", str(path), "--model", "emt-neb-interrupt-test", "--n-images", "4", "--fmax", "0.1",
            "--max-atoms", "26", "-q", "--no-plot"]  # one band (2 moving images x 13 atoms) at a time
    full = tmp_path / "full.csv"
    _CALLS["left"] = None
    assert main([*args, "-o", str(full)]) == 0
    out = tmp_path / "int.csv"
    steps = int(read_csv(full)[0]["n_steps"])
    _CALLS["left"] = 1 + 2 * (steps + 2)  # endpoints, then about two bands
    assert main([*args, "-o", str(out)]) == 130
    err = capsys.readouterr().err
    kept = [r["index"] for r in read_csv(out)]
    assert 1 <= len(kept) < 3
    assert f"{len(kept)} of 3 bands' results are in {out}" in err and "--resume" in err
    _CALLS["left"] = None
    assert main([*args, "-o", str(out)]) == 2
    assert "add --resume to continue it" in capsys.readouterr().err
    assert main([*args, "-o", str(out), "--resume"]) == 0
    assert out.read_text() == full.read_text()
    assert len(ase.io.read(tmp_path / "int_images.extxyz", ":")) == 12
    _CALLS["left"] = 0  # complete: nothing recomputed
    assert main([*args, "-o", str(out), "--resume"]) == 0
    _CALLS["left"] = None


def test_neb_help_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys\nfrom batchmd.cli import main\ntry:\n    main(['neb', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'warp', 'ase.io', 'scipy', 'numpy') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
    assert "--n-images" in done.stdout and "(default: 7)" in done.stdout
