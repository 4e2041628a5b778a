"""Observables from a trajectory store equal the same libraries applied to an ASE trajectory of the run.

One small batched Langevin run (hot Lennard-Jones argon and an Ar-Kr mixture, 108 atoms
each) writes a store and a thermo log; every observable of ``batchmd.analysis`` is then
compared with ASE's ``get_rdf``, tidynamics' ``msd`` and pymbar's statistical inefficiency
applied directly to the frames exported to an ASE ``.traj`` file (bitwise equality), and
every bad input gets its one-line error.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("h5py")
tidynamics = pytest.importorskip("tidynamics")
pytest.importorskip("pymbar")

DENSITY_G_CM3 = 1.374


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from ase.build import bulk

    from batchmd.ase import run_frames
    from batchmd.dynamics import NVTLangevin
    from batchmd.models.lj import LennardJones
    from batchmd.trajectory import ThermoLogHook, TrajectoryWriter

    a = (4.0 / (DENSITY_G_CM3 / (39.948 * 1.66053906660))) ** (1.0 / 3.0)
    frames = [bulk("Ar", "fcc", a=a, cubic=True).repeat(3) for _ in range(3)]
    frames[2].symbols[::2] = "Kr"  # a binary mixture for partial RDFs
    model = LennardJones(species=["Ar", "Kr"], cutoff=8.5)
    nvt = NVTLangevin(model, dt=10.0, temperature=300.0, friction=0.02, random_seed=5, n_steps=120)
    directory = tmp_path_factory.mktemp("analysis")
    store, log = directory / "nvt.h5", directory / "nvt.thermo.parquet"
    with TrajectoryWriter(store, every=4, stages=[nvt]) as traj, ThermoLogHook(log, 4, [nvt]) as thermo:
        run_frames(frames, [nvt], hooks=[traj, thermo])
    return store, log, directory


@pytest.fixture(scope="module")
def ase_traj(run):
    """The frames of each system, exported to an ASE .traj file and read back with ase.io."""
    import ase.io

    from batchmd.trajectory import export_frames

    store, _, directory = run
    export_frames(store, [0, 1, 2], directory / "sys{system}.traj")
    return {s: ase.io.read(directory / f"sys{s}.traj", ":") for s in (0, 1, 2)}


def test_rdf_equals_ase_on_the_ase_trajectory(run, ase_traj):
    from ase.geometry.rdf import get_rdf

    from batchmd import analysis

    store = run[0]
    ours = analysis.rdf(store, 1, r_max=8.0, n_bins=64)
    g, r = get_rdf(ase_traj[1], 8.0, 64)
    assert np.array_equal(ours.g, g) and np.array_equal(ours.r, r)
    assert ours.n_frames == len(ase_traj[1]) == 31
    some = analysis.rdf(store, 1, 8.0, 64, frames=slice(10, None, 3))
    assert np.array_equal(some.g, get_rdf(ase_traj[1][10::3], 8.0, 64, no_dists=True)) and some.n_frames == 7
    assert np.array_equal(some.steps, np.arange(40, 121, 12))
    # first peak of a hot LJ liquid-ish argon near 2^(1/6) sigma ~ 3.8 Å
    assert 3.4 < ours.r[np.argmax(ours.g)] < 4.4


def test_partial_rdfs_equal_ase_and_sum_to_the_total(run, ase_traj):
    from ase.geometry.rdf import get_rdf

    from batchmd import analysis

    store = run[0]
    every4 = slice(0, None, 4)
    images = ase_traj[2][every4]
    partial = analysis.partial_rdfs(store, 2, 8.0, 40, frames=every4)
    assert sorted(partial) == [("Ar", "Ar"), ("Ar", "Kr"), ("Kr", "Kr")]
    for pair, res in partial.items():
        assert np.array_equal(res.g, get_rdf(images, 8.0, 40, elements=pair, no_dists=True))
    assert np.array_equal(analysis.rdf(store, 2, 8.0, 40, frames=every4, elements=("Kr", "Ar")).g,
                          get_rdf(images, 8.0, 40, elements=("Kr", "Ar"), no_dists=True))
    total = analysis.rdf(store, 2, 8.0, 40, frames=every4).g
    mixed = 0.25 * partial["Ar", "Ar"].g + 0.5 * partial["Ar", "Kr"].g + 0.25 * partial["Kr", "Kr"].g
    np.testing.assert_allclose(mixed, total, rtol=1e-12, atol=1e-12)


def test_msd_equals_tidynamics_on_the_ase_trajectory(run, ase_traj):
    from batchmd import analysis

    store = run[0]
    res = analysis.msd(store, 0)
    positions = np.stack([a.get_positions() for a in ase_traj[0]])
    expected = np.mean([tidynamics.msd(positions[:, i, :]) for i in range(positions.shape[1])], axis=0)
    assert np.array_equal(res.msd_A2, expected)
    assert not res.unwrapped  # batchmd's integrators do not wrap positions
    assert np.array_equal(res.lag_fs, np.array([a.info["time_fs"] for a in ase_traj[0]]))
    assert res.lag_fs[1] == 40.0 and res.n_atoms == 108
    kr = analysis.msd(store, 2, elements="Kr")
    pos2 = np.stack([a.get_positions() for a in ase_traj[2]])[:, ase_traj[2][0].numbers == 36]
    assert np.array_equal(kr.msd_A2, np.mean([tidynamics.msd(pos2[:, i]) for i in range(54)], axis=0))


def test_wrapped_positions_are_unwrapped_by_minimum_image(ase_traj):
    from batchmd.analysis import diffusion as msd_module

    images = [a.copy() for a in ase_traj[0]]
    positions = np.stack([a.get_positions() for a in images])
    for a in images:
        a.wrap()
    wrapped = np.stack([a.get_positions() for a in images])
    cells = np.stack([a.cell[:] for a in images])
    assert not np.allclose(wrapped, positions)  # some atoms left the cell and were wrapped
    fixed, jumped = msd_module.unwrap(wrapped, cells, [True] * 3)
    assert jumped
    # the same trajectory up to a constant lattice translation per atom
    shift = np.linalg.solve(cells[0].T, (fixed - positions).reshape(-1, 3).T).T
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)
    np.testing.assert_allclose(msd_module.msd_of_positions(fixed), msd_module.msd_of_positions(positions),
                               rtol=1e-9, atol=1e-9)
    same, jumped = msd_module.unwrap(positions, cells, [True] * 3)
    assert same is positions and not jumped


def test_diffusion_coefficient_is_the_einstein_slope(run):
    from batchmd import analysis

    store = run[0]
    d = analysis.diffusion_coefficient(store, [0, 1], fit_fs=(200.0, 800.0))
    for k, s in enumerate([0, 1]):
        res = analysis.msd(store, s)
        inside = (res.lag_fs >= 200.0) & (res.lag_fs <= 800.0)
        slope = np.polyfit(res.lag_fs[inside], res.msd_A2[inside], 1)[0]
        assert d.per_system_A2_fs[k] == slope / 6.0
    assert d.D_A2_fs == d.per_system_A2_fs.mean() and d.D_cm2_s == d.D_A2_fs * 0.1
    assert d.sem_A2_fs == pytest.approx(d.per_system_A2_fs.std(ddof=1) / np.sqrt(2))
    one = analysis.diffusion_coefficient(store, 0)
    assert one.fit_fs == (0.2 * 1200.0, 0.6 * 1200.0) and np.isnan(one.sem_cm2_s) and one.D_A2_fs > 0


def test_average_matches_pymbar(run):
    from pymbar import timeseries

    from batchmd import analysis
    from batchmd.trajectory import read_thermo

    log = run[1]
    table = read_thermo(log)
    rows = table.filter(np.asarray(table.column("system_id").to_numpy() == 1))
    x = rows.column("temperature_K").to_numpy()
    avg = analysis.average(log, 1, "temperature_K", discard=5)
    g = timeseries.statistical_inefficiency(x[5:])
    assert avg.mean == x[5:].mean() and avg.statistical_inefficiency == g
    assert avg.sem == np.std(x[5:], ddof=1) * np.sqrt(g / len(x[5:])) and avg.n_samples == 26
    assert analysis.average(table, 1, "temperature_K", discard=0.5).n_discarded == 15
    auto = analysis.average(log, 1, "potential_energy_eV", discard="auto")
    assert auto.n_discarded == timeseries.detect_equilibration(rows.column("potential_energy_eV").to_numpy())[0]
    assert "+/-" in str(avg) and avg.n_effective <= avg.n_samples


@pytest.mark.parametrize("call, message", [
    (lambda a, s, l: a.rdf(s, 9, 8.0, 10), "system 9 was never recorded"),
    (lambda a, s, l: a.rdf(s, 0, 200.0, 10), "too large for the cell of system 0"),
    (lambda a, s, l: a.rdf(s, 0, 8.0, 0), "n_bins must be an int >= 1"),
    (lambda a, s, l: a.rdf(s, 0, 8.0, 10, elements=("Ar", "Xe")), "has no Xe atom"),
    (lambda a, s, l: a.rdf(s, 0, 8.0, 10, stage=3), "no frame of stage 3"),
    (lambda a, s, l: a.msd(s, 0, frames=slice(0, 2)), "the MSD needs at least 3"),
    (lambda a, s, l: a.msd(s, 0, frames=[0, 1, 3, 4]), "not evenly spaced"),
    (lambda a, s, l: a.diffusion_coefficient(s, 0, fit_fs=(100.0, 110.0)), "holds 0 MSD points"),
    (lambda a, s, l: a.average(l, 0, "temp"), "no column 'temp'"),
    (lambda a, s, l: a.average(l, 5, "temperature_K"), "system 5 is not in the thermo log"),
    (lambda a, s, l: a.average(l, 0, "conserved_energy_eV"), "is NaN in"),
    (lambda a, s, l: a.average(l, 0, "temperature_K", discard=30), "rows left after discarding 30"),
    (lambda a, s, l: a.average(l, 0, "temperature_K", discard=1.5), "a fraction of the rows"),
])
def test_bad_input_one_line_errors(run, call, message):
    from batchmd import analysis

    with pytest.raises(ValueError, match=message) as info:
        call(analysis, run[0], run[1])
    assert "\n" not in str(info.value)


def test_rdf_beyond_half_the_cell_repeats_it():
    """r_max beyond half a small cell: g(r) of the cell repeated, equal to ASE's on the supercell."""
    from ase.build import bulk
    from ase.geometry.rdf import get_rdf

    from batchmd.analysis.structure import default_r_max, max_r_max, rdf_of_frames

    small = bulk("Ar", "fcc", a=5.3, cubic=True)
    small.rattle(0.1, seed=3)
    big = small.repeat((4, 4, 4))
    ours = rdf_of_frames([small], 8.0, 40, system_id=0)
    reference, r = get_rdf(big, 8.0, 40)
    assert np.allclose(ours.g, reference, rtol=1e-10, atol=1e-12) and np.allclose(ours.r, r)
    assert max_r_max([small]) < 3.0 < default_r_max([small])  # the CLI default spans neighbour shells


def test_plots_write_png(run, tmp_path):
    pytest.importorskip("matplotlib")
    from batchmd import analysis

    store, log, _ = run
    fig = analysis.plot_thermo(log, [0, 2], tmp_path / "thermo.png")
    assert len(fig.axes) == 5  # T, potential and total energy, pressure, volume
    analysis.plot_rdf([analysis.rdf(store, s, 8.0, 40) for s in (0, 1)], tmp_path / "rdf.png")
    analysis.plot_msd(analysis.msd(store, 0), tmp_path / "msd.png",
                      diffusion=analysis.diffusion_coefficient(store, 0))
    for name in ("thermo", "rdf", "msd"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_plot(run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from batchmd.cli import main

    store, log, _ = run
    assert main(["plot", str(log), "--systems", "0,2", "-o", str(tmp_path / "t.png")]) == 0
    assert main(["plot", str(store), "--systems", "0-1", "--what", "rdf", "--bins", "50",
                 "-o", str(tmp_path / "r.png")]) == 0
    assert main(["plot", str(store), "--what", "msd", "--fit-ps", "0.2,0.8", "-o", str(tmp_path / "m.png")]) == 0
    for name in "trm":
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    for argv, message in [
        ([str(store), "--what", "thermo"], "--what thermo needs a thermo log"),
        ([str(log), "--what", "msd"], "--what msd needs a trajectory store"),
        ([str(store), "--systems", "4"], "system 4 was never recorded"),
        ([str(store), "--r-max", "200"], "too large for the cell"),
        ([str(tmp_path / "none.h5")], "no such thermo log or trajectory store"),
        ([str(store), "--what", "msd", "--fit-ps", "x"], "--fit-ps 'x'"),
    ]:
        assert main(["plot", *argv, "-o", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.png").exists()
