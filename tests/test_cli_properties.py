"""Issue 21: ``batchmd eos`` (and the generic property runner): rows, plots, errors, Ctrl-C, --resume."""

from __future__ import annotations

import csv
import json
import math

import ase.io
import pytest
from ase.build import bulk, molecule

from batchmd.cli import main
from batchmd.models import load_model
from batchmd.models.registry import register_model
from batchmd.properties import compute_eos


def metals():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.rattle(0.02, seed=1)
    return [cu, bulk("Al", "fcc", a=4.05), bulk("Ni", "fcc", a=3.75, cubic=True)]  # Ni: minimum not sampled


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def metals_file(tmp_path):
    path = tmp_path / "metals.extxyz"
    ase.io.write(path, metals())
    return path


def test_eos_csv_rows_plots_and_python_api_agree(metals_file, tmp_path, capsys):
    out = tmp_path / "eos.csv"
    rc = main(["eos", str(metals_file), "-o", str(out), "--model", "emt", "--n-points", "7", "-q"])
    assert rc == 3  # Ni failed (named on stderr), the others are written
    err = capsys.readouterr().err
    assert "structure 2 (Ni4) failed: the birchmurnaghan fit's minimum V0" in err
    rows = read_csv(out)
    assert [r["index"] for r in rows] == ["0", "1", "2"] and [r["ok"] for r in rows] == ["True", "True", "False"]
    for column in ("formula", "n_atoms", "V0_A3", "E0_eV", "B0_GPa", "B0_prime", "error", "model",
                   "run_fingerprint"):
        assert column in rows[0]
    assert rows[2]["B0_GPa"] == "" and "outside the sampled volumes" in rows[2]["error"]
    reference = compute_eos(ase.io.read(metals_file, ":"), load_model("emt"), n_points=7)
    for row, result in zip(rows, reference):
        if result.ok:
            assert math.isclose(float(row["V0_A3"]), result.V0_A3, rel_tol=1e-12)
            assert math.isclose(float(row["B0_GPa"]), result.B0_GPa, rel_tol=1e-12)
    assert sorted(p.name for p in (tmp_path / "eos_plots").iterdir()) == ["0000_Cu4.png", "0001_Al.png",
                                                                          "0002_Ni4.png"]


def test_eos_json_plot_dir_and_no_plot(metals_file, tmp_path):
    out = tmp_path / "eos.json"
    assert main(["eos", str(metals_file), "-o", str(out), "--model", "emt", "--relax", "none", "--eos", "vinet",
                 "--plot", str(tmp_path / "figs"), "-q"]) == 3
    rows = json.loads(out.read_text())
    assert rows[0]["ok"] is True and rows[0]["eos"] == "vinet" and rows[2]["B0_GPa"] is None
    assert len(list((tmp_path / "figs").iterdir())) == 3
    other = tmp_path / "other.csv"
    assert main(["eos", str(metals_file), "-o", str(other), "--model", "emt", "--relax", "none", "--no-plot",
                 "-q"]) == 3
    assert not (tmp_path / "other_plots").exists()


@pytest.mark.parametrize("args, message", [
    (["-o", "{tmp}/eos.extxyz"], "the results table is written as .csv or .json"),
    (["-o", "{tmp}/nodir/eos.csv"], "does not exist"),
    (["-o", "{tmp}/eos.csv", "--n-points", "3"], "n_points must be an integer >= 5"),
    (["-o", "{tmp}/eos.csv", "--fmax", "0"], "--fmax must be a finite number > 0"),
    (["-o", "{tmp}/eos.csv", "--model", "lj"], "model lj has no parameters for"),
])
def test_eos_user_errors_are_one_line(metals_file, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path) for a in args] + ([] if "--model" in args else ["--model", "emt"])
    rc = main(["eos", str(metals_file), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "eos.csv").exists()


def test_structure_without_cell_refused(tmp_path, capsys):
    path = tmp_path / "mol.extxyz"
    ase.io.write(path, [bulk("Cu"), molecule("H2O")])
    assert main(["eos", str(path), "-o", str(tmp_path / "eos.csv"), "--model", "emt"]) == 2
    err = capsys.readouterr().err
    assert "structure 1 (H2O) has no 3-D periodic cell" in err and err.count("\n") == 1


def test_missing_property_module_is_a_clean_error(tmp_path, capsys):
    import importlib.util

    path = tmp_path / "cu.extxyz"
    ase.io.write(path, bulk("Cu"))
    for name in ("elastic", "phonons"):
        if importlib.util.find_spec(f"batchmd.properties.{name}") is not None:
            continue  # the module has landed: its own tests cover the command
        assert main([name, str(path), "-o", str(tmp_path / "x.csv"), "--model", "emt"]) == 2
        err = capsys.readouterr().err
        assert f"batchmd.properties.{name} is not part of this installation" in err and err.count("\n") == 1


_CALLS = {"left": None}


def _interrupting_emt(argument, *, device=None, dtype=None):
    """EMT that raises KeyboardInterrupt at its n-th evaluation while ``_CALLS["left"]`` counts down."""
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


def test_ctrl_c_keeps_finished_rows_and_resume_completes(tmp_path, capsys):
    register_model("emt-interrupt-test", _interrupting_emt, "test only", overwrite=True)
    path = tmp_path / "in.extxyz"
    ase.io.write(path, [bulk(s, "fcc", a=a) for s, a in (("Cu", 3.61), ("Al", 4.05), ("Ni", 3.52), ("Au", 4.07))])
    args = ["eos", str(path), "--model", "emt-interrupt-test", "--relax", "none", "--n-points", "5",
            "--max-atoms", "5", "-q", "--no-plot"]
    full = tmp_path / "full.csv"
    _CALLS["left"] = None
    assert main([*args, "-o", str(full)]) == 0
    out = tmp_path / "int.csv"
    _CALLS["left"] = 3  # one structure (5 one-atom points) per batch: some structures finish, then Ctrl-C
    assert main([*args, "-o", str(out)]) == 130
    err = capsys.readouterr().err
    kept = [r["index"] for r in read_csv(out)]
    assert 1 <= len(kept) < 4 and kept == [str(i) for i in range(len(kept))]
    assert f"{len(kept)} of 4 structures' results are in {out}" in err and "--resume" in err
    _CALLS["left"] = None
    assert main([*args, "-o", str(out)]) == 2  # an interrupted run's table is never overwritten silently
    assert "add --resume to continue it" in capsys.readouterr().err
    assert main([*args[:-4], "--n-points", "7", "-q", "--no-plot", "-o", str(out), "--resume"]) == 2
    assert "is from another run" in capsys.readouterr().err
    assert main([*args, "-o", str(out), "--resume"]) == 0
    assert out.read_text() == full.read_text()
    _CALLS["left"] = 0  # complete: nothing recomputed (any model call would interrupt)
    assert main([*args, "-o", str(out), "--resume"]) == 0
    _CALLS["left"] = None


def test_eos_help_imports_nothing_heavy_and_shows_defaults():
    import subprocess
    import sys

    code = ("import sys\nfrom batchmd.cli import main\ntry:\n    main(['eos', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'warp', 'ase.io', 'scipy', 'numpy') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
    text = " ".join(done.stdout.split())
    assert "(default: 9)" in text and "(default: birchmurnaghan)" in text and "``" not in text
