"""The command line for real work (issue 13), through the real console script.

Fast start without torch/Warp/ASE, quiet and verbose output, models that fit the input,
per-stage results with statuses as names, interruption and bitwise resume, output formats.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from md_argon import rattled_argon

SCRIPT = shutil.which("batchmd", path=os.path.dirname(sys.executable))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-c", "import sys; from batchmd.cli import main; sys.exit(main())"]


def batchmd(*args, cwd=None, timeout=600):
    return subprocess.run(COMMAND + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def argon_frames(count=5, seed=0):
    return rattled_argon(count, seed)


@pytest.fixture
def argon_file(tmp_path):
    path = tmp_path / "ar.extxyz"
    ase.io.write(path, argon_frames())
    return path


# ----------------------------------------------------------------------------- §4 fast start, quiet, verbose
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["relax", "--help"], ["md", "--help"],
                                  ["pipeline", "--help"], ["relax"], ["md", "x.extxyz", "-o", "y.extxyz"],
                                  ["relax", "in.xyz", "-o", "o.xyz", "--frobnicate"]])
def test_help_version_and_argument_errors_import_no_heavy_module(argv):
    code = ("import sys\nfrom batchmd.cli import main\n"
            f"rc = main({argv!r})\n" if argv[0] not in ("--help", "--version") and "--help" not in argv else
            "import sys\nfrom batchmd.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n" % argv)
    code += "heavy = [m for m in ('torch', 'warp', 'ase.io', 'scipy', 'numpy') if m in sys.modules]\nprint('HEAVY', heavy)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr


def test_help_text_plain_with_defaults():
    done = batchmd("relax", "--help")
    assert done.returncode == 0
    assert "``" not in done.stdout and ":class:" not in done.stdout
    assert "(default: 0.05)" in done.stdout and "(default: 500)" in done.stdout
    assert "cuda when available" in done.stdout
    md = batchmd("md", "--help").stdout
    assert "(default: nvt)" in md and "``" not in md


def test_quiet_prints_nothing_and_verbose_logs_the_run(argon_file, tmp_path):
    quiet = batchmd("relax", argon_file, "-o", tmp_path / "q.extxyz", "-q")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""  # no Warp CUDA notice either
    loud = batchmd("relax", argon_file, "-o", tmp_path / "v.extxyz", "-v", "--device", "cpu")
    assert loud.returncode == 0, loud.stderr
    for text in ("model: lj", "device cpu, dtype float64", "live batch budget", "refill points", "neighbor list",
                 "timings: start-up (options, torch, Warp)", "(default)"):
        assert text in loud.stderr, text
    assert "model: lj" in loud.stdout and "stage 0 (fire): 5 converged" in loud.stdout


# ----------------------------------------------------------------------------- §1 honest models
def test_model_must_cover_the_elements(tmp_path):
    cu = tmp_path / "cu.cif"
    ase.io.write(cu, bulk("Cu", "fcc", a=3.6))
    done = batchmd("relax", cu, "-o", tmp_path / "out.extxyz")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["batchmd: error: model lj has no parameters for Cu (it covers He Ne Ar Kr Xe) "
                                        "(frame 0); use --model emt, or an MLIP: --model sevennet-0, mace:PATH or "
                                        "metatomic:PATH"]
    nacl = tmp_path / "nacl.extxyz"
    ase.io.write(nacl, bulk("NaCl", "rocksalt", a=5.64))
    done = batchmd("relax", nacl, "-o", tmp_path / "out.extxyz", "--model", "emt")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "model emt has no parameters for Na Cl" in done.stderr
    water = tmp_path / "water.extxyz"
    ase.io.write(water, molecule("H2O"))
    done = batchmd("md", water, "-o", tmp_path / "out.extxyz", "--temperature", "300", "--steps", "2", "--dt", "1")
    assert done.returncode == 2 and "no parameters for H O" in done.stderr
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_the_element_error_names_the_frame_and_the_output_never_overwrites_the_input(tmp_path):
    mixed = tmp_path / "mixed.extxyz"
    ase.io.write(mixed, [bulk("Ar", "fcc", a=5.26), bulk("Cu", "fcc", a=3.6), bulk("Kr", "fcc", a=5.7)])
    done = batchmd("relax", mixed, "-o", tmp_path / "out.extxyz")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "no parameters for Cu" in done.stderr and "(frame 1)" in done.stderr
    before = mixed.read_bytes()
    done = batchmd("relax", mixed, "-o", mixed)
    assert done.returncode == 2 and "is the input file" in done.stderr
    assert mixed.read_bytes() == before


def test_emt_on_copper_records_the_model(tmp_path):
    cu = tmp_path / "cu.cif"
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.rattle(0.02, seed=1)
    ase.io.write(cu, atoms)
    done = batchmd("relax", cu, "-o", tmp_path / "out.extxyz", "--model", "emt", "--fmax", "0.02")
    assert done.returncode == 0, done.stderr
    out = ase.io.read(tmp_path / "out.extxyz")
    assert out.info["model"] == "emt" and out.info["status"] == "converged"
    assert "model: emt" in done.stdout


def test_warnings_are_one_line_and_resume_without_partial_says_so(tmp_path):
    cu = tmp_path / "cu.cif"
    ase.io.write(cu, bulk("Cu", "fcc", a=3.61, cubic=True))  # symmetric: nothing moves, said in CLI terms
    done = batchmd("relax", cu, "-o", tmp_path / "out.extxyz", "--model", "emt", "--resume")
    assert done.returncode == 0, done.stderr
    assert "batchmd: warning: --resume: nothing to resume" in done.stderr
    assert "batchmd: warning: no frame took a step: 1 already met the convergence criterion" in done.stderr
    assert "FusedStage" not in done.stderr
    assert ".py:" not in done.stderr and "warnings.warn" not in done.stderr  # no source path or code line


# ----------------------------------------------------------------------------- §2 per-stage results
def test_fire_out_of_steps_skips_nvt_and_says_so(argon_file, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('input = "ar.extxyz"\noutput = "out.extxyz"\n'
                      '[[stages]]\nmethod = "fire"\nfmax = 1e-9\nmax_steps = 3\n'
                      '[[stages]]\nmethod = "nvt"\ntemperature = 30.0\ndt = 2.0\nsteps = 5\n')
    done = batchmd("pipeline", config, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "stage 0 (fire): 5 out_of_steps" in done.stdout and "stage 1 (nvt): 5 skipped" in done.stdout
    for atoms in ase.io.read(tmp_path / "out.extxyz", ":"):
        info = atoms.info
        assert info["status"] == "out_of_steps" and info["converged"] is False
        assert info["stage0_status"] == "out_of_steps" and info["stage0_steps"] == 3 and info["stage0_method"] == "fire"
        assert info["stage1_status"] == "skipped" and info["stage1_steps"] == 0 and info["stage1_method"] == "nvt"
    rows = list(csv.DictReader(open(tmp_path / "out.summary.csv")))
    assert [r["input_index"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert {r["stage1_status"] for r in rows} == {"skipped"} and {r["stage0_status"] for r in rows} == {"out_of_steps"}
    assert {r["stage0_method"] for r in rows} == {"fire"} and {r["stage1_method"] for r in rows} == {"nvt"}
    for key in ("stage0_status", "stage0_steps", "stage1_status", "fmax", "n_steps", "status"):
        assert key in rows[0] and key in info  # the summary's columns are the frames' own info keys


def test_fire_then_nvt_records_each_stage(argon_file, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('input = "ar.extxyz"\noutput = "out.traj"\n'
                      '[[stages]]\nmethod = "fire"\nfmax = 0.05\nmax_steps = 300\n'
                      '[[stages]]\nmethod = "nvt"\ntemperature = 30.0\ndt = 2.0\nsteps = 7\n')
    done = batchmd("pipeline", config, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    for atoms in ase.io.read(tmp_path / "out.traj", ":"):  # an ASE trajectory keeps the info
        info = atoms.info
        assert info["stage0_status"] == "converged" and info["stage0_fmax"] <= 0.05  # fmax where FIRE ended
        assert info["stage1_status"] == "completed" and info["stage1_steps"] == 7
        assert info["n_steps"] == info["stage0_steps"] + 7
        assert info["status"] == "completed" and info["converged"] is True
        assert 0 < info["stage1_temperature"] < 1000


def test_md_is_completed_not_converged_and_nve_needs_no_temperature(argon_file, tmp_path):
    out = tmp_path / "nve.extxyz"
    done = batchmd("md", argon_file, "-o", out, "--ensemble", "nve", "--steps", "1", "--dt", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "stage 0 (nve): 5 completed" in done.stdout and "converged" not in done.stdout
    hot = tmp_path / "hot.extxyz"
    assert batchmd("md", argon_file, "-o", hot, "--ensemble", "nve", "--temperature", "60", "--steps", "1",
                   "--dt", "1", "--device", "cpu").returncode == 0
    for atoms in ase.io.read(hot, ":"):
        assert atoms.info["status"] == "completed" and atoms.info["converged"] is False
        # the mean over one step is the temperature after it (ASE: 3N degrees of freedom)
        assert atoms.info["stage0_temperature"] == pytest.approx(atoms.get_temperature(), rel=1e-5)


# ----------------------------------------------------------------------------- §3 interruption and resume
def _frames_in(path):
    return path.read_text().count("Lattice=") if path.exists() else 0


def _run_args(kind, source, tmp_path):
    common = ["--device", "cpu", "-q"]
    if kind == "md":
        return ["md", source, "--temperature", "40", "--steps", "1500", "--dt", "2", "--max-atoms", "16", *common]
    if kind == "relax":
        return ["relax", source, "--fmax", "1e-7", "--max-steps", "1500", "--max-atoms", "16", *common]
    config = tmp_path / "run.toml"
    config.write_text(f'input = "{source.name}"\noutput = "unused.extxyz"\nmax_atoms = 16\n'
                      '[[stages]]\nmethod = "fire"\nfmax = 0.01\nmax_steps = 300\n'
                      '[[stages]]\nmethod = "nvt"\ntemperature = 30.0\ndt = 2.0\nsteps = 1500\n')
    return ["pipeline", config, *common]


@pytest.mark.parametrize("kind, sig", [("md", signal.SIGINT), ("pipeline", signal.SIGTERM),
                                       pytest.param("relax", signal.SIGINT, marks=pytest.mark.slow)])
def test_interrupted_run_resumes_bitwise(tmp_path, kind, sig):
    """Ctrl-C / SIGTERM keep the finished frames; --resume finishes the run: bitwise the uninterrupted output."""
    source = tmp_path / "in.extxyz"
    ase.io.write(source, argon_frames(24, seed=3))
    args = _run_args(kind, source, tmp_path)
    assert batchmd(*args, "-o", tmp_path / "full.extxyz").returncode == 0
    out = tmp_path / "int.extxyz"
    partial = tmp_path / "int.extxyz.partial"
    process = subprocess.Popen(COMMAND + [str(a) for a in args] + ["-o", str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while _frames_in(partial) < 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 128 + sig
    assert f"frames finished are in {partial}" in stderr and "--resume" in stderr
    assert not out.exists() and _frames_in(partial) >= 2
    again = batchmd(*args, "-o", out)
    assert again.returncode == 2 and "--resume" in again.stderr and partial.exists()  # nothing deleted
    if kind == "md":
        other = batchmd(*[a if a != "1500" else "1400" for a in args], "-o", out, "--resume")
        assert other.returncode == 2 and "different run (stages changed)" in other.stderr
    resumed = batchmd(*args, "-o", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == (tmp_path / "full.extxyz").read_bytes()
    assert (tmp_path / "int.summary.csv").read_bytes() == (tmp_path / "full.summary.csv").read_bytes()
    assert not partial.exists()


# ----------------------------------------------------------------------------- output formats
def test_output_formats_by_extension(tmp_path):
    one = tmp_path / "one.extxyz"
    ase.io.write(one, argon_frames(1))
    for name in ("out.cif", "POSCAR", "out.xyz", "out.traj"):
        done = batchmd("relax", one, "-o", tmp_path / name, "--device", "cpu", "-q")
        assert done.returncode == 0, (name, done.stderr)
        atoms = ase.io.read(tmp_path / name)
        assert len(atoms) == 4
    assert ase.io.read(tmp_path / "out.traj").info["status"] == "converged"
    assert (tmp_path / "POSCAR.summary.csv").exists() and (tmp_path / "out.summary.csv").exists()
    many = tmp_path / "many.extxyz"
    ase.io.write(many, argon_frames(3))
    done = batchmd("relax", many, "-o", tmp_path / "CONTCAR", "--device", "cpu")
    assert done.returncode == 2 and "holds one structure" in done.stderr


def test_cluster_without_cell_runs(tmp_path):
    source = tmp_path / "cluster.xyz"
    ase.io.write(source, Atoms("Ar3", positions=[[0, 0, 0], [3.8, 0, 0], [0, 3.8, 0]]))
    done = batchmd("relax", source, "-o", tmp_path / "out.xyz", "--device", "cpu", "-q")
    assert done.returncode == 0, done.stderr
    assert np.isfinite(ase.io.read(tmp_path / "out.xyz").get_potential_energy())


def test_dtype_default_follows_the_model():
    from batchmd.cli.common import default_dtype_name

    assert [default_dtype_name(n) for n in ("sevennet-0", "mace:m.model", "metatomic:x.pt")] == ["float32"] * 3
    assert [default_dtype_name(n) for n in ("lj", "lj:Ar,Kr", "emt", None)] == ["float64"] * 4


def test_emt_relaxes_cells_and_options_that_do_not_apply_are_refused(tmp_path):
    cu = tmp_path / "cu.cif"
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)  # 3% strained
    ase.io.write(cu, atoms)
    done = batchmd("relax", cu, "-o", tmp_path / "out.extxyz", "--model", "emt", "--cell", "full", "--fmax", "0.05")
    assert done.returncode == 0, done.stderr
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE as ASEFIRE

    ref = atoms.copy()
    ref.calc = EMT()
    ASEFIRE(FrechetCellFilter(ref), logfile=None).run(fmax=0.05, steps=500)
    out = ase.io.read(tmp_path / "out.extxyz")
    assert out.info["status"] == "converged"
    assert abs(out.get_volume() - ref.get_volume()) < 1e-3 and abs(out.get_potential_energy() - ref.get_potential_energy()) < 1e-6
    for argv, text in ((["relax", cu, "--cell", "volume", "--pressure", "5"], "pressure does nothing with cell = volume"),
                       (["md", cu, "--ensemble", "nvt-nose-hoover", "--temperature", "300", "--steps", "2", "--dt", "1",
                         "--pressure", "1"], "--pressure does not apply to --ensemble nvt-nose-hoover")):
        done = batchmd(*argv, "-o", tmp_path / "x.extxyz", "--model", "emt")
        assert done.returncode == 2 and text in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_an_mlip_missing_an_element_does_not_recommend_itself():
    from batchmd.cli.models import species_error

    message = str(species_error("sevennet-0", [86], None))
    assert "another MLIP: --model mace:PATH or metatomic:PATH" in message and "sevennet-0," not in message


def test_a_run_whose_frames_all_failed_exits_3(tmp_path, monkeypatch, capsys):
    """Every frame fails during the run (here: a model returning NaN energies): written as failed, exit 3.
    (A cell filter given a cluster, this test's input before issue 20, is now refused up front: exit 2.)"""
    from batchmd.cli import main
    from batchmd.models.lj import LennardJones

    ar = tmp_path / "ar13.xyz"
    cluster = Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3.8]])  # no cell: a cell filter cannot relax it
    ase.io.write(ar, cluster)
    assert main(["relax", str(ar), "-o", str(tmp_path / "m.extxyz"), "--cell", "full", "--device", "cpu"]) == 2
    assert "frame 0 is not periodic" in capsys.readouterr().err and not (tmp_path / "m.extxyz").exists()
    forward = LennardJones.forward

    def nan_energy(self, batch, *args, **kwargs):
        out = forward(self, batch, *args, **kwargs)
        out["energy"].fill_(float("nan"))
        return out

    monkeypatch.setattr(LennardJones, "forward", nan_energy)
    assert main(["relax", str(ar), "-o", str(tmp_path / "m.extxyz"), "--device", "cpu"]) == 3
    assert "failed" in capsys.readouterr().err and ase.io.read(tmp_path / "m.extxyz").info["status"] == "failed"
