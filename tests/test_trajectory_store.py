"""Trajectory stores (issue 23): every system's frames on disk, readers, export, durability with the run.

Fast: Lennard-Jones argon of 4-12 atoms, tens of steps, float64. The resume tests compare an
interrupted (Ctrl-C in process, SIGKILL in a subprocess) and resumed store with an
uninterrupted one frame by frame, bit for bit.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import ase.io
import h5py
import numpy as np
import pytest
from md_argon import rattled_argon

from batchmd.cli import main
from batchmd.trajectory import (SystemNotRecorded, TrajectoryWriter, export_frames, list_systems, parse_systems,
                                read_thermo, read_trajectory)
from batchmd.trajectory.segments import parts_dir, segment_paths

SIGMA, EPS, RC = 3.405, 0.0104, 8.5125


def argon_frames(count=8, seed=0):
    return rattled_argon(count, seed)


def _nvt(steps=20):
    from batchmd.dynamics import NVTLangevin
    from batchmd.models.lj import LennardJones

    return NVTLangevin(LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC), dt=5.0, temperature=40.0, n_steps=steps,
                       random_seed=7)


def _run(tmp_path, name, max_atoms, every=5, steps=20, fields=("velocities", "forces", "energy", "stress"),
         planned=True):
    from batchmd.ase import run_frames

    nvt = _nvt(steps)
    # planned: given the stages, the recorder skips steps where no system can be due; else it checks every step
    when = {"stages": [nvt]} if planned else {"dt_fs": 5.0}
    with TrajectoryWriter(tmp_path / name, every=every, fields=fields, flush_every=5, **when) as traj:
        result = run_frames(argon_frames(), [nvt], hooks=[traj], max_atoms=max_atoms, refill_frequency=5)
    return result


def test_frames_every_n_steps_match_the_results(tmp_path):
    result = _run(tmp_path, "a.h5", max_atoms=16)  # 1-3 systems at a time: most enter through refills
    store = tmp_path / "a.h5"
    assert store.is_file() and not parts_dir(store).exists()
    assert list_systems(store) == list(range(8))
    for i, final in enumerate(result.frames):
        arrays = read_trajectory(store, i, as_arrays=True)
        assert arrays["step"].tolist() == [0, 5, 10, 15, 20]
        assert np.allclose(arrays["time_fs"], [0, 25, 50, 75, 100])
        assert arrays["positions"].shape == (5, len(final), 3) and arrays["positions"].dtype == np.float64
        assert np.array_equal(arrays["positions"][-1], final.positions)  # bit for bit
        assert np.array_equal(arrays["numbers"], final.numbers) and arrays["pbc"].all()
        assert np.array_equal(arrays["cell"][-1], final.cell.array)
        assert arrays["energy"][-1] == final.get_potential_energy()
        assert np.array_equal(arrays["forces"][-1], final.get_forces())
        assert np.allclose(arrays["velocities"][-1] / ase.units.fs, final.get_velocities(), rtol=1e-12, atol=0)
        assert np.isfinite(arrays["stress"]).all()
        frames = read_trajectory(store, i)
        assert len(frames) == 5 and frames[2].info["step"] == 10 and frames[2].info["system_id"] == i
        assert np.allclose(frames[-1].get_momenta(), final.get_momenta(), rtol=1e-12, atol=0)
        assert frames[-1].get_potential_energy() == final.get_potential_energy()
    first = read_trajectory(store, 0, as_arrays=True)
    initial = argon_frames()[0]
    assert np.array_equal(first["positions"][0], initial.positions)  # the input frame is frame 0


def test_frames_do_not_depend_on_batching(tmp_path):
    """A system's frames are at its own steps, whatever batch, slot or refill it ran in (what resume relies on)."""
    _run(tmp_path, "one_batch.h5", max_atoms=1000, fields=("velocities",))
    _run(tmp_path, "refills.h5", max_atoms=12, fields=("velocities",))
    _run(tmp_path, "every_step_checked.h5", max_atoms=12, fields=("velocities",), planned=False)
    for other in ("refills.h5", "every_step_checked.h5"):
        for i in range(8):
            a = read_trajectory(tmp_path / "one_batch.h5", i, as_arrays=True)
            b = read_trajectory(tmp_path / other, i, as_arrays=True)
            assert a.keys() == b.keys()
            for key in a:
                assert np.array_equal(a[key], b[key]), (other, i, key)


def test_float32_runs_are_stored_in_float32(tmp_path):
    import torch

    from batchmd.ase import run_frames

    nvt = _nvt(10)
    with TrajectoryWriter(tmp_path / "f.h5", every=5, fields=("velocities", "energy"), stages=[nvt],
                          commit_seconds=0) as traj:  # a segment per flush: some hold only completion marks
        result = run_frames(argon_frames(4), [nvt], hooks=[traj], max_atoms=12, refill_frequency=5,
                            dtype=torch.float32)
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["atoms/positions"].dtype == np.float32 and f["frames/energy"].dtype == np.float32
        assert f["atoms/velocities"].dtype == np.float32 and f["done/system_id"].shape == (4,)
    arrays = read_trajectory(tmp_path / "f.h5", 2, as_arrays=True)
    assert np.array_equal(arrays["positions"][-1], result.frames[2].positions.astype(np.float32))


def test_never_recorded_system_and_bad_selection_are_one_line(tmp_path, capsys):
    _run(tmp_path, "a.h5", max_atoms=1000, fields=())
    with pytest.raises(SystemNotRecorded, match=r"^system 42 was never recorded in .*a\.h5 \(it holds 8 systems, "
                                                r"ids 0\.\.7\)$") as caught:
        read_trajectory(tmp_path / "a.h5", 42)
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)
    assert main(["traj", "export", str(tmp_path / "a.h5"), "--systems", "1,42", "-o", str(tmp_path / "x.extxyz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "system 42 was never recorded" in err and not (tmp_path / "x.extxyz").exists()
    assert parse_systems("0,5-7, 9") == [0, 5, 6, 7, 9]
    with pytest.raises(ValueError, match="bad system selection '7-5'"):
        parse_systems("7-5")
    with pytest.raises(ValueError, match="no trajectory store"):
        list_systems(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="exists: pass overwrite=True"):
        TrajectoryWriter(tmp_path / "a.h5")


def test_export_extxyz_traj_h5md(tmp_path, capsys):
    _run(tmp_path, "a.h5", max_atoms=1000, fields=("velocities", "energy"))
    store = str(tmp_path / "a.h5")
    assert main(["traj", "export", store, "--systems", "0,2-3", "-o", str(tmp_path / "out.extxyz")]) == 0
    frames = ase.io.read(tmp_path / "out.extxyz", ":")
    assert len(frames) == 15 and [a.info["system_id"] for a in frames[::5]] == [0, 2, 3]
    assert np.allclose(frames[4].positions, read_trajectory(store, 0)[-1].positions)
    assert main(["traj", "export", store, "--systems", "1", "-o", str(tmp_path / "one.traj")]) == 0
    traj = ase.io.read(tmp_path / "one.traj", ":")
    assert len(traj) == 5 and np.allclose(traj[-1].get_momenta(), read_trajectory(store, 1)[-1].get_momenta())
    written = export_frames(store, [0, 1], tmp_path / "sys{system}.h5md")
    assert [p.name for p in written] == ["sys0.h5md", "sys1.h5md"]
    with h5py.File(written[1], "r") as f:  # the H5MD 1.1 layout MDAnalysis reads
        assert list(f["h5md"].attrs["version"]) == [1, 1]
        pos = f["particles/trajectory/position/value"][()]
        assert pos.shape == (5, 8, 3) and np.allclose(pos, read_trajectory(store, 1, as_arrays=True)["positions"])
        assert f["particles/trajectory/box/edges/value"].shape == (5, 3, 3)
        assert f["particles/trajectory/position/step"][()].tolist() == [0, 5, 10, 15, 20]
    with pytest.raises(ValueError, match=r"one system per file; put \{system\}"):
        export_frames(store, [0, 1], tmp_path / "both.h5md")
    capsys.readouterr()
    assert main(["traj", "info", store]) == 0
    assert "8 systems, 40 frames" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the command line
def _md_args(source, out, steps=40):
    return ["md", str(source), "-o", str(out), "--temperature", "40", "--steps", str(steps), "--dt", "5",
            "--max-atoms", "16", "--refill-every", "5", "--device", "cpu", "--deterministic", "-q",
            "--trajectory", str(out.with_suffix(".h5")), "--traj-every", "5",
            "--traj-fields", "velocities,forces,energy,stress", "--log-every", "5"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: output, store and log."""
    folder = tmp_path_factory.mktemp("ref")
    source = folder / "in.extxyz"
    ase.io.write(source, argon_frames(10, seed=3))
    assert main(_md_args(source, folder / "full.extxyz")) == 0
    return folder


def assert_same_store(a, b):
    assert list_systems(a) == list_systems(b)
    for i in list_systems(a):
        x, y = read_trajectory(a, i, as_arrays=True), read_trajectory(b, i, as_arrays=True)
        assert x.keys() == y.keys()
        for key in x:
            assert np.array_equal(x[key], y[key], equal_nan=x[key].dtype.kind == "f"), (i, key)


def assert_same_table(a, b):
    """Column by column, bit for bit (NaN where NaN)."""
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a[name].to_numpy(), b[name].to_numpy()
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def assert_same_run(folder, ref):
    assert (folder / "int.extxyz").read_bytes() == (ref / "full.extxyz").read_bytes()
    assert_same_store(folder / "int.h5", ref / "full.h5")
    assert_same_table(read_thermo(folder / "int.thermo.parquet"), read_thermo(ref / "full.thermo.parquet"))
    with h5py.File(folder / "int.h5") as f, h5py.File(ref / "full.h5") as g:  # the same index, system by system
        for name in ("systems", "count"):
            assert np.array_equal(f[f"index/{name}"][()], g[f"index/{name}"][()])
    assert not parts_dir(folder / "int.h5").exists() and not (folder / "int.extxyz.partial").exists()


@pytest.mark.parametrize("mode", ["ctrl-c", "lost segment", "sigterm, merged"])
def test_interrupt_then_resume_gives_the_uninterrupted_store(tmp_path, monkeypatch, capsys, reference, mode):
    """Ctrl-C / SIGTERM at a refill point (in process); --resume: store, log and output bitwise the uninterrupted run's.

    ``lost segment``: the newest committed segment of store and log is deleted before
    resuming (as if the crash came before it was written): systems already in the partial
    output but without complete frames rerun, and their frames are rewritten once.
    ``merged``: ``batchmd traj merge`` before resuming (a merged store is continued too).
    """
    from batchmd.dynamics import sinks

    source = reference / "in.extxyz"
    out = tmp_path / "int.extxyz"
    write, calls = sinks.ExtXYZSink.write, []
    sig = signal.SIGTERM if mode.startswith("sigterm") else signal.SIGINT

    def interrupting(self, batch):
        write(self, batch)
        calls.append(1)
        if len(calls) == 4:
            if sig == signal.SIGTERM:
                os.kill(os.getpid(), signal.SIGTERM)  # the CLI's handler raises in this thread
            raise KeyboardInterrupt

    monkeypatch.setattr(sinks.ExtXYZSink, "write", interrupting)
    assert main(_md_args(source, out)) == 128 + sig
    monkeypatch.setattr(sinks.ExtXYZSink, "write", write)
    assert "--resume" in capsys.readouterr().err
    store = tmp_path / "int.h5"
    assert not store.exists() and segment_paths(store)
    done = list_systems(store)  # the interrupted store opens; systems in flight have their first frames
    assert 2 <= len(done) < 10
    if mode == "lost segment":
        segment_paths(store)[-1].unlink()
        segment_paths(tmp_path / "int.thermo.parquet")[-1].unlink()
    if mode.endswith("merged"):
        assert main(["traj", "merge", str(store)]) == 0 and store.is_file() and not parts_dir(store).exists()
        assert list_systems(store) == done
    assert main(_md_args(source, out)) == 2  # without --resume: refused, nothing deleted
    assert "exists: add --resume" in capsys.readouterr().err or (tmp_path / "int.extxyz.partial").exists()
    assert main(_md_args(source, out) + ["--resume"]) == 0, capsys.readouterr().err
    assert_same_run(tmp_path, reference)


def test_sigkill_mid_run_leaves_a_store_that_opens_and_resumes(tmp_path, capsys, reference):
    """A process killed while writing (commits after every flush) leaves readable segments; --resume finishes."""
    source = reference / "in.extxyz"
    out = tmp_path / "int.extxyz"
    args = _md_args(source, out, steps=40)
    env = {**os.environ, "BATCHMD_COMMIT_SECONDS": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    code = "import sys; from batchmd.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    store = tmp_path / "int.h5"
    deadline = time.time() + 300
    while len(segment_paths(store)) < 6 and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    for system in list_systems(store):  # every committed segment opens and reads
        read_trajectory(store, system)
    read_thermo(tmp_path / "int.thermo.parquet")
    assert main(args + ["--resume"]) == 0, capsys.readouterr().err
    assert_same_run(tmp_path, reference)


def test_existing_store_overwrite_and_interval_longer_than_the_run(tmp_path, capsys, reference):
    source = reference / "in.extxyz"
    out = tmp_path / "o.extxyz"
    (tmp_path / "o.h5").write_bytes(b"precious")
    args = _md_args(source, out, steps=10)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trajectory store" in err and "--overwrite" in err
    assert (tmp_path / "o.h5").read_bytes() == b"precious" and not out.exists()
    for option in ("--traj-every", "--log-every"):  # refused before the store is replaced
        assert main(args + ["--overwrite", option, "50"]) == 2
        err = capsys.readouterr().err
        assert f"{option} 50 is longer than every stage (at most 10 steps)" in err and err.count("\n") == 1
        assert (tmp_path / "o.h5").read_bytes() == b"precious" and not out.exists()
    assert main(args + ["--overwrite", "--traj-every", "10"]) == 0
    assert read_trajectory(tmp_path / "o.h5", 3, as_arrays=True)["step"].tolist() == [0, 10]
    assert main(args + ["--overwrite", "--traj-fields", "velocity"]) == 2
    assert "unknown trajectory field 'velocity'" in capsys.readouterr().err
    no_store = [a for a in args if a not in ("--trajectory", str(tmp_path / "o.h5"))]
    assert main(no_store + ["--overwrite"]) == 2
    assert "--traj-every and --traj-fields need --trajectory" in capsys.readouterr().err
    out.unlink()  # a complete store, its output gone: --resume must not take it for an interrupted run's
    for extra in ([], ["--resume"]):  # no --resume hint for a complete store; --resume refused
        assert main(args + extra + ["--traj-every", "10"]) == 2
        assert "o.h5 exists: it is a complete run's" in capsys.readouterr().err
    assert read_trajectory(tmp_path / "o.h5", 3, as_arrays=True)["step"].tolist() == [0, 10]


def test_full_disk_is_a_named_error_and_committed_frames_stay(tmp_path, monkeypatch, capsys, reference):
    from batchmd.trajectory import store as store_module

    atomic_write, calls = store_module.atomic_write, []

    def failing(final, write):
        calls.append(final)
        if len(calls) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        atomic_write(final, write)

    monkeypatch.setattr(store_module, "atomic_write", failing)
    monkeypatch.setenv("BATCHMD_COMMIT_SECONDS", "0")
    out = tmp_path / "int.extxyz"
    assert main(_md_args(reference / "in.extxyz", out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err and "the 2 segments" in err
    assert "--resume" in err and not out.exists()
    assert len(segment_paths(tmp_path / "int.h5")) == 2 and list_systems(tmp_path / "int.h5")
    monkeypatch.setattr(store_module, "atomic_write", atomic_write)
    assert main(_md_args(reference / "in.extxyz", out) + ["--resume"]) == 0, capsys.readouterr().err
    assert_same_run(tmp_path, reference)


def test_pipeline_toml_keys(tmp_path, capsys):
    source = tmp_path / "in.extxyz"
    ase.io.write(source, argon_frames(3))
    config = tmp_path / "run.toml"
    config.write_text(f'input = "{source.name}"\noutput = "out.extxyz"\ntrajectory = "run.h5"\ntraj_every = 4\n'
                      'traj_fields = ["velocities"]\nlog_every = 2\n'
                      '[[stages]]\nmethod = "fire"\nfmax = 0.05\nmax_steps = 30\n'
                      '[[stages]]\nmethod = "nvt"\ntemperature = 30.0\ndt = 2.0\nsteps = 8\n')
    assert main(["pipeline", str(config), "--device", "cpu", "-q"]) == 0, capsys.readouterr().err
    arrays = read_trajectory(tmp_path / "run.h5", 1, as_arrays=True)
    md = arrays["stage"] == 1
    assert arrays["stage_step"][md].tolist() == [0, 4, 8] and np.allclose(arrays["time_fs"][md], [0, 8, 16])
    assert np.isnan(arrays["time_fs"][~md]).all() and arrays["stage_step"][~md][0] == 0
    table = read_thermo(tmp_path / "out.thermo.parquet").to_pandas()
    assert set(table["stage"]) == {0, 1} and table[table.stage == 0]["temperature_K"].isna().all()
    config.write_text(config.read_text().replace("traj_every = 4", "traj_every = 0"))
    assert main(["pipeline", str(config), "--device", "cpu", "-q", "--overwrite"]) == 2
    assert "'traj_every' must be an integer >= 1" in capsys.readouterr().err


def test_mdanalysis_reads_the_h5md_export(tmp_path):
    """Where MDAnalysis is installed (not a dependency): its H5MD reader gives the stored frames back."""
    mda = pytest.importorskip("MDAnalysis")
    _run(tmp_path, "a.h5", max_atoms=1000, fields=("velocities", "forces"))
    path = export_frames(tmp_path / "a.h5", [2], tmp_path / "s.h5md")[0]
    ref = read_trajectory(tmp_path / "a.h5", 2, as_arrays=True)
    universe = mda.Universe(str(path))
    assert universe.atoms.n_atoms == 12 and len(universe.trajectory) == 5
    for ts in universe.trajectory:
        assert np.allclose(ts.positions, ref["positions"][ts.frame], atol=1e-5)
        assert np.allclose(ts.velocities, ref["velocities"][ts.frame] * 1000.0, rtol=1e-5, atol=1e-6)  # Å/ps
        assert ts.time == pytest.approx(ref["time_fs"][ts.frame] / 1000.0)  # ps


def test_python_resume_continues_a_merged_store(tmp_path):
    from batchmd.ase import run_frames

    frames = argon_frames()
    for part, resume in ((range(0, 4), False), (range(4, 8), True)):
        nvt = _nvt(10)
        with TrajectoryWriter(tmp_path / "s.h5", every=5, stages=[nvt], resume=resume) as traj:
            run_frames([frames[i] for i in part], [nvt], hooks=[traj], input_indices=list(part))
    assert list_systems(tmp_path / "s.h5") == list(range(8)) and not parts_dir(tmp_path / "s.h5").exists()
    assert read_trajectory(tmp_path / "s.h5", 6, as_arrays=True)["step"].tolist() == [0, 5, 10]


def test_full_disk_while_merging_then_resume_merges(tmp_path, monkeypatch, capsys, reference):
    from batchmd.trajectory import store as store_module

    def failing(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    finalize = store_module.finalize_store
    monkeypatch.setattr(store_module, "finalize_store", failing)
    out = tmp_path / "int.extxyz"
    assert main(_md_args(reference / "in.extxyz", out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "merging its segments failed" in err and "--resume" in err
    assert segment_paths(tmp_path / "int.h5") and (tmp_path / "int.extxyz.partial").exists()
    monkeypatch.setattr(store_module, "finalize_store", finalize)
    assert main(_md_args(reference / "in.extxyz", out) + ["--resume"]) == 0, capsys.readouterr().err
    assert_same_run(tmp_path, reference)
