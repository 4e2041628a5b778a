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


# ----------------------------------------------------------------------------- elastic
def elastic_inputs(tmp_path):
    cu = bulk("Cu", "fcc", a=3.59, cubic=True)
    cu.rattle(0.05, seed=3)  # needs ion relaxation: fails with --max-steps 2
    path = tmp_path / "elastic_in.extxyz"
    ase.io.write(path, [bulk("Al", "fcc", a=4.02), cu])
    return path


def test_elastic_rows_plots_and_python_api_agree(tmp_path, capsys):
    from batchmd.properties import compute_elastic

    path = elastic_inputs(tmp_path)
    out = tmp_path / "elastic.csv"
    assert main(["elastic", str(path), "-o", str(out), "--model", "emt", "--strains", "0.01", "-q"]) == 0
    rows = read_csv(out)
    assert [r["ok"] for r in rows] == ["True", "True"] and rows[1]["formula"] == "Cu4"
    for column in ("C11_GPa", "C12_GPa", "C44_GPa", "C66_GPa", "K_VRH_GPa", "G_VRH_GPa", "stable", "relax_ions",
                   "n_variants", "model", "run_fingerprint"):
        assert column in rows[0], column
    assert rows[0]["n_variants"] == "13" and rows[0]["relax_ions"] == "True"
    reference = compute_elastic(ase.io.read(path, ":"), load_model("emt"), strains=(-0.01, 0.01))
    for row, result in zip(rows, reference):
        assert math.isclose(float(row["C11_GPa"]), result.C_sym[0, 0], rel_tol=1e-12)
        assert math.isclose(float(row["K_VRH_GPa"]), result.K_VRH, rel_tol=1e-12)
    assert sorted(p.name for p in (tmp_path / "elastic_plots").iterdir()) == ["0000_Al.png", "0001_Cu4.png"]
    # clamped ions, signed strains as given, JSON, no plots; a structure that does not converge: rc 3, named
    out = tmp_path / "clamped.json"
    assert main(["elastic", str(path), "-o", str(out), "--model", "emt", "--strains=-0.01,0.005", "--clamped-ions",
                 "--no-plot", "-q"]) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["relax_ions"] is False and rows[0]["n_variants"] == 13
    assert not (tmp_path / "clamped_plots").exists()
    out = tmp_path / "slow.csv"
    assert main(["elastic", str(path), "-o", str(out), "--model", "emt", "--strains", "0.01", "--max-steps", "2",
                 "--no-plot", "-q"]) == 3
    err = capsys.readouterr().err
    assert "structure 1 (Cu4) failed: " in err and "not converged in 2 steps" in err
    rows = read_csv(out)
    assert rows[0]["ok"] == "True" and rows[1]["ok"] == "False" and rows[1]["C11_GPa"] == ""


@pytest.mark.parametrize("args, message", [
    (["--strains", "a,b"], "--strains must be comma-separated numbers"),
    (["--strains", "0.3"], "at most 0.1 in magnitude"),
    (["--fmax", "0"], "--fmax must be a finite number > 0"),
])
def test_elastic_user_errors_are_one_line(tmp_path, capsys, args, message):
    path = elastic_inputs(tmp_path)
    rc = main(["elastic", str(path), "-o", str(tmp_path / "e.csv"), "--model", "emt", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "e.csv").exists()


def test_elastic_ctrl_c_and_resume(tmp_path, capsys):
    register_model("emt-interrupt-test", _interrupting_emt, "test only", overwrite=True)
    path = tmp_path / "in.extxyz"
    ase.io.write(path, [bulk(s, "fcc", a=a) for s, a in (("Cu", 3.61), ("Al", 4.05), ("Ni", 3.52), ("Au", 4.07))])
    args = ["elastic", str(path), "--model", "emt-interrupt-test", "--clamped-ions", "--strains", "0.01",
            "--max-atoms", "13", "-q", "--no-plot"]
    full = tmp_path / "full.csv"
    _CALLS["left"] = None
    assert main([*args, "-o", str(full)]) == 0
    out = tmp_path / "int.csv"
    _CALLS["left"] = 2  # 13 one-atom variants per structure: a structure or two finish, then Ctrl-C
    assert main([*args, "-o", str(out)]) == 130
    err = capsys.readouterr().err
    kept = [r["index"] for r in read_csv(out)]
    assert 1 <= len(kept) < 4 and f"{len(kept)} of 4 structures' results are in {out}" in err
    _CALLS["left"] = None
    assert main([*args, "-o", str(out), "--resume"]) == 0
    assert out.read_text() == full.read_text()


# ----------------------------------------------------------------------------- phonons
def phonon_inputs(tmp_path):
    pytest.importorskip("phonopy")
    path = tmp_path / "fcc.extxyz"
    ase.io.write(path, [bulk("Cu", "fcc", a=3.61), bulk("Al", "fcc", a=4.05)])  # primitive cells
    return path


def test_phonons_rows_plots_and_python_api_agree(tmp_path):
    from batchmd.properties import compute_phonons

    path = phonon_inputs(tmp_path)
    out = tmp_path / "phonons.csv"
    assert main(["phonons", str(path), "-o", str(out), "--model", "emt", "--supercell", "2x2x2", "--mesh", "8x8x8",
                 "--tmin", "100", "--tmax", "500", "--tstep", "100", "--band-path", "ase", "-q"]) == 0
    rows = read_csv(out)
    assert [r["ok"] for r in rows] == ["True", "True"] and [r["supercell"] for r in rows] == ["2x2x2", "2x2x2"]
    for column in ("min_freq_THz", "max_freq_THz", "n_imaginary", "F_300K_kJ_mol", "S_300K_J_K_mol",
                   "Cv_300K_J_K_mol", "n_supercell_atoms", "run_fingerprint"):
        assert column in rows[0], column
    assert rows[0]["n_imaginary"] == "0" and rows[0]["n_supercell_atoms"] == "8"
    reference = compute_phonons(ase.io.read(path, ":"), load_model("emt"), supercell_matrix=(2, 2, 2),
                                mesh=(8, 8, 8), temperatures=[100, 200, 300, 400, 500], band_path=None)
    for row, result in zip(rows, reference):
        assert math.isclose(float(row["max_freq_THz"]), float(result.mesh_frequencies.max()), rel_tol=1e-10)
        assert math.isclose(float(row["Cv_300K_J_K_mol"]), result.at_temperature(300)[2], rel_tol=1e-10)
    assert sorted(p.name for p in (tmp_path / "phonons_plots").iterdir()) == ["0000_Cu.png", "0001_Al.png"]
    thermal = read_csv(tmp_path / "phonons_thermal" / "0001_Al.csv")  # F, S, Cv against T, per structure
    assert [r["T_K"] for r in thermal] == ["100.0", "200.0", "300.0", "400.0", "500.0"]
    assert math.isclose(float(thermal[2]["Cv_J_K_mol"]), float(rows[1]["Cv_300K_J_K_mol"]), rel_tol=1e-12)
    # a 3x3 matrix, no bands; --min-length chooses the supercell per structure
    out = tmp_path / "matrix.json"
    assert main(["phonons", str(path), "-o", str(out), "--model", "emt", "--supercell=-1,1,1,1,-1,1,1,1,-1",
                 "--mesh", "4x4x4", "--band-path", "none", "--no-plot", "-q"]) == 0
    assert [r["n_supercell_atoms"] for r in json.loads(out.read_text())] == [4, 4]
    out = tmp_path / "length.json"
    assert main(["phonons", str(path), "-o", str(out), "--model", "emt", "--min-length", "5.2", "--mesh", "4x4x4",
                 "--band-path", "none", "--no-plot", "-q"]) == 0
    assert [r["supercell"] for r in json.loads(out.read_text())] == ["3x3x3", "2x2x2"]


@pytest.mark.parametrize("args, message", [
    (["--supercell", "2x2"], "--supercell must be 3 or 9 integers"),
    (["--supercell", "2x2x2", "--min-length", "8"], "give --supercell or --min-length, not both"),
    (["--mesh", "8x8"], "--mesh must be 3 integers"),
    (["--tmin", "500", "--tmax", "100"], "need 0 <= --tmin <= --tmax"),
    (["--displacement", "0"], "displacement must be a positive number"),
])
def test_phonons_user_errors_are_one_line(tmp_path, capsys, args, message):
    path = phonon_inputs(tmp_path)
    rc = main(["phonons", str(path), "-o", str(tmp_path / "p.csv"), "--model", "emt", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "p.csv").exists()


def test_phonons_without_phonopy_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    path = tmp_path / "cu.extxyz"
    ase.io.write(path, bulk("Cu"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "phonopy" else find_spec(name, *a))
    assert main(["phonons", str(path), "-o", str(tmp_path / "p.csv"), "--model", "emt"]) == 2
    err = capsys.readouterr().err
    assert "batchmd phonons needs the phonopy package" in err and "batchmd[phonons]" in err and err.count("\n") == 1


def test_phonons_failed_relaxation_is_named_and_resume_skips_done(tmp_path, capsys):
    path = phonon_inputs(tmp_path)
    squeezed = tmp_path / "squeezed.extxyz"
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=2)
    ase.io.write(squeezed, [*ase.io.read(path, ":"), atoms])
    out = tmp_path / "p.csv"
    args = ["phonons", str(squeezed), "-o", str(out), "--model", "emt", "--mesh", "4x4x4", "--band-path", "none",
            "--relax-input", "--max-steps", "3", "--no-plot", "-q"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "structure 2 (Cu4) failed: input relaxation (cell fixed): not converged in 3 steps" in err
    assert [r["ok"] for r in read_csv(out)] == ["True", "True", "False"]
    assert main([*args, "--resume"]) == 3  # complete: nothing recomputed, the failure still counts


@pytest.mark.parametrize("command, defaults", [("elastic", ("(default: 0.005,0.01)", "(default: 0.005)")),
                                               ("phonons", ("[default: 2x2x2]", "(default: 20x20x20)"))])
def test_elastic_phonons_help_imports_nothing_heavy(command, defaults):
    import subprocess
    import sys

    code = (f"import sys\nfrom batchmd.cli import main\ntry:\n    main(['{command}', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('HEAVY', [m for m in ('torch', 'warp', 'ase.io', 'scipy', 'numpy', 'phonopy') "
            "if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
    text = " ".join(done.stdout.split())
    assert all(d in text for d in defaults) and "``" not in text, text
