"""Thermo logs (issue 23): per-system rows every N steps in Parquet, checked against ASE on the same frames.

Fast: Lennard-Jones argon of 4-12 atoms, tens of steps, float64.
"""

from __future__ import annotations

import ase.io
import ase.units
import numpy as np
import pytest
from ase.build import bulk
from ase.constraints import FixAtoms

from batchmd.cli import main
from batchmd.trajectory import COLUMNS, ThermoLogHook, TrajectoryWriter, read_thermo, read_trajectory

SIGMA, EPS, RC = 3.405, 0.0104, 8.5125


def frames(count=4):
    out = []
    for i in range(count):
        atoms = bulk("Ar", "fcc", a=5.30, cubic=True).repeat((1, 1, 1 + i % 3))
        atoms.rattle(0.05, seed=i)
        out.append(atoms)
    return out


def _lj():
    from batchmd.models.lj import LennardJones

    return LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC)


def _run(tmp_path, stage, structures, every=5):
    from batchmd.ase import run_frames

    with ThermoLogHook(tmp_path / "log.parquet", every, [stage]) as log, \
            TrajectoryWriter(tmp_path / "t.h5", every, ("velocities", "energy", "stress"), stages=[stage]) as traj:
        run_frames(structures, [stage], hooks=[log, traj], max_atoms=16, refill_frequency=5)
    return read_thermo(tmp_path / "log.parquet").to_pandas()


def test_columns_agree_with_ase_on_the_recorded_frames(tmp_path):
    from batchmd.dynamics import NoseHooverChainNVT

    structures = frames()
    structures[1].set_constraint(FixAtoms(indices=[0, 1]))  # 3N - 6 degrees of freedom
    stage = NoseHooverChainNVT(_lj(), dt=5.0, temperature=40.0, tdamp=100.0, n_steps=30)
    table = _run(tmp_path, stage, structures)
    assert tuple(table.columns) == COLUMNS
    assert len(table) == 4 * 7 and table["step"].tolist()[:7] == [0, 5, 10, 15, 20, 25, 30]
    assert np.allclose(table["time_fs"][:7], np.arange(7) * 25.0)
    for row in table.itertuples():
        atoms = read_trajectory(tmp_path / "t.h5", row.system_id)[row.step // 5]
        if row.system_id == 1:
            atoms.set_constraint(FixAtoms(indices=[0, 1]))
        assert row.potential_energy_eV == atoms.get_potential_energy()
        assert row.temperature_K == pytest.approx(atoms.get_temperature(), rel=1e-10)
        assert row.kinetic_energy_eV == pytest.approx(atoms.get_kinetic_energy(), rel=1e-10)
        assert row.total_energy_eV == pytest.approx(atoms.get_total_energy(), rel=1e-10)
        assert row.volume_A3 == pytest.approx(atoms.get_volume(), rel=1e-12)
        assert row.density_g_cm3 == pytest.approx(atoms.get_masses().sum() / atoms.get_volume() * 1.66053906660,
                                                  rel=1e-12)
        pressure = -atoms.get_stress(include_ideal_gas=True)[:3].mean() / ase.units.GPa
        assert row.pressure_GPa == pytest.approx(pressure, rel=1e-9)
    for _, rows in table.groupby("system_id"):  # Nosé-Hoover: the conserved quantity is conserved
        conserved = rows["conserved_energy_eV"].to_numpy()
        assert np.isfinite(conserved).all() and np.ptp(conserved) < 2e-5 * len(rows)
        assert np.ptp(rows["total_energy_eV"]) > 10 * np.ptp(conserved)


def test_nve_conserved_is_total_and_langevin_has_none(tmp_path):
    from batchmd.dynamics import NVE, NVTLangevin

    table = _run(tmp_path, NVE(_lj(), dt=2.0, n_steps=10), frames(2))
    assert np.array_equal(table["conserved_energy_eV"], table["total_energy_eV"])
    (tmp_path / "b").mkdir()
    table = _run(tmp_path / "b", NVTLangevin(_lj(), dt=2.0, temperature=30.0, n_steps=10, random_seed=1), frames(2))
    assert table["conserved_energy_eV"].isna().all() and table["temperature_K"].notna().all()


def test_mtk_npt_conserved_energy(tmp_path):
    from batchmd.dynamics import IsotropicMTKNPT

    stage = IsotropicMTKNPT(_lj(), dt=4.0, temperature=40.0, pressure=0.01 * ase.units.GPa, tdamp=100.0,
                            pdamp=1000.0, n_steps=40)
    table = _run(tmp_path, stage, frames(2))
    for _, rows in table.groupby("system_id"):
        conserved = rows["conserved_energy_eV"].to_numpy()
        assert np.isfinite(conserved).all() and np.ptp(conserved) < 1e-4
        assert np.ptp(rows["volume_A3"]) > 0  # the cell moves
        assert np.ptp(rows["total_energy_eV"]) > 10 * np.ptp(conserved)


def test_relax_log_has_fmax_and_no_temperature(tmp_path, capsys):
    source = tmp_path / "in.extxyz"
    ase.io.write(source, frames(3))
    out = tmp_path / "relaxed.extxyz"
    assert main(["relax", str(source), "-o", str(out), "--fmax", "0.01", "--max-steps", "200", "--device", "cpu",
                 "-q", "--log-every", "2"]) == 0, capsys.readouterr().err
    table = read_thermo(tmp_path / "relaxed.thermo.parquet").to_pandas()
    assert set(table["system_id"]) == {0, 1, 2} and (table["step"] % 2 == 0).all()
    assert table["temperature_K"].isna().all() and table["time_fs"].isna().all()
    assert table["conserved_energy_eV"].isna().all() and table["fmax_eV_A"].notna().all()
    for _, rows in table.groupby("system_id"):  # the relaxation goes down in energy and force
        assert rows["potential_energy_eV"].iloc[-1] < rows["potential_energy_eV"].iloc[0]
        assert rows["fmax_eV_A"].iloc[-1] < rows["fmax_eV_A"].iloc[0]
    assert np.isfinite(table["pressure_GPa"]).all()  # the virial pressure (no kinetic term)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no thermo log there"):
        read_thermo(tmp_path / "missing.parquet")
    (tmp_path / "log.parquet").write_bytes(b"x")
    with pytest.raises(ValueError, match="exists: pass overwrite=True"):
        ThermoLogHook(tmp_path / "log.parquet")
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        ThermoLogHook(tmp_path / "other.parquet", every=0)
