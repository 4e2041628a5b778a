"""Equipartition with constraints: one count of degrees of freedom, used everywhere (issue 20, part 1).

Every system has ``g = 3N - 3 N_fixed - 3 [FixCom]`` degrees of freedom
(:mod:`batchmd.dynamics.constraints`, ``docs/ensembles.rst``). A thermostat at ``T`` must give
``<KE> = g kT / 2``, and every reported temperature must be ``2 KE / (g kB)``.

The statistics (all tests): ``B`` independent replicas of each system (own rattle, own
velocity draw, own noise) run side by side; each replica's time average of ``KE / (g kT/2)``
over the production steps is one sample, so the standard error of the mean ratio is
``std(replica means) / sqrt(B)`` with no assumption on the correlation time (the replicas
are the blocks). A test asserts ``|<ratio> - 1| < 4 SE`` (two-sided p ~ 1e-3 for B >= 16)
and that ``4 SE`` is below half the error the old ``3N`` count would make
(``3N / g - 1``), so it would catch it. The reported ``stage0_temperature`` is checked
exactly: it equals ``2 <KE> / (g kB)`` over the same steps to 1e-9 (relative).

Fast versions run in the default suite (a few seconds each: tens of replicas, hundreds of
steps); the ``slow`` ones use the issue's lengths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.constraints import FixAtoms, FixCom

from batchmd.ase import run_frames
from batchmd.data import Batch
from batchmd.dynamics import CRescaleNPT, IsotropicMTKNPT, MTKNPT, NoseHooverChainNVT, NVTLangevin
from batchmd.dynamics.constraints import degrees_of_freedom
from batchmd.dynamics.hooks import Hook, HookStage
from batchmd.dynamics.status import SystemStatus
from batchmd.dynamics.velocities import apply_velocity_policy
from md_argon import batchmd_lj

T = 40.0
KT = units.kB * T

#: kind -> (atoms, fixed atom indices, FixCom); g and 3N follow.
KINDS = {
    "fixcom": (4, (), True),        # g = 9,  3N = 12
    "fixatoms": (8, (0, 1, 2, 3), False),  # g = 12, 3N = 24
    "both": (8, (0, 5), True),       # g = 15, 3N = 24
    "free": (8, (), False),         # g = 24
}


def crystal(kind: str, seed: int):
    """LJ argon fcc (a = 5.3 Å, 4 or 8 atoms, periodic), rattled 0.05 Å, with the kind's constraints."""
    n, fixed, com = KINDS[kind]
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    if n == 8:
        atoms = atoms * (2, 1, 1)
    atoms.rattle(0.05, seed=seed)
    constraints = ([FixAtoms(indices=list(fixed))] if fixed else []) + ([FixCom()] if com else [])
    atoms.set_constraint(constraints)
    return atoms


def dof(kind: str) -> int:
    n, fixed, com = KINDS[kind]
    return 3 * n - 3 * len(fixed) - 3 * int(com)


class KineticSeries(Hook):
    """Every system's kinetic energy (eV) after each of its steps: ``series[step - 1, input_index]``.

    Keyed on ``input_index`` and each system's own ``n_steps``, so it follows systems through
    refills and padded layouts (EMPTY/PENDING rows are skipped).
    """

    stage = HookStage.AFTER_STEP

    def __init__(self, n_frames: int, n_steps: int):
        self.series = torch.full((n_steps, n_frames), float("nan"), dtype=torch.float64)
        self.seen = torch.zeros(n_frames, dtype=torch.long)

    def __call__(self, batch, context):
        status = batch["status"].reshape(-1)
        live = (status != int(SystemStatus.EMPTY)) & (status != int(SystemStatus.PENDING))
        frame = batch["input_index"].reshape(-1).long().clamp(min=0)
        steps = batch["n_steps"].reshape(-1).long()
        moved = live & (steps > self.seen[frame])
        ke = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(
            0, batch.batch_idx.long(), 0.5 * (batch.atomic_masses[:, None] * batch.velocities ** 2).sum(1).double())
        self.series[steps[moved] - 1, frame[moved]] = ke[moved]
        self.seen[frame[moved]] = steps[moved]


def run(stage, kinds, replicas: int, n_steps: int, **kw):
    """``replicas`` frames of each kind through ``stage`` (run_frames); (frames, kinds per frame, KE series)."""
    frames, labels = [], []
    for kind in kinds:
        for r in range(replicas):
            frames.append(crystal(kind, seed=1000 * len(labels) + r))
            labels.append(kind)
    hook = KineticSeries(len(frames), n_steps)
    out = run_frames(frames, [stage], hooks=[hook], **kw).frames
    return frames, out, labels, hook.series.numpy()


def check_kind(kind, frames, out, labels, series, skip: int, name: str):
    """Equipartition over steps > ``skip`` and the exact reported temperature, for the frames of ``kind``."""
    cols = [i for i, k in enumerate(labels) if k == kind]
    g = dof(kind)
    n3 = 3 * KINDS[kind][0]
    assert not np.isnan(series[:, cols]).any()
    ratios = series[skip:, cols].mean(0) / (0.5 * g * KT)
    mean, se = ratios.mean(), ratios.std(ddof=1) / np.sqrt(len(cols))
    print(f"{name} {kind}: <KE>/(g kT/2) = {mean:.4f} +- {se:.4f} (g = {g}, 3N = {n3}; {len(cols)} replicas, "
          f"{series.shape[0] - skip} steps)")
    assert abs(mean - 1.0) < 4 * se, f"{name} {kind}: {mean:.4f} +- {se:.4f}"
    if g != n3:
        assert 4 * se < 0.5 * (n3 / g - 1), "too few samples to tell g from 3N"
    reported = np.array([out[i].info["stage0_temperature"] for i in cols])
    measured = 2 * series[:, cols].mean(0) / (g * units.kB)
    np.testing.assert_allclose(reported, measured, rtol=1e-9)
    fixed = list(KINDS[kind][1])
    for i in cols:
        np.testing.assert_array_equal(out[i].positions[fixed], frames[i].positions[fixed])
        if KINDS[kind][2]:
            np.testing.assert_allclose(out[i].get_center_of_mass(), frames[i].get_center_of_mass(), atol=1e-9)


def langevin(n):
    return NVTLangevin(batchmd_lj(), dt=4.0, temperature=T, friction=0.02, n_steps=n, random_seed=1)


def nhc(n):
    return NoseHooverChainNVT(batchmd_lj(), dt=4.0, temperature=T, tdamp=100.0, n_steps=n, random_seed=1)


def mtk(n):
    return IsotropicMTKNPT(batchmd_lj(), dt=4.0, temperature=T, pressure=0.0, tdamp=100.0, pdamp=1000.0, n_steps=n,
                           random_seed=1)


def mtk_full(n):
    return MTKNPT(batchmd_lj(), dt=4.0, temperature=T, pressure=0.0, tdamp=100.0, pdamp=1000.0, n_steps=n,
                  random_seed=1)


def crescale(n):
    return CRescaleNPT(batchmd_lj(), dt=4.0, temperature=T, pressure=0.0, compressibility=0.3 / units.GPa,
                       taup=500.0, tdamp=100.0, n_steps=n, random_seed=1)


THERMOSTATS = {"langevin": langevin, "nhc": nhc}
BAROSTATS = {"mtk": mtk, "mtk_full": mtk_full, "crescale": crescale}


@pytest.mark.parametrize("name", sorted(THERMOSTATS))
def test_thermostat_equipartition_with_fixatoms_fixcom_and_both(name):
    """Fast: 24 replicas of each kind, 600 steps of 4 fs, statistics over the last 400 (after 8 tdamp)."""
    kinds = ("fixcom", "fixatoms", "both")
    frames, out, labels, series = run(THERMOSTATS[name](600), kinds, replicas=24, n_steps=600)
    for kind in kinds:
        check_kind(kind, frames, out, labels, series, skip=200, name=name)


@pytest.mark.parametrize("name", sorted(BAROSTATS))
def test_barostat_equipartition_with_fixcom(name):
    """Fast: FixCom (g = 3N - 3) under each barostat, 24 replicas, 600 steps, statistics over the last 400."""
    frames, out, labels, series = run(BAROSTATS[name](600), ("fixcom",), replicas=24, n_steps=600)
    check_kind("fixcom", frames, out, labels, series, skip=200, name=name)


@pytest.mark.parametrize("name", sorted(BAROSTATS))
@pytest.mark.parametrize("kind", ["fixatoms", "both"])
def test_barostats_refuse_fixed_atoms_cleanly(name, kind):
    """FixAtoms under a barostat is refused (as ASE does), alone or with FixCom: a ValueError, nothing run."""
    with pytest.raises(ValueError, match="FixAtoms"):
        run_frames([crystal("free", 0), crystal(kind, 1)], [BAROSTATS[name](5)])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(THERMOSTATS) + sorted(BAROSTATS))
def test_equipartition_long(name):
    """Slow: 48 replicas of each admitted kind, 3000 steps of 4 fs, statistics over the last 2500 (the issue's run)."""
    kinds = ("fixcom", "fixatoms", "both") if name in THERMOSTATS else ("fixcom",)
    make = {**THERMOSTATS, **BAROSTATS}[name]
    frames, out, labels, series = run(make(3000), kinds, replicas=48, n_steps=3000)
    for kind in kinds:
        check_kind(kind, frames, out, labels, series, skip=500, name=name)


def test_reported_temperature_counts_each_newcomers_own_degrees_of_freedom():
    """Same-size systems with different constraints refill slots in place: each brings its own ``dof``.

    ``stage0_temperature`` of every frame equals ``2 <KE> / (g kB)`` with its own ``g``
    (exact), although it ran in a slot that earlier held a system with another count.
    """
    kinds = ["free", "fixatoms", "both", "free", "both", "fixatoms", "free", "both"]
    frames = [crystal(k, seed=i) for i, k in enumerate(kinds)]
    hook = KineticSeries(len(frames), 30)
    result = run_frames(frames, [langevin(30)], hooks=[hook], max_atoms=16, refill_frequency=5)
    assert result.stats.refills_in_place > 0
    series = hook.series.numpy()
    for i, (kind, atoms) in enumerate(zip(kinds, result.frames)):
        measured = 2 * series[:, i].mean() / (dof(kind) * units.kB)
        assert abs(atoms.info["stage0_temperature"] - measured) < 1e-9 * measured, (i, kind)


def test_dof_field_is_recorded_once_and_follows_each_system():
    """The loop stores ``dof`` [B] at run entry; it equals :func:`degrees_of_freedom` and ASE's count."""
    from batchmd.dynamics import FusedStage

    frames = [crystal(k, seed=i) for i, k in enumerate(KINDS)]
    batch = Batch.from_ase(frames)
    loop = FusedStage([nhc(2)])
    batch = loop.run(batch)
    assert batch["dof"].tolist() == [float(dof(k)) for k in KINDS]
    assert batch["dof"].tolist() == degrees_of_freedom(batch).tolist()
    assert [a.get_number_of_degrees_of_freedom() for a in frames] == [dof(k) for k in KINDS]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_maxwell_boltzmann_draw_gives_the_temperature_over_the_free_degrees_of_freedom(kind):
    """The velocity policy's draw at T: fixed atoms at rest, <KE> = g kT/2 over 400 replicas (4 SE).

    Without FixCom the draw keeps its kinetic energy (ASE's ``Stationary``); with FixCom the
    centre-of-mass-free draw is canonical over ``g = 3 N_free - 3``.
    """
    replicas = 400
    batch = Batch.from_ase([crystal(kind, seed=i) for i in range(replicas)])
    stage = NVTLangevin(batchmd_lj(), dt=4.0, temperature=T, velocities="maxwell_boltzmann", random_seed=7)
    everyone = torch.ones(replicas, dtype=torch.bool)
    from batchmd.dynamics.constraints import record_degrees_of_freedom

    record_degrees_of_freedom(batch)
    stage.init_state(batch, everyone)
    apply_velocity_policy(stage, batch, everyone, first=True)
    v = batch.velocities
    if batch.has_field("fixed"):
        assert float(v[batch["fixed"]].abs().max()) == 0.0
    ke = torch.zeros(replicas, dtype=torch.float64).index_add_(
        0, batch.batch_idx.long(), 0.5 * (batch.atomic_masses[:, None] * v ** 2).sum(1)).numpy()
    ratios = ke / (0.5 * dof(kind) * KT)
    mean, se = ratios.mean(), ratios.std(ddof=1) / np.sqrt(replicas)
    print(f"MB draw {kind}: <KE>/(g kT/2) = {mean:.4f} +- {se:.4f}")
    assert abs(mean - 1.0) < 4 * se
    if KINDS[kind][2]:
        m = batch.atomic_masses[:, None]
        p = torch.zeros(replicas, 3, dtype=torch.float64).index_add_(0, batch.batch_idx.long(), m * v)
        assert float(p.abs().max()) < 1e-12


def slab_frames(copies: int):
    """The issue's slab: fcc100 Ar (3, 3, 4), a = 5.3 Å, vacuum 8 Å, pbc (T, T, F), the 18 lowest atoms fixed (g = 54)."""
    from ase.build import fcc100

    frames = []
    for i in range(copies):
        slab = fcc100("Ar", (3, 3, 4), a=5.3, vacuum=8)
        slab.pbc = (True, True, False)
        if i:
            slab.rattle(0.02, seed=i)
        slab.set_constraint(FixAtoms(indices=np.argsort(slab.positions[:, 2])[:18]))
        frames.append(slab)
    return frames


def cli_slab_temperatures(tmp_path, ensemble: str, copies: int, steps: int, extra=()):
    import ase.io

    from batchmd.cli import main

    path, out = tmp_path / "slab.extxyz", tmp_path / f"{ensemble}.extxyz"
    ase.io.write(path, slab_frames(copies))
    assert main(["md", str(path), "-o", str(out), "--ensemble", ensemble, "--temperature", "40", "--steps",
                 str(steps), "--dt", "5", "--seed", "1", "--device", "cpu", "--quiet", *extra]) == 0
    got, given = ase.io.read(out, ":"), ase.io.read(path, ":")
    for a, f in zip(got, given):
        fixed = f.constraints[0].index
        assert len(fixed) == 18
        np.testing.assert_allclose(a.positions[fixed], f.positions[fixed], atol=1e-8)  # fixed atoms unmoved
    return np.array([a.info["stage0_temperature"] for a in got])


@pytest.mark.parametrize("ensemble,extra,steps", [("nvt", ("--friction", "0.02"), 300),
                                                  ("nvt-nose-hoover", ("--tdamp", "100"), 600)])
def test_cli_slab_with_fixed_atoms_reports_the_thermostat_temperature(tmp_path, ensemble, extra, steps):
    """The issue's slab (18 of 36 atoms fixed), 8 copies, 40 K, 300 (Langevin) or 600 (NHC) steps of 5 fs:
    the mean stage0_temperature is ~40 K (it was 19.9 K: counted over 3N = 108 instead of g = 54).

    Tolerance 40 +- 4 K: the instantaneous temperature of 54 degrees of freedom fluctuates by
    sqrt(2/54) = 19%; with correlation times ~50-100 fs each run is >= 10 independent samples
    (<= 6%), 8 copies 2% (4 SE = 8%, 3.2 K), and the mean includes the equilibration from the
    draw (the temperature first drops as the slab takes potential energy): measured bias
    -1.5% (Langevin), -3.5% (NHC, hence its longer run).
    """
    temps = cli_slab_temperatures(tmp_path, ensemble, copies=8, steps=steps, extra=extra)
    print(f"batchmd md --ensemble {ensemble} slab: stage0_temperature {temps.mean():.2f} K ({temps.round(1)})")
    assert abs(temps.mean() - 40.0) < 4.0


@pytest.mark.slow
@pytest.mark.parametrize("ensemble,extra", [("nvt", ("--friction", "0.02")), ("nvt-nose-hoover", ())])
def test_cli_slab_issue_command(tmp_path, ensemble, extra):
    """The issue's command (one slab, 1500 steps of 5 fs): stage0_temperature within 40 +- 6 K (was 19.9 / 20.3 K).

    One system, g = 54: Langevin (friction 0.02/fs) gives ~75 independent samples (2% error);
    the Nosé-Hoover chain at its default tdamp (500 fs) ~8 (7%, 4 SE = 28% would be 11 K;
    6 K still excludes the old 20 K by far). Measured: 39.75 K and 38.09 K.
    """
    temps = cli_slab_temperatures(tmp_path, ensemble, copies=1, steps=1500, extra=extra)
    print(f"issue command --ensemble {ensemble}: stage0_temperature {temps[0]:.2f} K")
    assert abs(temps[0] - 40.0) < 6.0
