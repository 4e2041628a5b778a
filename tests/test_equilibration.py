"""Equilibration as graduation (batchmd.dynamics.equilibration): the test, production statistics, the stage
in inflight runs (graduation at different steps, named statuses, determinism), the CLI and pipeline keys.

The statistical comparison with long fixed-length runs is marked slow (a minute on 2 cores).
"""

from __future__ import annotations

import math

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.md import velocitydistribution as vd
from ase.md.velocitydistribution import Stationary

from batchmd.ase import run_frames
from batchmd.cli import main
from batchmd.cli.errors import CLIError
from batchmd.cli.pipeline import build_stage, check_stage
from batchmd.dynamics import IsotropicMTKNPT, NVTLangevin
from batchmd.dynamics.equilibration import (Equilibrate, equilibration_status_text, equilibration_test,
                                            production_statistics)
from batchmd.models.lj import LennardJones

SIGMA, EPSILON, CUTOFF = 3.405, 0.0104, 8.5125
TARGET = 40.0  # K
thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution


def lj():
    return LennardJones(sigma=SIGMA, epsilon=EPSILON, cutoff=CUTOFF)


def argon(seed: int, start_temperature: float, a: float = 5.3, rattle: float = 0.02):
    """32-atom fcc argon with Maxwell-Boltzmann momenta at ``start_temperature`` K (zero total momentum)."""
    atoms = bulk("Ar", "fcc", a=a, cubic=True) * (2, 2, 2)
    atoms.rattle(rattle, seed=seed)
    thermalize(atoms, temperature_K=start_temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def mixed_set(seed=0):
    """Two systems started near equilibrium (2 x target: equipartition halves it) and two hot starts (8 x)."""
    return [argon(seed, 2 * TARGET), argon(seed + 1, 8 * TARGET), argon(seed + 2, 2 * TARGET),
            argon(seed + 3, 8 * TARGET)]


def nvt(model, seed=7, **kw):
    """Langevin at 40 K, friction 0.005/fs: energy relaxation time 1/friction = 200 fs = 40 steps."""
    return NVTLangevin(model, dt=5.0, temperature=TARGET, friction=0.005, random_seed=seed, **kw)


#: Quick sampling for the fast tests: first test after 100 steps, then every 50.
QUICK = dict(sample_every=5, min_samples=20, test_every=10)


def ar1(n, phi, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + rng.normal()
    return x + offset


# ----------------------------------------------------------------------------- the test itself
def test_equilibration_test_on_synthetic_series():
    """Stationary AR(1) series pass, transients are cut, drifts fail; the trend test catches slow drifts
    that Chodera's detection alone accepts (counts over seeds, deterministic)."""
    seeds = range(10)
    stationary = [equilibration_test(ar1(200, 0.5, s)) for s in seeds]
    assert sum(ok and t0 <= 100 for ok, t0 in stationary) >= 9
    decays = [equilibration_test(ar1(200, 0.5, s) + 20.0 * np.exp(-np.arange(200) / 15.0)) for s in seeds]
    # A transient of ~60 samples is cut; pymbar's t0 is noisy where N_eff(t0) is flat, so a few land late and
    # fail: such a system is tested again test_every samples later (a delay, never a biased production).
    assert sum(ok and 30 <= t0 <= 100 for ok, t0 in decays) >= 8
    assert all(t0 >= 30 for ok, t0 in decays)
    assert not any(equilibration_test(ar1(200, 0.5, s) + np.linspace(0.0, 6.0, 200))[0] for s in seeds)
    # A drift of 2 standard deviations across the window: detection alone accepts about half.
    slow = [ar1(200, 0.0, s) + np.linspace(0.0, 2.0, 200) for s in range(40)]
    alone = sum(equilibration_test(x, drift_z=1e9)[0] for x in slow)
    checked = sum(equilibration_test(x)[0] for x in slow)
    assert (alone, checked) == (22, 9)  # the numbers of the module docstring
    assert equilibration_test(np.full(50, 3.0)) == (True, 0)
    with pytest.raises(ValueError, match="at least 8 samples"):
        equilibration_test(np.arange(5.0))
    with pytest.raises(ValueError, match="non-finite"):
        equilibration_test(np.r_[np.zeros(20), np.nan])


def test_production_statistics_of_an_ar1_series():
    phi = 0.8  # statistical inefficiency (1 + phi) / (1 - phi) = 9
    x = ar1(20000, phi, 4, offset=5.0)
    mean, sem, g = production_statistics(x)
    exact_sem = math.sqrt(1.0 / (1.0 - phi**2) * 9.0 / x.size)
    assert abs(g - 9.0) < 2.0 and abs(sem - exact_sem) < 0.15 * exact_sem
    assert abs(mean - 5.0) < 4 * sem
    assert all(math.isnan(v) for v in production_statistics([]))
    assert production_statistics(np.full(10, 2.0))[:2] == (2.0, 0.0)
    assert equilibration_status_text(3, 700) == "not equilibrated in 700 steps"


def test_bad_parameters_are_refused_in_one_line():
    model = lj()
    with pytest.raises(ValueError, match="multiple of sample_every"):
        Equilibrate(nvt(model), production_steps=105, max_equilibration_steps=1000)
    with pytest.raises(ValueError, match="neither n_steps"):
        Equilibrate(nvt(model, n_steps=10), production_steps=100, max_equilibration_steps=1000)
    with pytest.raises(ValueError, match="not an MD stage"):
        from batchmd.dynamics import FIRE

        Equilibrate(FIRE(model), production_steps=100, max_equilibration_steps=1000)
    with pytest.raises(ValueError, match="max_equilibration_steps must be a positive integer"):
        Equilibrate(nvt(model), production_steps=100, max_equilibration_steps=0)
    with pytest.raises(ValueError, match="min_samples"):
        Equilibrate(nvt(model), production_steps=100, max_equilibration_steps=100, min_samples=300)
    with pytest.raises(ValueError, match="observables"):
        Equilibrate(nvt(model), production_steps=100, max_equilibration_steps=100, observables=["density"])
    npt = Equilibrate(IsotropicMTKNPT(model, dt=5.0, temperature=40.0, pressure=0.0), production_steps=100,
                      max_equilibration_steps=100)
    assert npt.observables == ("temperature", "potential_energy", "volume") and npt.method == "npt"


# ----------------------------------------------------------------------------- the stage in inflight runs
def test_mixed_set_graduates_at_different_steps_with_production_at_the_target_temperature():
    """Hot starts equilibrate later; every production mean temperature is the target within 4 SEM
    (Langevin's exact answer); newcomers of an inflight refill start their own phase."""
    stage = Equilibrate(nvt(lj()), production_steps=500, max_equilibration_steps=4000, **QUICK)
    result = run_frames(mixed_set(), [stage], max_batch_size=3, refill_frequency=10)
    frames = result.frames
    info = [f.info for f in frames]
    assert [i["equilibration_status"] for i in info] == ["equilibrated"] * 4
    assert all(i["status"] == "completed" and i["production_samples"] == 100 for i in info)
    assert all(i["production_steps_run"] == 501 for i in info)  # the step after the last sample ends it
    detected = [i["equilibration_detected_at_step"] for i in info]
    assert all(i["n_steps"] == d + 501 for i, d in zip(info, detected))
    assert len(set(i["n_steps"] for i in info)) > 1  # graduation at different steps
    assert min(detected[1], detected[3]) > max(detected[0], detected[2])  # hot starts take longer
    assert all(0 <= i["equilibrated_at_step"] <= d for i, d in zip(info, detected))
    for i in info:
        assert abs(i["production_mean_temperature_K"] - TARGET) < 4 * i["production_sem_temperature_K"]
        assert i["production_sem_temperature_K"] > 0 and i["production_g_temperature_K"] >= 1
        assert np.isfinite(i["production_mean_pressure_GPa"])  # run_frames computes the stress
        assert i["production_mean_volume_A3"] == pytest.approx(frames[0].get_volume())
    assert not any(key.startswith("eq_") for key in info[0])  # the buffers stay behind
    assert result.stats.stage_counts == {"0:nvt": {"completed": 4}}


def test_not_equilibrated_in_max_steps_is_a_named_status_and_runs_are_deterministic():
    frames = [argon(0, 2 * TARGET), argon(1, 8 * TARGET)]
    never = Equilibrate(nvt(lj()), production_steps=100, max_equilibration_steps=300, min_effective_samples=1e6,
                        **QUICK)  # an impossible criterion: tested from step 100 on, never passes
    short = Equilibrate(nvt(lj()), production_steps=100, max_equilibration_steps=60, **QUICK)  # never tested
    for stage, steps, subset in ((never, 300, frames), (short, 60, frames[:1])):
        out = run_frames(subset, [stage], refill_frequency=10).frames
        for atoms in out:
            assert atoms.info["equilibration_status"] == f"not equilibrated in {steps} steps"
            assert atoms.info["status"] == "out_of_steps" and atoms.info["n_steps"] == steps
            assert math.isnan(atoms.info["production_mean_temperature_K"]) and atoms.info["production_samples"] == 0
    quick = dict(production_steps=100, max_equilibration_steps=2000, **QUICK)
    runs = [run_frames(frames, [Equilibrate(nvt(lj()), **quick)]).frames for _ in range(2)]
    keys = ("n_steps", "equilibrated_at_step", "equilibration_detected_at_step", "production_mean_temperature_K")
    assert [[a.info[k] for k in keys] for a in runs[0]] == [[a.info[k] for k in keys] for a in runs[1]]


def test_batch_mode_after_a_relaxation():
    """FIRE -> Equilibrate -> NVE over a Batch (no sampler): the stage entered second and left for a third;
    its results are written when the system leaves it."""
    import torch

    from batchmd.data import Batch
    from batchmd.dynamics import FIRE, NVE, ConvergenceHook

    model = lj()
    fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=200)
    stage = Equilibrate(nvt(model), production_steps=100, max_equilibration_steps=2000, **QUICK)
    batch = Batch.from_ase([argon(5, 0.0, rattle=0.05)], dtype=torch.float64)
    done = (fire + stage + NVE(model, dt=5.0, n_steps=10)).run(batch)
    assert int(done["equilibration_status"][0]) == 2 and int(done["production_samples"][0]) == 20
    assert int(done["stage"][0]) == 2 and int(done["status"][0]) == 1 and int(done["stage_steps"][0]) == 10
    assert int(done["production_steps_run"][0]) == 101
    assert float(done["production_sem_temperature_K"][0]) > 0


# ----------------------------------------------------------------------------- CLI and pipeline keys
def test_cli_md_until_equilibrated(tmp_path, capsys):
    path, out = tmp_path / "in.extxyz", tmp_path / "out.extxyz"
    ase.io.write(path, [argon(0, 2 * TARGET), argon(2, 2 * TARGET)])
    store = tmp_path / "eq.h5"
    rc = main(["md", str(path), "-o", str(out), "--temperature", "40", "--dt", "5", "--friction", "0.005",
               "--until-equilibrated", "--production-steps", "100", "--max-steps", "3000", "--sample-every", "5",
               "--trajectory", str(store), "--traj-every", "10", "--log-every", "5"])
    assert rc == 0
    frames = ase.io.read(out, ":")
    assert [a.info["equilibration_status"] for a in frames] == ["equilibrated"] * 2
    assert all(a.info["production_samples"] == 20 and a.info["production_sem_temperature_K"] > 0 for a in frames)
    # the recorders see the stage's steps through equilibration and production, until each system graduates
    from batchmd import analysis
    from batchmd.trajectory import read_thermo, read_trajectory

    log = read_thermo(tmp_path / "out.thermo.parquet").to_pandas()
    for k, atoms in enumerate(frames):
        n, start = int(atoms.info["n_steps"]), int(atoms.info["equilibration_detected_at_step"])
        rows = log[log.system_id == k]
        assert rows.stage_step.tolist() == list(range(0, n + 1, 5)) and (rows.stage == 0).all()
        steps = read_trajectory(store, k, as_arrays=True)["stage_step"]
        assert steps.tolist() == list(range(0, n + 1, 10))
        production = np.nonzero(steps >= start)[0]  # docs/equilibration.rst's recipe
        assert len(production) == (n // 10 * 10 - (start + 9) // 10 * 10) // 10 + 1 >= 10
        assert analysis.rdf(store, k, 8.0, 20, frames=production).n_frames == len(production)
        mean = rows[rows.stage_step > start].temperature_K.mean()  # production rows of the log
        assert abs(mean - atoms.info["production_mean_temperature_K"]) < 4 * atoms.info["production_sem_temperature_K"]
    header = (tmp_path / "out.summary.csv").read_text().splitlines()[0].split(",")
    assert {"equilibration_status", "production_mean_temperature_K", "production_sem_temperature_K"} <= set(header)
    for bad, message in ((["--steps", "10", "--until-equilibrated", "--production-steps", "200", "--max-steps", "30"],
                          "--steps does not apply with --until-equilibrated"),
                         (["--until-equilibrated", "--production-steps", "200"], "needs --max-steps"),
                         (["--steps", "10", "--max-steps", "30"], "--max-steps applies only with --until-equilibrated"),
                         ([], "--steps is required")):
        assert main(["md", str(path), "-o", str(tmp_path / "x.extxyz"), "--temperature", "40", "--dt", "5", *bad]) != 0
        assert message in capsys.readouterr().err


def test_pipeline_keys():
    spec = {"method": "npt", "temperature": 40.0, "pressure": 0.0, "dt": 5.0, "until_equilibrated": True,
            "production_steps": 200, "max_steps": 1000, "sample_every": 20}
    stage = build_stage(spec, lj(), where="run.toml: stages[0]")
    assert isinstance(stage, Equilibrate) and stage.sample_every == 20 and stage.max_equilibration_steps == 1000
    assert "volume" in stage.observables
    plain = build_stage({"method": "nvt", "temperature": 40.0, "dt": 5.0, "steps": 10}, lj())
    assert isinstance(plain, NVTLangevin) and plain.n_steps == 10
    for extra, message in (({"until_equilibrated": True, "production_steps": 200}, "needs .*max_steps"),
                           ({"until_equilibrated": "yes", "steps": 10}, "must be true or false"),
                           ({"production_steps": 200, "steps": 10}, "applies only with .*until_equilibrated"),
                           ({"until_equilibrated": True, "steps": 10, "production_steps": 200, "max_steps": 9},
                            r"stages\[0\] \(nvt\): steps does not apply with until_equilibrated")):
        base = {"method": "nvt", "temperature": 40.0, "dt": 5.0, **extra}
        with pytest.raises(CLIError, match=message):
            check_stage(base, where="run.toml: stages[0]")
    with pytest.raises(CLIError, match="missing key 'steps'"):
        check_stage({"method": "nvt", "temperature": 40.0, "dt": 5.0}, where="run.toml: stages[0]")


# ----------------------------------------------------------------------------- against long fixed-length runs
def _fixed_run_statistics(frames, stage_factory, steps, discard, every=10):
    """Per system: mean and SEM (pymbar) of T, E_pot and V over a fixed-length run after ``discard`` steps."""
    from batchmd.dynamics.equilibration import _observables
    from batchmd.dynamics.hooks import Hook, HookStage

    series: dict[int, list] = {}

    class Record(Hook):
        stage = HookStage.AFTER_STEP
        frequency = every

        def __call__(self, batch, context):
            moving = (batch["status"] == 0) & (batch["stage_steps"] > discard)  # padding rows are EMPTY
            values = _observables(batch)[:, :3].double().cpu().numpy()
            ids = batch["system_id"].reshape(-1).tolist()
            for s in np.nonzero(moving.cpu().numpy())[0]:
                series.setdefault(int(ids[s]), []).append(values[s])

    # Another seed: an independent trajectory (the same seed would repeat the production's own trajectory).
    run_frames(frames, [stage_factory(steps, seed=8)], hooks=[Record()], refill_frequency=every,
               max_batch_size=len(frames))
    data = [np.array(series[b]) for b in range(len(frames))]  # [T, 3] per system
    return [[production_statistics(d[:, c])[:2] for c in range(3)] for d in data]


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", ["nvt", "npt"])
def test_production_averages_equal_long_fixed_runs_within_error_bars(ensemble):
    """|production mean - long-run mean| < 4 combined SEM for T, E_pot (and V under NPT), every system.

    The long fixed-length runs (16,000 steps, the first 4,000 discarded) are independent trajectories of the
    same systems. NPT: cells compressed and expanded by 3% relax to the same volume.
    """
    model = lj()
    if ensemble == "nvt":
        frames, references = mixed_set(), mixed_set(seed=50)

        def factory(n_steps=None, seed=7):
            return nvt(model, seed=seed, n_steps=n_steps)
        columns = (0, 1)
    else:
        frames, references = ([argon(seed + i, 2 * TARGET, a=5.3 * s) for i, s in enumerate((0.97, 1.0, 1.03))]
                              for seed in (0, 50))

        def factory(n_steps=None, seed=7):
            return IsotropicMTKNPT(model, dt=5.0, temperature=TARGET, pressure=0.0, tdamp=250.0, pdamp=2500.0,
                                   random_seed=seed, n_steps=n_steps)
        columns = (0, 1, 2)
    stage = Equilibrate(factory(), production_steps=4000, max_equilibration_steps=10000)
    info = [a.info for a in run_frames(frames, [stage], refill_frequency=10).frames]
    assert all(i["equilibration_status"] == "equilibrated" for i in info)
    # Independent reference trajectories: other initial velocities and rattles (MTK NPT has no noise), and for
    # Langevin another noise seed.
    reference = _fixed_run_statistics(references, factory, steps=16000, discard=4000)
    names = ("temperature_K", "potential_energy_eV", "volume_A3")
    for i, ref in zip(info, reference):
        for c in columns:
            mean, sem = i[f"production_mean_{names[c]}"], i[f"production_sem_{names[c]}"]
            ref_mean, ref_sem = ref[c]
            assert abs(mean - ref_mean) < 4 * math.hypot(sem, ref_sem), (names[c], mean, sem, ref_mean, ref_sem)
