"""What users met on a fresh clone (issue 20, section 4): each input is one example of a kind.

Disordered CIFs, unit slips, files that are not models, ``--resume`` with nothing to resume,
deterministic runs, ``fmax`` through a cell filter, volume/density/pressure columns,
``pipeline -o``, a run where no frame moves, ``--ignore-constraints`` and ``--velocities``.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import ase.io
import ase.units
import numpy as np
import pytest
from ase.build import bulk
from ase.constraints import FixBondLength

from batchmd.cli import main
from batchmd.data.validate import atoms_problem, disorder_problem

#: LiNi0.5Co0.5O2 (R-3m): Ni and Co share the 3a site. ASE reads it as Li3Co3O6 (Ni dropped).
DISORDERED_CIF = """data_LiNi0.5Co0.5O2
_cell_length_a 2.84
_cell_length_b 2.84
_cell_length_c 14.1
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 120
_symmetry_space_group_name_H-M 'R -3 m'
_symmetry_Int_Tables_number 166
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Li1 Li 0 0 0.5 1.0
Ni1 Ni 0 0 0 0.5
Co1 Co 0 0 0 0.5
O1 O 0 0 0.25 1.0
"""


def _argon(n=2, seed=0, a=5.3):
    frames = []
    for i in range(n):
        atoms = bulk("Ar", "fcc", a=a, cubic=True)
        atoms.rattle(0.05, seed=seed + i)
        frames.append(atoms)
    return frames


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("batchmd: error: "), err
    return err


# ----------------------------------------------------------------------- 1. disordered structures
def test_disordered_cif_is_refused_by_name(tmp_path, capsys):
    cif = tmp_path / "lnco.cif"
    cif.write_text(DISORDERED_CIF)
    atoms = ase.io.read(cif)
    assert atoms.get_chemical_formula() == "Co3Li3O6"  # what ASE gives: Ni silently dropped
    problem = atoms_problem(atoms)
    assert problem.startswith("is disordered: CIF site 1 holds Ni 0.5 + Co 0.5 but was read as Co on atoms 3, 4, 5")
    out = tmp_path / "out.extxyz"
    assert main(["relax", str(cif), "-o", str(out), "--model", "emt"]) == 2
    assert f"{cif}: frame 0 is disordered: CIF site 1 holds Ni 0.5 + Co 0.5" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lnco.cif"]
    # The same structure through extxyz (ASE keeps the occupancies there) and run_frames.
    xyz = tmp_path / "lnco.extxyz"
    ase.io.write(xyz, atoms)
    assert disorder_problem(ase.io.read(xyz)) == problem
    from batchmd.ase import run_frames
    from batchmd.dynamics import FIRE
    from batchmd.models import LennardJones

    with pytest.raises(ValueError, match="input: frame 1 is disordered: CIF site 1"):
        run_frames([_argon(1)[0], atoms], [FIRE(LennardJones(), n_steps=1)])


def test_ordered_and_vacancy_occupancies():
    ordered = bulk("Cu", "fcc", a=3.61)
    ordered.info["occupancy"] = {"0": {"Cu": 0.999}}
    ordered.arrays["spacegroup_kinds"] = np.zeros(1, dtype=int)
    assert atoms_problem(ordered) is None  # within OCCUPANCY_TOLERANCE of a full site
    ordered.info["occupancy"] = {"0": {"Cu": 0.75}}  # a vacancy site: Cu at full occupancy would be wrong
    assert disorder_problem(ordered).startswith("is disordered: CIF site 0 holds Cu 0.75 but was read as Cu on atom 0")


def test_shard_rejects_a_disordered_frame(tmp_path):
    from batchmd.campaign.shards import validate_atoms

    cif = tmp_path / "lnco.cif"
    cif.write_text(DISORDERED_CIF)
    problem = validate_atoms(ase.io.read(cif))
    assert "disordered" in str(problem)


# ----------------------------------------------------------------------- 2. unit slips
@pytest.mark.parametrize("args, text", [
    (["--dt", "0.002"], "batchmd: warning: --dt 0.002 fs is below the usual MD range 0.05..20 fs (the time step is "
                        "in fs; 0.002 ps would be 2 fs)"),
    (["--dt", "50"], "batchmd: warning: --dt 50 fs is above the usual MD range 0.05..20 fs"),
    (["--dt", "1", "--temperature", "2e5"], "batchmd: warning: --temperature 200000 K is above 100000 K"),
])
def test_unit_slips_warn_in_one_line_with_the_unit(tmp_path, capsys, args, text):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, _argon(1))
    argv = ["md", str(path), "-o", str(tmp_path / "out.extxyz"), "--steps", "1", "--temperature", "40", *args]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert text in err and err.count(text.split(":")[2]) == 1  # once (not again from the stage constructor)


@pytest.mark.parametrize("argv, text", [
    (["md", "--ensemble", "npt", "--temperature", "40", "--dt", "2", "--steps", "1", "--pressure", "1000"],
     "--pressure 1000 GPa is beyond 500 GPa in magnitude; the pressure is in GPa (1000 bar would be 0.1 GPa)"),
    (["relax", "--cell", "full", "--pressure", "-600"], "--pressure -600 GPa is beyond 500 GPa in magnitude"),
    (["md", "--temperature", "-5", "--dt", "1", "--steps", "1"], "--temperature must be >= 0 K"),
])
def test_impossible_values_are_refused(tmp_path, capsys, argv, text):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, _argon(1))
    assert main([argv[0], str(path), "-o", str(tmp_path / "out.extxyz"), *argv[1:]]) == 2
    assert text in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.extxyz"]


def test_pipeline_file_names_the_stage_key(tmp_path, capsys):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, _argon(1))
    config = tmp_path / "run.toml"
    config.write_text('input = "in.extxyz"\noutput = "out.extxyz"\n[[stages]]\nmethod = "nvt"\ntemperature = 40.0\n'
                      'dt = 0.002\nsteps = 1\n')
    assert main(["pipeline", str(config), "-q"]) == 0
    config.write_text('input = "in.extxyz"\noutput = "out2.extxyz"\n[[stages]]\nmethod = "fire"\ncell = "full"\n'
                      'pressure = 1000.0\n')
    assert main(["pipeline", str(config)]) == 2
    assert "stages[0] (fire): pressure = 1000 GPa is beyond 500 GPa" in _error_line(capsys)


def test_python_stages_warn_and_refuse():
    from batchmd.dynamics import NVE, IsotropicMTKNPT, NoseHooverChainNVT, NVTLangevin
    from batchmd.dynamics.cell_filter import FrechetCellFilter
    from batchmd.dynamics.ranges import UnusualValueWarning
    from batchmd.models import LennardJones

    model = LennardJones(compute_stress=True)
    with pytest.warns(UnusualValueWarning, match=r"NVTLangevin: dt 0.002 fs is below the usual MD range"):
        NVTLangevin(model, dt=0.002, temperature=300.0)
    with pytest.warns(UnusualValueWarning, match=r"NVE: dt 50 fs is above"):
        NVE(model, dt=50.0)
    with pytest.warns(UnusualValueWarning, match=r"temperature 200000 K is above 100000 K"):
        NoseHooverChainNVT(model, dt=2.0, temperature=2e5)
    with pytest.warns(UnusualValueWarning, match=r"pressure 1 eV/Å\^3 \(= 160.2 GPa\) is above 100 GPa"):
        IsotropicMTKNPT(model, dt=2.0, temperature=300.0, pressure=1.0)  # GPa meant, eV/Å^3 given
    with pytest.raises(ValueError, match=r"pressure 6.24151 eV/Å\^3 \(= 1000 GPa\) is beyond 500 GPa"):
        IsotropicMTKNPT(model, dt=2.0, temperature=300.0, pressure=1000 * ase.units.GPa)
    with pytest.raises(ValueError, match="temperature -5 K is below 0 K"):
        NVTLangevin(model, dt=1.0, temperature=-5.0)
    with pytest.raises(ValueError, match="beyond 500 GPa"):
        FrechetCellFilter(scalar_pressure=600 * ase.units.GPa)
    import torch

    with pytest.warns(UnusualValueWarning, match=r"NVTLangevin: dt 0.01 fs"):  # per-system tensors, value by value
        NVTLangevin(model, dt=torch.tensor([1.0, 0.01]), temperature=300.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NVTLangevin(model, dt=2.0, temperature=300.0)
        IsotropicMTKNPT(model, dt=2.0, temperature=300.0, pressure=1.0 * ase.units.GPa)


# ----------------------------------------------------------------------- 3. files that are not models
def test_model_files_of_the_wrong_kind_are_one_line(tmp_path, capsys):
    pytest.importorskip("mace")
    pytest.importorskip("sevenn")
    path = tmp_path / "in.extxyz"
    ase.io.write(path, [bulk("Cu", "fcc", a=3.61)])
    cif = tmp_path / "structure.cif"
    cif.write_text(DISORDERED_CIF)
    out = tmp_path / "out.extxyz"
    assert main(["relax", str(path), "-o", str(out), "--model", f"mace:{cif}", "--device", "cpu"]) == 2
    assert f"'{cif}' is not a MACE model file (torch.load failed: UnpicklingError" in _error_line(capsys)
    assert main(["relax", str(path), "-o", str(out), "--model", f"sevennet:{cif}", "--device", "cpu"]) == 2
    assert f"'{cif}' is not a SevenNet checkpoint (sevenn could not load it:" in _error_line(capsys)
    import torch

    other = tmp_path / "other.model"
    torch.save({"weights": torch.zeros(2)}, other)  # a torch file of another kind
    assert main(["relax", str(path), "-o", str(out), "--model", f"sevennet:{other}", "--device", "cpu"]) == 2
    assert f"'{other}' is not a SevenNet checkpoint" in _error_line(capsys)
    assert main(["relax", str(path), "-o", str(out), "--model", f"mace:{other}", "--device", "cpu"]) == 2
    assert f"'{other}' does not hold a MACE model (got dict)" in _error_line(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------- 4. --resume with nothing to resume
def test_resume_of_a_complete_output_does_not_recompute(tmp_path, capsys):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, _argon(2))
    out = tmp_path / "out.extxyz"
    argv = ["relax", str(path), "-o", str(out), "--fmax", "0.01"]
    assert main(argv) == 0
    rows = _rows(tmp_path / "out.summary.csv")
    assert len({row["run_fingerprint"] for row in rows}) == 1 and len(rows[0]["run_fingerprint"]) == 16
    before = out.stat().st_mtime_ns, out.read_bytes()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"batchmd: --resume: {out} is already complete from this run and there is no {out}.partial: nothing to "
        "resume, nothing recomputed")
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before
    # Another run's output is not taken for this one, and not overwritten.
    assert main(["relax", str(path), "-o", str(out), "--fmax", "0.02", "--resume"]) == 2
    assert "--resume: nothing to resume (no" in _error_line(capsys)
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before
    # No output and no partial: said, then every frame runs.
    fresh = tmp_path / "fresh.extxyz"
    assert main(["relax", str(path), "-o", str(fresh), "--resume"]) == 0
    assert "batchmd: warning: --resume: nothing to resume (no" in capsys.readouterr().err and fresh.exists()


# ----------------------------------------------------------------------- 5. deterministic runs
def test_deterministic_setting_and_two_runs_bitwise(tmp_path):
    import torch

    from batchmd.runtime import set_deterministic

    threads, flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        path = tmp_path / "in.extxyz"
        frames = _argon(3)
        for atoms in frames:
            atoms.set_momenta(np.zeros((len(atoms), 3)))
        ase.io.write(path, frames)
        outputs = []
        for k in range(2):
            out = tmp_path / f"out{k}.extxyz"
            assert main(["md", str(path), "-o", str(out), "--temperature", "40", "--dt", "2", "--steps", "20",
                         "--deterministic", "-q", "--velocities", "maxwell-boltzmann"]) == 0
            outputs.append(ase.io.read(out, ":"))
            assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        for a, b in zip(*outputs):
            assert np.array_equal(a.positions, b.positions) and np.array_equal(a.get_momenta(), b.get_momenta())
            assert a.get_potential_energy() == b.get_potential_energy()
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            set_deterministic(0)
    finally:
        torch.use_deterministic_algorithms(flag)
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_deterministic_sevennet_float32_bitwise(tmp_path):
    """Two float32 SevenNet-0 relaxations with --deterministic give the same bits (2 threads: not always)."""
    pytest.importorskip("sevenn")
    import torch

    threads, flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        path = tmp_path / "in.extxyz"
        frames = [bulk("Cu", "fcc", a=3.61, cubic=True), bulk("Si", "diamond", a=5.43, cubic=True)]
        for i, atoms in enumerate(frames):
            atoms.rattle(0.05, seed=i)
        ase.io.write(path, frames)
        outputs = []
        for k in range(2):
            out = tmp_path / f"out{k}.extxyz"
            assert main(["relax", str(path), "-o", str(out), "--model", "sevennet-0", "--device", "cpu",
                         "--max-steps", "20", "--fmax", "0.001", "--deterministic", "-q"]) in (0, 3)
            outputs.append(ase.io.read(out, ":"))
        for a, b in zip(*outputs):
            assert np.array_equal(a.positions, b.positions)
    finally:
        torch.use_deterministic_algorithms(flag)
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------- 6, 7. fmax and summary columns
def test_fmax_both_ways_and_volume_density_pressure_columns(tmp_path):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, _argon(2, a=5.6))
    out = tmp_path / "out.extxyz"
    assert main(["relax", str(path), "-o", str(out), "--cell", "full", "--pressure", "0.1", "--fmax", "0.001",
                 "--max-steps", "1000", "-q"]) in (0, 3)
    result = ase.io.read(out, ":")
    rows = _rows(tmp_path / "out.summary.csv")
    for atoms, row in zip(result, rows):
        assert atoms.info["status"] == "converged"
        forces = np.linalg.norm(atoms.get_forces(), axis=1).max()
        assert atoms.info["fmax_atoms"] == pytest.approx(forces, rel=1e-6)
        assert atoms.info["fmax"] <= 0.001  # through the filter: cell rows included
        assert float(row["fmax_atoms"]) == pytest.approx(forces, rel=1e-6)
        volume = atoms.get_volume()
        assert float(row["volume_A3"]) == pytest.approx(volume, rel=1e-9)
        density = atoms.get_masses().sum() * ase.units._amu * 1e3 / (volume * 1e-24)  # g / cm^3
        assert float(row["density_g_cm3"]) == pytest.approx(density, rel=1e-6)
        pressure = -np.trace(atoms.get_stress(voigt=False)) / 3 / ase.units.GPa
        assert float(row["pressure_GPa"]) == pytest.approx(pressure, rel=1e-6)
        assert float(row["pressure_GPa"]) == pytest.approx(0.1, abs=0.01)  # relaxed at 0.1 GPa


def test_summary_pressure_includes_kinetic_term_in_md(tmp_path):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, _argon(1))
    out = tmp_path / "out.extxyz"
    assert main(["md", str(path), "-o", str(out), "--ensemble", "npt", "--temperature", "40", "--pressure", "0.1",
                 "--dt", "2", "--steps", "10", "-q"]) == 0
    atoms = ase.io.read(out)
    row = _rows(tmp_path / "out.summary.csv")[0]
    virial = -np.trace(atoms.get_stress(voigt=False)) / 3 / ase.units.GPa
    full = -np.trace(atoms.get_stress(voigt=False, include_ideal_gas=True)) / 3 / ase.units.GPa
    assert full > virial and float(row["pressure_GPa"]) == pytest.approx(full, rel=1e-6)
    no_molecule = tmp_path / "nvt.extxyz"
    from ase import Atoms

    ase.io.write(path, [Atoms("Ar2", positions=[[0, 0, 0], [3.9, 0, 0]])])
    assert main(["md", str(path), "-o", str(no_molecule), "--temperature", "40", "--dt", "2", "--steps", "2",
                 "-q"]) == 0
    row = _rows(tmp_path / "nvt.summary.csv")[0]
    assert row["volume_A3"] == row["density_g_cm3"] == row["pressure_GPa"] == ""


# ----------------------------------------------------------------------- 8. pipeline -o
def test_pipeline_output_from_the_command_line(tmp_path, capsys):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, _argon(1))
    config = tmp_path / "run.toml"
    config.write_text('input = "in.extxyz"\n[[stages]]\nmethod = "fire"\nfmax = 0.05\n')
    out = tmp_path / "given.extxyz"
    assert main(["pipeline", str(config), "-o", str(out), "-q"]) == 0 and out.exists()
    assert main(["pipeline", str(config)]) == 2
    assert "'output' must be a file name (or give -o OUTPUT)" in _error_line(capsys)


# ----------------------------------------------------------------------- 9. no step, -q, --ignore-constraints
def test_no_frame_took_a_step_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, [bulk("Ar", "fcc", a=5.26, cubic=True)])  # perfect crystal: zero forces
    assert main(["relax", str(path), "-o", str(tmp_path / "out.extxyz")]) == 0
    err = capsys.readouterr().err
    assert err.strip() == ("batchmd: warning: no frame took a step: 1 already met the convergence criterion at the "
                           "start (lower --fmax to relax further); the output holds the input structures with their "
                           "energies and forces")
    assert "FusedStage" not in err
    assert main(["relax", str(path), "-o", str(tmp_path / "out2.extxyz"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_ignore_constraints_flag(tmp_path, capsys):
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.set_constraint(FixBondLength(0, 1))
    path = tmp_path / "in.traj"
    ase.io.write(path, [atoms])
    for command in (["relax"], ["md", "--temperature", "40", "--dt", "2", "--steps", "2"]):
        out = tmp_path / f"{command[0]}.extxyz"
        assert main([command[0], str(path), "-o", str(out), *command[1:], "-q"]) == 2
        assert "(command line: --ignore-constraints)" in _error_line(capsys)
        assert main([command[0], str(path), "-o", str(out), *command[1:], "-q", "--ignore-constraints"]) == 0
    config = tmp_path / "run.toml"
    config.write_text('input = "in.traj"\noutput = "p.extxyz"\n[[stages]]\nmethod = "fire"\n')
    assert main(["pipeline", str(config), "-q"]) == 2
    capsys.readouterr()
    assert main(["pipeline", str(config), "-q", "--ignore-constraints"]) == 0


# ----------------------------------------------------------------------- 10. --velocities
def test_velocities_start_from_rest(tmp_path, capsys):
    frames = _argon(2)
    for atoms in frames:
        atoms.set_momenta(np.zeros((len(atoms), 3)))  # "at rest", written as all-zero momenta
    path = tmp_path / "in.extxyz"
    ase.io.write(path, frames)
    temperatures = {}
    for policy in ("auto", "keep", "zero", "maxwell-boltzmann"):
        out = tmp_path / f"{policy}.extxyz"
        assert main(["md", str(path), "-o", str(out), "--ensemble", "nve", "--temperature", "40", "--dt", "1",
                     "--steps", "1", "--velocities", policy, "-q"]) == 0
        temperatures[policy] = [a.info["stage0_temperature"] for a in ase.io.read(out, ":")]
    assert min(temperatures["auto"]) > 5 and temperatures["auto"] == temperatures["maxwell-boltzmann"]
    assert max(temperatures["keep"]) < 1 and temperatures["keep"] == temperatures["zero"]  # from rest
    assert main(["md", str(path), "-o", str(tmp_path / "x.extxyz"), "--ensemble", "nve", "--dt", "1", "--steps", "1",
                 "--velocities", "maxwell-boltzmann"]) == 2
    assert "--velocities maxwell-boltzmann needs --temperature (K)" in _error_line(capsys)
    config = tmp_path / "run.toml"
    config.write_text('input = "in.extxyz"\noutput = "p.extxyz"\n[[stages]]\nmethod = "nvt"\ntemperature = 40.0\n'
                      'dt = 1.0\nsteps = 1\nvelocities = "zero"\n')
    assert main(["pipeline", str(config), "-q"]) == 0
    assert max(a.info["stage0_temperature"] for a in ase.io.read(tmp_path / "p.extxyz", ":")) < 5
    assert Path(tmp_path / "p.summary.csv").exists()


def test_shard_ignore_constraints(tmp_path, capsys):
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.set_constraint(FixBondLength(0, 1))
    path = tmp_path / "in.traj"
    ase.io.write(path, [atoms])
    assert main(["shard", str(path), str(tmp_path / "rejected"), "--quiet"]) == 0
    assert "FixBondLength" in (tmp_path / "rejected" / "invalid.jsonl").read_text()
    assert main(["shard", str(path), str(tmp_path / "kept"), "--quiet", "--ignore-constraints"]) == 0
    from batchmd.campaign import Manifest

    assert Manifest.load(tmp_path / "kept").num_structures == 1
