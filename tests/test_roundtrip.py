"""Every output path writes files ASE reads back with the same info keys and the same status words.

Inputs carry awkward info (multi-line strings, numpy arrays, None, unicode, nested dicts,
bools, a key with ``=``, backslashes, a Spacegroup object, CIF metadata); each path --
``batchmd relax`` (.extxyz, .traj, .json), ``md``, ``pipeline``, the ExtXYZSink partial
file, :func:`batchmd.ase.run_frames` results written with :func:`write_frames`, and
``batchmd shard`` + ``campaign run`` + ``campaign export`` -- gives back the values the rule
of :mod:`batchmd.data.info_io` documents, the same for all. EMT on 4-atom Cu cells.
"""

from __future__ import annotations

import os

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.spacegroup import Spacegroup

from batchmd.cli import main
from batchmd.data.info_io import portable_info, write_frames

#: A hand-written CIF: Cu in F m -3 m given by its symmetry operations (one site, occupancy 1).
CU_CIF = """data_Cu
_cell_length_a 3.61
_cell_length_b 3.61
_cell_length_c 3.61
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
loop_
_symmetry_equiv_pos_as_xyz
'x, y, z'
'x, y+1/2, z+1/2'
'x+1/2, y, z+1/2'
'x+1/2, y+1/2, z'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Cu1 Cu 0.0 0.0 0.0 1.0
"""


def awkward_info() -> dict:
    return {"note": "line one\nline two", "none": None, "empty": "", "arr": np.arange(3), "mat": np.eye(2),
            "flag": True, "unicode": "Å café ✓", "k=v": 7, "path": "C:\\data\\x",
            "nested": {"a": {"b": [1, 2]}, "arr": np.arange(2), "none": None, "text": "x\ny"},
            "z": 1 + 2j, "name": "cu-crystal", "words": ["a", "b c"]}


#: What every path gives back for :func:`awkward_info` (None and "" dropped; see batchmd.data.info_io).
EXPECTED = {"note": ["line one", "line two"], "arr": np.arange(3), "mat": np.eye(2), "flag": True,
            "unicode": "Å café ✓", "k_v": 7, "path": "C:/data/x",
            "nested": {"a": {"b": [1, 2]}, "arr": [0, 1], "none": None, "text": ["x", "y"]},
            "z": "(1+2j)", "name": "cu-crystal", "words": ["a", "b c"]}
DROPPED = ("none", "empty", "k=v")

#: What ASE's CIF reader gives for CU_CIF, as every path writes it back.
CIF_EXPECTED = {"spacegroup": "F m -3 m", "unit_cell": "conventional",
                "occupancy": {"0": {"Cu": 1.0}}}


def _str_keys(value):
    """Dict keys as str: ASE's .traj/.json reader gives digit keys ("0") back as ints."""
    if isinstance(value, dict):
        return {str(k): _str_keys(v) for k, v in value.items()}
    return value


def assert_info(info: dict, expected: dict, dropped=()) -> None:
    for key, want in expected.items():
        assert key in info, f"{key} missing: {sorted(info)}"
        got = info[key]
        if isinstance(want, np.ndarray) or isinstance(got, np.ndarray):
            np.testing.assert_array_equal(np.asarray(got), want, err_msg=key)
        else:
            assert _str_keys(got) == want, (key, got, want)
    for key in dropped:
        assert key not in info, key


@pytest.fixture
def inputs(tmp_path):
    """in.traj: two rattled Cu cells with awkward info; cu.cif: the hand-written CIF."""
    frames = []
    for seed in range(2):
        atoms = bulk("Cu", "fcc", a=3.62, cubic=True)
        atoms.rattle(0.03, seed=seed)
        atoms.info.update(awkward_info())
        frames.append(atoms)
    ase.io.write(tmp_path / "in.traj", frames)
    (tmp_path / "cu.cif").write_text(CU_CIF)
    return tmp_path


def check_result_frames(frames, tmp_path, status_words=("converged",)):
    assert [a.info["input_index"] for a in frames] == [0, 1, 2]
    assert [(os.path.basename(a.info["source_file"]), a.info["source_index"]) for a in frames] == [
        ("in.traj", 0), ("in.traj", 1), ("cu.cif", 0)]
    for atoms in frames[:2]:
        assert_info(atoms.info, EXPECTED, DROPPED)
    assert_info(frames[2].info, CIF_EXPECTED)
    assert all(a.info["status"] in status_words for a in frames), [a.info["status"] for a in frames]


def test_portable_info_rule():
    out = portable_info(awkward_info())
    assert_info(out, EXPECTED, DROPPED)
    assert portable_info({"sg": Spacegroup(225)}) == {"sg": "F m -3 m"}  # what ASE's extxyz writer writes
    assert portable_info({"t": "a\tb", "blank": "  ", "a": np.float32(1.5), "s": np.array(["x", "y"])}) == {
        "t": "a b", "a": 1.5, "s": ["x", "y"]}


def test_cif_written_by_ase_round_trips(tmp_path):
    """A CIF written with ase.io.write and read back (Spacegroup object, occupancy dict, kinds)."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    ase.io.write(tmp_path / "w.cif", atoms)
    read = ase.io.read(tmp_path / "w.cif")
    assert isinstance(read.info["spacegroup"], Spacegroup)
    write_frames(tmp_path / "w.extxyz", [read])
    back = ase.io.read(tmp_path / "w.extxyz")
    assert back.info["spacegroup"] == "P 1" and back.info["occupancy"]["3"] == {"Cu": 1.0}
    assert list(back.arrays["spacegroup_kinds"]) == [0, 1, 2, 3]


@pytest.mark.parametrize("suffix", [".extxyz", ".traj", ".json"])
def test_relax_outputs_round_trip(inputs, suffix):
    out = inputs / f"out{suffix}"
    rc = main(["relax", str(inputs / "in.traj"), str(inputs / "cu.cif"), "-o", str(out), "--model", "emt",
               "--fmax", "0.05", "--max-steps", "100", "--device", "cpu", "-q"])
    assert rc == 0
    frames = ase.io.read(out, ":")
    if suffix == ".json":  # ASE's json database is read back without atoms.info (documented): geometry only
        assert len(frames) == 3 and all(not a.info for a in frames)
        return
    check_result_frames(frames, inputs)


def test_md_and_pipeline_outputs_round_trip(inputs):
    out = inputs / "md.extxyz"
    rc = main(["md", str(inputs / "in.traj"), str(inputs / "cu.cif"), "-o", str(out), "--model", "emt",
               "--ensemble", "nve", "--steps", "3", "--dt", "1", "--device", "cpu", "-q"])
    assert rc == 0
    check_result_frames(ase.io.read(out, ":"), inputs, status_words=("completed",))
    config = inputs / "p.toml"
    config.write_text('input = ["in.traj", "cu.cif"]\noutput = "p.extxyz"\ndevice = "cpu"\n[model]\nname = "emt"\n'
                      '[[stages]]\nmethod = "fire"\nfmax = 0.05\nmax_steps = 100\n'
                      '[[stages]]\nmethod = "nve"\ndt = 1.0\nsteps = 2\n')
    assert main(["pipeline", str(config), "-q"]) == 0
    frames = ase.io.read(inputs / "p.extxyz", ":")
    check_result_frames(frames, inputs, status_words=("completed",))
    assert all(a.info["stage0_status"] == "converged" and a.info["converged"] is True for a in frames)


def test_sink_and_library_results_round_trip(inputs):
    from batchmd.ase import run_frames
    from batchmd.data.inputs import read_structures
    from batchmd.dynamics import FIRE, ConvergenceHook
    from batchmd.dynamics.sinks import ExtXYZSink
    from batchmd.models import load_model

    frames = read_structures([inputs / "in.traj", inputs / "cu.cif"])
    model = load_model("emt")
    sink_path = inputs / "sink.extxyz"
    result = run_frames(frames, [FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=100)],
                        sinks=[ExtXYZSink(sink_path)])
    written = sorted(ase.io.read(sink_path, ":"), key=lambda a: a.info["input_index"])
    check_result_frames(written, inputs)
    write_frames(inputs / "lib.extxyz", result.frames)
    check_result_frames(ase.io.read(inputs / "lib.extxyz", ":"), inputs)


def test_campaign_export_round_trips_like_relax(inputs, capsys):
    from batchmd.campaign import CampaignConfig, run_campaign

    rc = main(["shard", str(inputs / "in.traj"), str(inputs / "cu.cif"), str(inputs / "ds"), "--quiet"])
    assert rc == 0
    config = CampaignConfig(manifest=str(inputs / "ds"), output=str(inputs / "run"), model={"name": "emt"},
                            stages=[{"method": "fire", "fmax": 0.05, "max_steps": 100}], max_atoms=16,
                            commit_every=2, refill_frequency=5)
    run_campaign(config)
    out = inputs / "camp.extxyz"
    assert main(["campaign", "export", str(inputs / "run"), "-o", str(out), "--require-complete"]) == 0
    exported = ase.io.read(out, ":")
    check_result_frames(exported, inputs)
    assert all(a.info["stage0_status"] == "converged" for a in exported)
    relaxed = inputs / "relax.extxyz"
    assert main(["relax", str(inputs / "in.traj"), str(inputs / "cu.cif"), "-o", str(relaxed), "--model", "emt",
                 "--fmax", "0.05", "--max-steps", "100", "--device", "cpu", "-q"]) == 0
    cli = ase.io.read(relaxed, ":")
    skip = {"system_id"}  # the CLI numbers systems in serving order too; equal to input_index here
    for a, b in zip(exported, cli):  # the same keys (but the CLI's model/method labels) and status words
        assert set(b.info) - skip <= set(a.info), set(b.info) - skip - set(a.info)
        for key in ("status", "converged", "model", "stage0_method", "stage0_status", "source_file", "source_index"):
            assert a.info[key] == b.info[key], key
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-8)
