"""The batchmd command line: relax/md/pipeline/demo outputs, ASE agreement, every bad-input error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones as ASELennardJones
from ase.optimize import FIRE as ASEFIRE

from batchmd.cli import main

SIGMA, EPS = 3.405, 0.0104
RC = 3.0 * SIGMA  # the documented default: 3 x sigma (batchmd.models.lj.LJ_CUTOFF_FACTOR)


def structures():
    """Five argon systems of 4 to 16 atoms (periodic crystals and a cluster)."""
    frames = []
    for i, repeat in enumerate([(1, 1, 1), (2, 1, 1), (1, 1, 1), (2, 2, 1)]):
        atoms = bulk("Ar", "fcc", a=5.25 + 0.03 * i, cubic=True).repeat(repeat)
        atoms.rattle(0.1, seed=i)
        atoms.info["name"] = f"crystal{i}"
        frames.append(atoms)
    rng = np.random.default_rng(3)
    grid = np.array([[x, y, z] for x in range(2) for y in range(2) for z in range(2)], dtype=float)
    frames.append(Atoms("Ar8", positions=3.8 * grid + rng.normal(scale=0.1, size=(8, 3))))
    return frames


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, structures())
    return path


def _no_outputs(directory: Path):
    return [p.name for p in directory.iterdir() if p.name.startswith("out")]


def test_relax_output_frames_and_agreement_with_ase(input_file, tmp_path, capsys):
    out = tmp_path / "out.extxyz"
    rc = main(["relax", str(input_file), "-o", str(out), "--fmax", "0.01", "--max-steps", "400",
               "--max-atoms", "20", "--refill-every", "3"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "stage 0 (fire): 5 converged" in stdout and f"wrote {out}" in stdout
    assert "model: lj (lj_sigma=Ar:3.405, lj_epsilon=Ar:0.0104, lj_cutoff=10.215" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.extxyz", "out.extxyz", "out.summary.csv"]  # no leftovers
    frames = ase.io.read(out, ":")
    assert [a.info["input_index"] for a in frames] == list(range(5))
    assert sorted(a.info["system_id"] for a in frames) == list(range(5))
    for atoms, original in zip(frames, structures()):
        for key in ("system_id", "fmax", "converged", "n_steps", "input_index", "status"):
            assert key in atoms.info, key
        assert atoms.info["converged"] is True and atoms.info["fmax"] <= 0.01
        assert atoms.info.get("name") == original.info.get("name")
        ref = original.copy()
        ref.calc = ASELennardJones(sigma=SIGMA, epsilon=EPS, rc=RC, smooth=False)
        ASEFIRE(ref, logfile=None).run(fmax=0.01, steps=400)
        assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        assert atoms.info["n_steps"] == pytest.approx(ASEFIRE_steps(original), abs=1)


def ASEFIRE_steps(original):
    ref = original.copy()
    ref.calc = ASELennardJones(sigma=SIGMA, epsilon=EPS, rc=RC, smooth=False)
    opt = ASEFIRE(ref, logfile=None)
    opt.run(fmax=0.01, steps=400)
    return opt.nsteps


@pytest.mark.parametrize("suffix", ["traj", "db"])
def test_relax_reads_ase_trajectory_and_database(tmp_path, suffix, capsys):
    import ase.db

    path = tmp_path / f"in.{suffix}"
    frames = structures()[:2]
    if suffix == "db":
        with ase.db.connect(path) as db:
            for atoms in frames:
                db.write(atoms)
    else:
        ase.io.write(path, frames)
    out = tmp_path / "out.xyz"
    assert main(["relax", str(path), "-o", str(out), "--quiet", "--max-steps", "50"]) == 0
    assert capsys.readouterr().out == ""
    assert len(ase.io.read(out, ":")) == 2


def _bad_frames(kind, path):
    if kind == "empty":
        ase.io.write(path, [structures()[0], Atoms(), structures()[1]])
    elif kind == "nan":
        frames = structures()
        frames[3].positions[1, 0] = np.nan
        ase.io.write(path, frames)
    elif kind == "garbage":
        path.write_text("this is not\na structure file\n")


@pytest.mark.parametrize(
    "kind,args,message",
    [
        ("missing", [], "no such file"),
        ("empty", [], "frame 1 has no atoms"),
        ("nan", [], "frame 3 has non-finite (NaN/inf) coordinates"),
        ("garbage", [], "cannot read it with ASE"),
        ("ok", ["--frobnicate"], "unrecognized arguments: --frobnicate"),
        ("ok", ["--sigma", "-1"], "--sigma must be a positive finite number"),
        ("ok", ["--epsilon", "abc"], "argument --epsilon: invalid float value: 'abc'"),
        ("ok", ["--model", "dft"], "unknown model 'dft'"),
        ("ok", ["--fmax", "0"], "fmax must be > 0"),
        ("ok", ["--max-atoms", "8"], "--max-atoms 8 is smaller than frame 3 (16 atoms)"),
        ("ok", ["--dtype", "float16"], "argument --dtype: invalid choice"),
        ("ok", ["--device", "tpu"], "--device"),
    ],
)
def test_bad_input_is_one_line_nonzero_and_leaves_no_output(tmp_path, capsys, kind, args, message):
    path = tmp_path / "in.extxyz"
    if kind == "ok":
        ase.io.write(path, structures())
    else:
        _bad_frames(kind, path)
    out = tmp_path / "out.extxyz"
    rc = main(["relax", str(path), "-o", str(out), "--max-steps", "5", *args])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith("batchmd: error: "), err
    assert message in err
    assert _no_outputs(tmp_path) == []


def test_unknown_output_format_and_missing_command(input_file, tmp_path, capsys):
    assert main(["relax", str(input_file), "-o", str(tmp_path / "out.parquet")]) == 2
    err = capsys.readouterr().err
    assert "ASE cannot write format 'parquet'" in err and err.count("\n") == 1
    assert main(["relax", str(input_file), "-o", str(tmp_path / "nodir" / "out.extxyz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["warp-speed"]) == 2
    assert "invalid choice: 'warp-speed'" in capsys.readouterr().err
    assert main([]) == 2


def test_md_nvt_runs_every_frame(input_file, tmp_path, capsys):
    out = tmp_path / "out.extxyz"
    rc = main(["md", str(input_file), "-o", str(out), "--temperature", "30", "--steps", "12", "--dt", "4",
               "--friction", "0.02", "--seed", "1"])
    assert rc == 0, capsys.readouterr().err
    frames = ase.io.read(out, ":")
    assert [a.info["input_index"] for a in frames] == list(range(5))
    assert all(a.info["n_steps"] == 12 and a.has("momenta") for a in frames)
    assert all(np.isfinite(a.get_potential_energy()) for a in frames)
    assert main(["md", str(input_file), "-o", str(out) + ".xyz", "--temperature", "-3", "--steps", "2",
                 "--dt", "1"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_md_nve(input_file, tmp_path):
    out = tmp_path / "out.extxyz"
    assert main(["md", str(input_file), "-o", str(out), "--ensemble", "nve", "--temperature", "20",
                 "--steps", "5", "--dt", "2", "--quiet"]) == 0
    assert [a.info["n_steps"] for a in ase.io.read(out, ":")] == [5] * 5


PIPELINE = """
input = "in.extxyz"
output = "out_pipeline.extxyz"
max_atoms = 24
refill_every = 4

[model]
name = "lj"
sigma = 3.405
epsilon = 0.0104

[[stages]]
method = "fire"
fmax = 0.02
max_steps = 300

[[stages]]
method = "nvt"
temperature = 20.0
dt = 4.0
friction = 0.05
steps = 6
"""


def test_pipeline_fire_then_nvt(input_file, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(PIPELINE)
    assert main(["pipeline", str(config)]) == 0
    out_text = capsys.readouterr().out
    assert "stage 0 (fire): 5 converged" in out_text and "stage 1 (nvt): 5 completed" in out_text
    frames = ase.io.read(tmp_path / "out_pipeline.extxyz", ":")
    assert len(frames) == 5
    assert all(a.info["n_steps"] > 6 for a in frames)  # FIRE steps + 6 NVT steps


@pytest.mark.parametrize(
    "edit,message",
    [
        (("temperature = 20.0", "temprature = 20.0"), "stages[1] (nvt): unknown key 'temprature'"),
        (("method = \"nvt\"", "method = \"monte-carlo\""), "stages[1]: method must be one of fire, lbfgs, nvt, nve"),
        (("max_atoms = 24", "max_atom = 24"), "unknown key 'max_atom'"),
        (("sigma = 3.405", "sigma = -3.405"), "--sigma must be a positive finite number"),
        (("steps = 6", "steps = 0"), "steps must be a positive integer"),
        (("[model]", "[model"), "not valid TOML"),
    ],
)
def test_pipeline_config_errors(input_file, tmp_path, capsys, edit, message):
    config = tmp_path / "run.toml"
    config.write_text(PIPELINE.replace(*edit))
    assert main(["pipeline", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out_pipeline.extxyz").exists()


def test_example_pipeline_toml_parses():
    from batchmd.cli.pipeline import build_stage, load_config
    from batchmd.models.lj import LennardJones

    config = load_config(Path(__file__).parents[1] / "examples" / "pipeline.toml")
    model = LennardJones(sigma=3.405, epsilon=0.0104)
    assert [type(build_stage(s, model)).__name__ for s in config["stages"]] == ["FIRE", "NVTLangevin"]


def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo.extxyz"
    assert main(["demo", "--systems", "4", "--nvt-steps", "3", "--max-atoms", "64", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "stage 0 (fire): 4 converged" in stdout and "stage 1 (nvt): 4 completed" in stdout and f"wrote {out}" in stdout
    assert len(ase.io.read(out, ":")) == 4


def test_console_script_subprocess(tmp_path):
    """The installed console script (or ``python -c``), on the error path: one batchmd line, exit 2."""
    script = shutil.which("batchmd", path=os.path.dirname(sys.executable))
    command = [script] if script else [sys.executable, "-c", "import sys; from batchmd.cli import main; "
                                                               "sys.exit(main())"]
    missing, out = tmp_path / "missing.extxyz", tmp_path / "x.extxyz"
    bad = subprocess.run(command + ["relax", str(missing), "-o", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2
    # Warp may print its own CUDA notice on a machine without a GPU; batchmd adds exactly one line.
    lines = [line for line in bad.stderr.splitlines() if line.startswith("batchmd")]
    assert lines == [f"batchmd: error: {missing}: no such file"]
    assert bad.stdout == "" and not out.exists()
