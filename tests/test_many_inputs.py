"""Many inputs: files, folders and globs for relax, md, pipeline and shard; origins; resume; one-line errors.

Tiny argon crystals with Lennard-Jones (a few FIRE steps each).
"""

from __future__ import annotations

import json
import os

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from batchmd.cli import main
from batchmd.data.inputs import expand_inputs, inputs_checksum, read_structures


def argon(n_cells: int, seed: int, a: float = 5.3):
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat((n_cells, 1, 1))
    atoms.rattle(0.05, seed=seed)
    return atoms


@pytest.fixture
def tree(tmp_path):
    """a.extxyz (2 frames), b.cif, structures/{c.extxyz (1), d.vasp, notes.txt, .hidden.xyz}, data/{e,f}.extxyz."""
    ase.io.write(tmp_path / "a.extxyz", [argon(1, 0), argon(2, 1)])
    ase.io.write(tmp_path / "b.cif", argon(1, 2))
    (tmp_path / "structures").mkdir()
    ase.io.write(tmp_path / "structures" / "c.extxyz", argon(1, 3))
    ase.io.write(tmp_path / "structures" / "d.vasp", argon(1, 4), format="vasp")
    (tmp_path / "structures" / "notes.txt").write_text("not a structure")
    ase.io.write(tmp_path / "structures" / ".hidden.xyz", argon(1, 9))
    (tmp_path / "data").mkdir()
    ase.io.write(tmp_path / "data" / "f.extxyz", argon(1, 6))
    ase.io.write(tmp_path / "data" / "e.extxyz", [argon(1, 5), argon(1, 7)])
    (tmp_path / "empty").mkdir()
    return tmp_path


#: (file, index in it) of every frame of the inputs below, in output order.
ORDER = [("a.extxyz", 0), ("a.extxyz", 1), ("b.cif", 0), ("c.extxyz", 0), ("d.vasp", 0),
         ("e.extxyz", 0), ("e.extxyz", 1), ("f.extxyz", 0)]


def given(tree):
    return [str(tree / "a.extxyz"), str(tree / "b.cif"), str(tree / "structures"), str(tree / "data" / "*.extxyz")]


def origins(frames):
    return [(os.path.basename(a.info["source_file"]), int(a.info["source_index"])) for a in frames]


def test_expand_and_read_order_and_origin(tree):
    files = expand_inputs(given(tree))
    assert [os.path.basename(f) for f in files] == ["a.extxyz", "b.cif", "c.extxyz", "d.vasp", "e.extxyz",
                                                    "f.extxyz"]
    assert files[2] == os.path.join(str(tree / "structures"), "c.extxyz")  # joined onto the folder as given
    frames = read_structures(given(tree))
    assert origins(frames) == ORDER
    assert inputs_checksum(files[:1]).startswith("sha256:") and inputs_checksum(files) != inputs_checksum(
        files[::-1])


@pytest.mark.parametrize("bad, message", [
    (["missing.extxyz"], "missing.extxyz: no such file"),
    (["empty"], "empty: folder holds no structure file"),
    (["data/*.cif"], "data/*.cif: pattern matches no file"),
    (["structures/notes.txt"], "notes.txt: cannot read it with ASE"),
    (["a.extxyz", "./a.extxyz"], "a.extxyz: named twice in the inputs"),
])
def test_bad_inputs_are_one_line_errors(tree, bad, message, capsys, monkeypatch):
    monkeypatch.chdir(tree)
    rc = main(["relax", *bad, "-o", "out.extxyz", "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tree / "out.extxyz").exists()
    rc = main(["shard", *bad, "ds", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message.split(":")[0] in err and len(err.splitlines()) == 1, err
    assert not (tree / "ds" / "manifest.json").exists()


def test_relax_many_inputs_order_origin_and_summary(tree, capsys):
    out = tree / "out.extxyz"
    rc = main(["relax", *given(tree), "-o", str(out), "--device", "cpu", "--max-steps", "30", "-q"])
    assert rc == 0
    frames = ase.io.read(out, ":")
    assert [a.info["input_index"] for a in frames] == list(range(len(ORDER)))
    assert origins(frames) == ORDER
    import csv

    rows = list(csv.DictReader(open(tree / "out.summary.csv")))
    assert [(os.path.basename(r["source_file"]), int(r["source_index"])) for r in rows] == ORDER


def test_md_and_pipeline_take_many_inputs(tree):
    out = tree / "md.extxyz"
    rc = main(["md", str(tree / "a.extxyz"), str(tree / "structures"), "-o", str(out), "--ensemble", "nve",
               "--steps", "2", "--dt", "1", "--device", "cpu", "-q"])
    assert rc == 0
    assert origins(ase.io.read(out, ":")) == ORDER[:2] + [("c.extxyz", 0), ("d.vasp", 0)]
    config = tree / "p.toml"
    config.write_text('input = "data/*.extxyz"\noutput = "p.extxyz"\ndevice = "cpu"\n'
                      '[[stages]]\nmethod = "fire"\nfmax = 0.05\nmax_steps = 20\n')
    assert main(["pipeline", str(config), "-q"]) == 0
    assert origins(ase.io.read(tree / "p.extxyz", ":")) == ORDER[5:]
    config.write_text('input = ["b.cif", "structures/"]\noutput = "q.extxyz"\ndevice = "cpu"\n'
                      '[[stages]]\nmethod = "fire"\nfmax = 0.05\nmax_steps = 20\n')
    assert main(["pipeline", str(config), "-q"]) == 0
    assert origins(ase.io.read(tree / "q.extxyz", ":")) == ORDER[2:5]


def test_resume_with_many_inputs(tree, monkeypatch, capsys):
    """An interrupted multi-input run resumes (only the missing frames run) to the uninterrupted bytes."""
    import batchmd.cli.runner as runner

    args = [*given(tree), "--device", "cpu", "--max-steps", "30", "-q"]
    assert main(["relax", *args, "-o", str(tree / "full.extxyz")]) == 0
    out = tree / "out.extxyz"
    real = runner._write_output

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_write_output", interrupted)
    assert main(["relax", *args, "-o", str(out)]) == 130
    partial = tree / "out.extxyz.partial"
    monkeypatch.setattr(runner, "_write_output", real)
    from batchmd.data.info_io import write_frames
    from batchmd.dynamics.sinks import read_extxyz

    done = sorted(read_extxyz(partial), key=lambda a: a.info["input_index"])
    write_frames(partial, done[::2])  # as if interrupted with every other frame finished
    reordered = [given(tree)[1], given(tree)[0], *given(tree)[2:]]
    rc = main(["relax", *reordered, "--device", "cpu", "--max-steps", "30", "-q", "-o", str(out), "--resume"])
    assert rc == 2 and "different run (input changed)" in capsys.readouterr().err
    assert main(["relax", *args, "-o", str(out), "--resume"]) == 0
    assert out.read_bytes() == (tree / "full.extxyz").read_bytes()
    assert not partial.exists()
    loud = [a for a in args if a != "-q"]
    assert main(["relax", *loud, "-o", str(out), "--resume"]) == 0  # complete from this run: nothing recomputed
    assert "already complete" in capsys.readouterr().out


def test_shard_folders_and_globs_record_origin(tree):
    from batchmd.campaign import read_results, run_campaign
    from batchmd.campaign.config import CampaignConfig
    from batchmd.campaign.manifest import Manifest

    assert main(["shard", *given(tree), str(tree / "ds"), "--quiet"]) == 0
    assert main(["relax", str(tree / "ds"), "-o", str(tree / "x.extxyz"), "--device", "cpu"]) == 2  # not torchrun
    manifest = Manifest.load(str(tree / "ds"))
    assert manifest.num_structures == len(ORDER) and manifest.num_invalid == 0
    config = CampaignConfig(manifest=str(tree / "ds"), output=str(tree / "run"),
                            model={"name": "lj", "sigma": 3.405, "epsilon": 0.0104, "cutoff": 8.5},
                            stages=[{"method": "fire", "fmax": 0.05, "max_steps": 30}], max_atoms=64,
                            refill_frequency=5)
    run_campaign(config)
    frames = read_results(tree / "run", as_atoms=True, require_complete=True)
    assert origins(frames) == ORDER
    assert main(["campaign", "export", str(tree / "run"), "-o", str(tree / "camp.extxyz")]) == 0
    exported = ase.io.read(tree / "camp.extxyz", ":")
    assert origins(exported) == ORDER and {a.info["status"] for a in exported} <= {"converged", "out_of_steps"}
    np.testing.assert_allclose([len(a) for a in exported], [len(a) for a in read_structures(given(tree))])


def test_library_write_dataset_reports_missing_inputs(tree):
    """The library keeps reporting (not raising) without strict: nothing dropped silently."""
    from batchmd.campaign import write_dataset

    manifest = write_dataset([tree / "a.extxyz", tree / "missing.xyz", tree / "empty"], tree / "ds2")
    report = [json.loads(line) for line in open(tree / "ds2" / "invalid.jsonl")]
    assert manifest.num_structures == 2
    assert [(os.path.basename(r["source"]), r["reason"].split(":")[-1].strip()) for r in report] == [
        ("missing.xyz", "file not found"), ("empty", "folder holds no structure file (.extxyz, .xyz, .traj, "
                                                     ".cif, .vasp, .poscar, .db, .pdb, ..., POSCAR)")]
