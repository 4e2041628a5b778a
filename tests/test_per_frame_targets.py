"""Per-structure temperature and pressure (issue 20, section 4), relax's cell options, empty inputs,
and one stage vocabulary for result frames, RunStats and the CLI.

A frame's own target (``run_frames(temperature=..., pressure=...)`` or ``atoms.info["temperature_K"]``
/ ``["pressure_GPa"]``) is a property of the sample: it travels with the system (system fields
``target_temperature`` / ``target_pressure``) through in-place refills, never with the slot.
"""

from __future__ import annotations

import ase.io
import ase.units
import numpy as np
import pytest
import torch
from ase.build import bulk

from batchmd.ase import frame_targets, relax, run_frames
from batchmd.dynamics import FIRE, NVE, ConvergenceHook, FrechetCellFilter, IsotropicMTKNPT, NVTLangevin
from batchmd.models.lj import LennardJones

GPa = ase.units.GPa


def lj(stress=False):
    return LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, compute_stress=stress)


def argon32(a=5.3, rattle=0.0, seed=0):
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat((2, 2, 2))
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


# ----------------------------------------------------------------------------- temperature
def test_langevin_temperature_per_frame_follows_the_frame_into_a_refilled_slot():
    """Three 32-atom frames, two slots: frame 2 (80 K) enters by in-place refill into a slot whose
    first occupant ran at 20 K; each frame's mean kinetic temperature is its own target within 10 %
    (400 Langevin steps of 5 fs, friction 0.05/fs: ~100 independent samples of a quantity with
    relative spread sqrt(2/(3N)) = 14 %, so the standard error is ~1.5 %)."""
    frames = [argon32() for _ in range(3)]
    stage = NVTLangevin(lj(), dt=5.0, temperature=40.0, friction=0.05, n_steps=400, random_seed=1)
    result = run_frames(frames, [stage], temperature=[20.0, None, 80.0], max_atoms=64)
    assert result.stats.refills_in_place == 1  # frame 2 came in place of frame 0 or 1
    targets = [20.0, 40.0, 80.0]
    for atoms, target in zip(result.frames, targets):
        assert atoms.info["stage0_target_temperature_K"] == target
        assert atoms.info["stage0_temperature"] == pytest.approx(target, rel=0.10)
        assert "temperature_K" not in atoms.info  # the input had none: nothing to carry into a re-run


def test_info_key_and_sequence_give_the_same_run_and_tensor_sequences_are_per_frame():
    frames = [argon32(rattle=0.05, seed=i) for i in range(3)]
    stage = lambda: NVTLangevin(lj(), dt=5.0, temperature=40.0, friction=0.02, n_steps=20, random_seed=3)  # noqa: E731
    by_list = run_frames(frames, [stage()], temperature=[25.0, 60.0, 90.0], max_atoms=64).frames
    by_tensor = run_frames(frames, [stage()], temperature=torch.tensor([25.0, 60.0, 90.0]), max_atoms=64).frames
    tagged = [a.copy() for a in frames]
    for atoms, t in zip(tagged, (25.0, 60.0, 90.0)):
        atoms.info["temperature_K"] = t
    by_info = run_frames(tagged, [stage()], max_atoms=64).frames
    for a, b, c in zip(by_list, by_tensor, by_info):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.positions, c.positions)
        assert c.info["temperature_K"] == a.info["stage0_target_temperature_K"]  # the input's key is kept
    # the stage's scalar is a different run
    plain = run_frames(frames, [stage()], max_atoms=64).frames
    assert not np.array_equal(plain[2].positions, by_list[2].positions)


def test_nve_draws_at_each_frames_own_temperature():
    frames = [argon32() for _ in range(2)]
    out = run_frames(frames, [NVE(lj(), dt=1.0, n_steps=1, random_seed=0)], temperature=[None, 60.0]).frames
    assert np.abs(out[0].get_momenta()).max() < 1e-3  # no temperature: starts at rest
    assert out[1].get_temperature() == pytest.approx(60.0, rel=0.5)
    assert out[1].info["stage0_target_temperature_K"] == 60.0


# ----------------------------------------------------------------------------- pressure
@pytest.mark.parametrize("source", ["sequence", "info"])
def test_mtk_pressure_per_frame_is_step_for_step_the_scalar_run(source):
    """Per-frame pressures in one inflight run (one slot: frames 1 and 2 arrive by refill) equal,
    to 1e-10 Å, runs of each frame alone with the stage's scalar pressure."""
    frames = [argon32(a=5.25 + 0.05 * i, rattle=0.02, seed=i) for i in range(3)]
    gpa = [0.2, -0.1, 0.5]
    make = lambda p: IsotropicMTKNPT(lj(True), dt=4.0, temperature=40.0, pressure=p, pdamp=400.0,  # noqa: E731
                                     n_steps=25, random_seed=7)
    if source == "sequence":
        together = run_frames(frames, [make(0.0)], pressure=[p * GPa for p in gpa], max_atoms=32)
    else:
        tagged = [a.copy() for a in frames]
        for atoms, p in zip(tagged, gpa):
            atoms.info["pressure_GPa"] = p
        together = run_frames(tagged, [make(0.0)], max_atoms=32)
    assert together.stats.refills_in_place == 2
    for i, p in enumerate(gpa):
        alone = run_frames([frames[i]], [make(p * GPa)], input_indices=[i]).frames[0]
        got = together.frames[i]
        np.testing.assert_allclose(got.positions, alone.positions, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.cell.array, alone.cell.array, rtol=0, atol=1e-10)
        assert got.info["stage0_target_pressure_GPa"] == pytest.approx(p, rel=1e-12)
    # and the pressure mattered: the 0.5 GPa frame shrank more than the -0.1 GPa one
    v = [a.get_volume() / f.get_volume() for a, f in zip(together.frames, frames)]
    assert v[2] < v[0] < v[1]


# ----------------------------------------------------------------------------- bad values
def test_bad_per_frame_values_are_one_line_errors_naming_the_frame():
    frames = [argon32(), argon32()]
    stage = NVTLangevin(lj(), dt=2.0, temperature=40.0, n_steps=2)
    bad = frames[1].copy()
    bad.info["temperature_K"] = "300"
    with pytest.raises(ValueError, match=r"frame 1 has info\['temperature_K'\] = '300', not a finite number > 0 \(K\)"):
        run_frames([frames[0], bad], [stage])
    bad.info["temperature_K"] = float("nan")
    with pytest.raises(ValueError, match="frame 1 has info"):
        run_frames([frames[0], bad], [stage])
    bad = frames[0].copy()
    bad.info["pressure_GPa"] = "1 GPa"
    with pytest.raises(ValueError, match=r"frame 0 has info\['pressure_GPa'\]"):
        run_frames([bad, frames[1]], [stage])
    with pytest.raises(ValueError, match="temperature has 1 values for 2 frames"):
        run_frames(frames, [stage], temperature=[300.0])
    with pytest.raises(ValueError, match=r"temperature of frame 1 is '300', not a number \(K\)"):
        run_frames(frames, [stage], temperature=[300.0, "300"])
    with pytest.raises(ValueError, match="temperature of frame 0 is -5.0"):
        run_frames(frames, [stage], temperature=[-5.0, 300.0])
    with pytest.raises(ValueError, match="pressure of frame 1 is inf"):
        run_frames(frames, [stage], pressure=[0.0, float("inf")])
    with pytest.raises(ValueError, match="temperature must be a sequence"):
        run_frames(frames, [stage], temperature="300")
    slot_indexed = NVTLangevin(lj(), dt=2.0, temperature=torch.tensor([20.0, 80.0]), n_steps=2)
    with pytest.raises(ValueError, match="indexed by live-batch slot, not by frame"):
        run_frames(frames, [slot_indexed])
    t, p = frame_targets(frames, temperature=[None, 50.0])
    assert np.isnan(t[0]) and t[1] == 50.0 and np.isnan(p).all()


# ----------------------------------------------------------------------------- CLI
def test_cli_md_reads_info_keys_and_records_the_targets_used(tmp_path, capsys):
    from batchmd.cli import main

    frames = [argon32() for _ in range(3)]
    frames[0].info["temperature_K"] = 20.0
    frames[2].info["temperature_K"] = 80.0
    ase.io.write(tmp_path / "in.extxyz", frames)
    out = tmp_path / "out.extxyz"
    rc = main(["md", str(tmp_path / "in.extxyz"), "-o", str(out), "--temperature", "40", "--steps", "300", "--dt", "5",
               "--friction", "0.05", "--max-atoms", "64", "-q"])
    assert rc == 0
    got = ase.io.read(out, ":")
    for atoms, target in zip(got, (20.0, 40.0, 80.0)):
        assert atoms.info["stage0_target_temperature_K"] == target
        assert atoms.info["stage0_temperature"] == pytest.approx(target, rel=0.12)
        assert atoms.info["stage0_method"] == "nvt"
    summary = (tmp_path / "out.summary.csv").read_text().splitlines()
    assert "stage0_target_temperature_K" in summary[0]

    bad = [argon32(), argon32()]
    bad[1].info["temperature_K"] = "hot"
    ase.io.write(tmp_path / "bad.extxyz", bad)
    rc = main(["md", str(tmp_path / "bad.extxyz"), "-o", str(tmp_path / "b.extxyz"), "--temperature", "40",
               "--steps", "2", "--dt", "2", "-q"])
    assert rc == 2
    assert "frame 1 has info['temperature_K'] = 'hot', not a finite number > 0 (K)" in capsys.readouterr().err
    assert not (tmp_path / "b.extxyz").exists()


def test_cli_md_without_temperature_takes_every_frames_own(tmp_path, capsys):
    """No --temperature: each frame's info['temperature_K'] is its target; a frame without one is exit 2, unwritten."""
    from batchmd.cli import main

    frames = [argon32() for _ in range(2)]
    frames[0].info["temperature_K"] = 20.0
    frames[1].info["temperature_K"] = 60.0
    ase.io.write(tmp_path / "in.extxyz", frames)
    out = tmp_path / "out.extxyz"
    assert main(["md", str(tmp_path / "in.extxyz"), "-o", str(out), "--steps", "5", "--dt", "2", "-q"]) == 0
    got = ase.io.read(out, ":")
    assert [a.info["stage0_target_temperature_K"] for a in got] == [20.0, 60.0]
    del frames[1].info["temperature_K"]
    ase.io.write(tmp_path / "half.extxyz", frames)
    rc = main(["md", str(tmp_path / "half.extxyz"), "-o", str(tmp_path / "h.extxyz"), "--steps", "5", "--dt", "2",
               "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs --temperature (K), or info['temperature_K'] on every frame" in err and "frame 1" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "h.extxyz").exists()


# ----------------------------------------------------------------------------- relax(cell=...)
def test_relax_cell_options_are_the_clis(tmp_path):
    from batchmd.cli import main
    from batchmd.cli.models import build_model
    from batchmd.cli.pipeline import CELL_MODES as CLI_CELL_MODES
    from batchmd.dynamics.cell_filter import CELL_MODES

    assert CLI_CELL_MODES == CELL_MODES
    frames = [argon32(a=5.2 + 0.1 * i, rattle=0.05, seed=i) for i in range(2)]
    ase.io.write(tmp_path / "in.extxyz", frames)
    out = tmp_path / "out.extxyz"
    assert main(["relax", str(tmp_path / "in.extxyz"), "-o", str(out), "--cell", "full", "--pressure", "0.1",
                 "--fmax", "0.005", "--max-steps", "300", "-q"]) == 0
    cli = ase.io.read(out, ":")
    model = build_model("lj", frames, device="cpu", dtype=torch.float64)
    py = relax(frames, model, fmax=0.005, max_steps=300, cell="full", pressure=0.1 * GPa)
    for a, b in zip(py, cli):
        assert a.info["converged"] and a.info["stage0_method"] == b.info["stage0_method"] == "fire"
        np.testing.assert_allclose(a.cell.array, b.cell.array, rtol=0, atol=1e-9)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-9)
        assert a.info["stage0_target_pressure_GPa"] == pytest.approx(0.1, rel=1e-12)
        assert a.get_volume() != pytest.approx(frames[a.info["input_index"]].get_volume(), rel=1e-3)
    # per-frame pressures (sequence, eV/Å^3) equal scalar relaxations of each frame
    per_frame = relax(frames, model, fmax=0.005, max_steps=300, cell="hydrostatic", pressure=[0.0, 0.3 * GPa],
                      optimizer="lbfgs")
    for i, p in enumerate((0.0, 0.3 * GPa)):
        alone = relax([frames[i]], model, fmax=0.005, max_steps=300, cell="hydrostatic", pressure=p,
                      optimizer="lbfgs")[0]
        np.testing.assert_allclose(per_frame[i].cell.array, alone.cell.array, rtol=0, atol=1e-10)
        assert per_frame[i].info["stage0_method"] == "lbfgs"
    fixed = relax(frames[:1], model, fmax=0.01)[0]
    np.testing.assert_array_equal(fixed.cell.array, frames[0].cell.array)
    with pytest.raises(ValueError, match="pressure does nothing with cell='fixed'"):
        relax(frames, model, pressure=0.1 * GPa)
    with pytest.raises(ValueError, match="cell must be one of fixed, full, hydrostatic, volume"):
        relax(frames, model, cell="Full")
    with pytest.raises(ValueError, match="optimizer must be 'fire' or 'lbfgs'"):
        relax(frames, model, optimizer="bfgs")
    with pytest.raises(ValueError, match="needs a model that computes the stress"):
        relax(frames, lj(stress=False), cell="full")


# ----------------------------------------------------------------------------- empty inputs
def test_empty_inputs_give_empty_results():
    assert relax([], lj()) == []
    assert relax([], lj(True), cell="full") == []
    result = run_frames([], [NVTLangevin(lj(), dt=2.0, temperature=40.0, n_steps=2)])
    assert result.frames == [] and result.stats.systems_graduated == 0 and result.stats.steps == 0


# ----------------------------------------------------------------------------- one vocabulary
def test_stage_methods_are_the_clis_in_frames_stats_and_files():
    from batchmd.cli.pipeline import STAGE_KEYS, build_stage
    from batchmd.dynamics.base import stage_method

    model = lj(True)
    examples = {"fire": {}, "lbfgs": {}, "nvt": {"temperature": 40.0, "dt": 2.0, "steps": 2},
                "nve": {"dt": 2.0, "steps": 2}, "nvt-nose-hoover": {"temperature": 40.0, "dt": 2.0, "steps": 2},
                "npt": {"temperature": 40.0, "pressure": 0.0, "dt": 2.0, "steps": 2}}
    assert set(examples) == set(STAGE_KEYS)
    for method, keys in examples.items():
        assert stage_method(build_stage({"method": method, **keys}, model)) == method
    full = build_stage({"method": "npt", "temperature": 40.0, "pressure": 0.0, "dt": 2.0, "steps": 2,
                        "barostat": "full"}, model)
    assert stage_method(full) == "npt"
    stages = [FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=50),
              NVTLangevin(model, dt=2.0, temperature=40.0, n_steps=3, random_seed=0)]
    result = run_frames([argon32(rattle=0.05)], stages)
    info = result.frames[0].info
    assert (info["stage0_method"], info["stage1_method"]) == ("fire", "nvt")
    assert "stage0_target_temperature_K" not in info and info["stage1_target_temperature_K"] == 40.0
    assert set(result.stats.stage_counts) == {"0:fire", "1:nvt"}
    # a stage the system never entered records no target
    fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-6), n_steps=2)
    short = run_frames([argon32(rattle=0.3)], [fire, NVTLangevin(model, dt=2.0, temperature=40.0, n_steps=3)])
    info = short.frames[0].info
    assert info["stage1_status"] == "skipped" and "stage1_target_temperature_K" not in info
    assert info["stage1_method"] == "nvt"
    # a cell filter's pressure is recorded for the optimizer stage
    cell = run_frames([argon32(rattle=0.05)], [FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05),
                                                    n_steps=5, cell_filter=FrechetCellFilter(0.2 * GPa))])
    assert cell.frames[0].info["stage0_target_pressure_GPa"] == pytest.approx(0.2, rel=1e-12)


def test_every_thermostat_barostat_and_filter_reads_the_systems_own_targets():
    """init_state of each stage: the system's target where it has one, the stage's value elsewhere."""
    from batchmd.data import Batch
    from batchmd.dynamics import MTKNPT, CRescaleNPT, NoseHooverChainNVT

    frames = [argon32(), argon32()]
    frames[1].info.update({"temperature_K": 123.0, "pressure_GPa": 0.7})
    batch = Batch.from_ase(frames)
    assert batch["target_temperature"].isnan().tolist() == [True, False]
    everyone = torch.ones(2, dtype=torch.bool)
    model = lj(True)
    cases = [
        (NVTLangevin(model, dt=1.0, temperature=40.0), {"nvt_temperature": (40.0, 123.0)}),
        (NoseHooverChainNVT(model, dt=1.0, temperature=40.0), {"nhc_temperature": (40.0, 123.0)}),
        (IsotropicMTKNPT(model, dt=1.0, temperature=40.0, pressure=0.1 * GPa),
         {"npt_temperature": (40.0, 123.0), "npt_pressure": (0.1 * GPa, 0.7 * GPa)}),
        (MTKNPT(model, dt=1.0, temperature=40.0, pressure=0.1 * GPa),
         {"npt_temperature": (40.0, 123.0), "npt_pressure": (0.1 * GPa, 0.7 * GPa)}),
        (CRescaleNPT(model, dt=1.0, temperature=40.0, pressure=0.1 * GPa, compressibility=0.3 / GPa),
         {"nhc_temperature": (40.0, 123.0), "crs_pressure": (0.1 * GPa, 0.7 * GPa)}),
        (NVE(model, dt=1.0, temperature=40.0), {"nve_temperature": (40.0, 123.0)}),
        (NVE(model, dt=1.0), {"nve_temperature": (0.0, 123.0)}),
    ]
    for stage, fields in cases:
        stage.init_state(batch, everyone)
        for name, want in fields.items():
            assert batch[name].tolist() == pytest.approx(list(want), rel=1e-15), (type(stage).__name__, name)
    FrechetCellFilter(scalar_pressure=0.1 * GPa).init_state(batch, everyone)
    assert batch["filter_pressure"].tolist() == pytest.approx([0.1 * GPa, 0.7 * GPa], rel=1e-15)


def test_stage_parameters_that_are_not_numbers_are_one_line_errors():
    for make in (lambda: NVTLangevin(lj(), temperature="300"), lambda: NVTLangevin(lj(), dt=float("nan")),
                 lambda: NVTLangevin(lj(), friction=-1.0), lambda: NVE(lj(), temperature="300")):
        with pytest.raises(ValueError, match=r"(NVTLangevin|NVE): \w+ must be a finite number"):
            make()
    assert NVTLangevin(lj(), temperature=np.float32(40.0), friction=0).temperature == 40.0


def test_campaign_shard_rows_carry_the_structures_own_targets(tmp_path):
    pytest.importorskip("pyarrow")
    from batchmd.campaign.shards import DecodedShard, atoms_to_row, rows_to_table, validate_atoms

    frames = [argon32(), argon32()]
    frames[1].info.update({"temperature_K": 90.0, "pressure_GPa": -0.2})
    shard = DecodedShard(rows_to_table([atoms_to_row(a, index=i, source="in.extxyz", frame=i)
                                        for i, a in enumerate(frames)]))
    plain, own = shard.atomic_data(0), shard.atomic_data(1)
    assert not plain.has_field("target_temperature")
    assert float(own["target_temperature"]) == 90.0
    assert float(own["target_pressure"]) == pytest.approx(-0.2 * GPa, rel=1e-15)
    bad = argon32()
    bad.info["temperature_K"] = "warm"
    assert "temperature_K" in validate_atoms(bad)
