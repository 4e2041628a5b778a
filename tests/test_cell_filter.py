"""Cell filters against ase.filters (FrechetCellFilter, UnitCellFilter) with FIRE, step for step."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
import torch
from ase.filters import FrechetCellFilter as AseFrechet
from ase.filters import UnitCellFilter as AseUnit
from ase.optimize import FIRE as AseFIRE

from batchmd.data import Batch
from batchmd.dynamics import ConvergenceHook, FusedStage
from batchmd.dynamics.cell_filter import GPA, FrechetCellFilter, UnitCellFilter
from batchmd.dynamics.fire import FIRE
from batchmd.kernels.cell import matrix_function_check
from batchmd.models.lj import LennardJones

from cell_helpers import CUTOFF, EPS, SIGMA, argon_cell, ase_relax, ase_trajectory, drive, lj_calc, max_deviation

FILTERS = {"frechet": (FrechetCellFilter, AseFrechet), "unit": (UnitCellFilter, AseUnit)}
OPTIONS = {
    "plain": {},
    "pressure": {"scalar_pressure": 0.002},
    "hydrostatic": {"hydrostatic_strain": True},
    "hydrostatic+pressure": {"hydrostatic_strain": True, "scalar_pressure": -0.001},
    "constant_volume": {"constant_volume": True},
    "mask": {"mask": [1, 1, 0, 0, 0, 1]},
}


def test_matrix_functions_match_scipy():
    rng = np.random.default_rng(0)
    worst = [0.0, 0.0, 0.0]
    for scale in (1e-4, 0.05, 0.3, 1.0, 2.0):
        for _ in range(4):
            a = scale * rng.normal(size=(3, 3))
            e = rng.normal(size=(3, 3))
            exp_a, log_exp_a, frechet = matrix_function_check(a, e)
            ref = sl.expm(a)
            worst[0] = max(worst[0], np.abs(exp_a - ref).max() / np.abs(ref).max())
            worst[1] = max(worst[1], np.abs(log_exp_a - sl.logm(ref)).max())
            ref_d = sl.expm_frechet(a, e, compute_expm=False)
            worst[2] = max(worst[2], np.abs(frechet - ref_d).max() / np.abs(ref_d).max())
    assert worst[0] < 1e-13 and worst[1] < 1e-12 and worst[2] < 1e-13, worst


# ASE's FrechetCellFilter costs ~0.05 s per force call (scipy logm + 9 expm_frechet): its
# less common options run with the slow tests.
CASES = [(kind, option) for kind in FILTERS for option in OPTIONS]
CASES = [pytest.param(k, o, marks=pytest.mark.slow) if k == "frechet" and o in ("constant_volume", "mask",
         "hydrostatic+pressure") else (k, o) for k, o in CASES]


@pytest.mark.parametrize("kind,option", CASES)
def test_fire_with_cell_filter_matches_ase_step_for_step(kind, option):
    ours_cls, ase_cls = FILTERS[kind]
    kwargs = OPTIONS[option]
    systems = [argon_cell(1), argon_cell(2, repeat=(2, 1, 1))]
    n_steps = 50
    batch, traj = drive(FIRE(model=lambda b: None, cell_filter=ours_cls(**kwargs)), systems, n_steps)
    ptr = batch.ptr.tolist()
    worst = 0.0
    for k, atoms in enumerate(systems):
        ref = ase_trajectory(atoms, AseFIRE, n_steps, ase_cls, kwargs)
        worst = max(worst, max_deviation(traj, ptr, k, ref))
        if option not in ("constant_volume", "mask"):
            assert np.abs(ref[-1][1] - atoms.cell[:]).max() > 0.1  # the cell really moved
    print(f"FIRE + {kind} {option}: max |Δx|, |Δcell| over {n_steps} steps {worst:.1e} Å")
    assert worst < 1e-8


def test_filter_fmax_is_ases_fmax_through_the_filter():
    atoms = argon_cell(3, repeat=(1, 2, 1))
    atoms.calc = lj_calc()
    for ours_cls, ase_cls in FILTERS.values():
        for kwargs in OPTIONS.values():
            _, traj = drive(FIRE(model=lambda b: None, cell_filter=ours_cls(**kwargs)), [atoms], 3)
            batch = Batch.from_ase([atoms], dtype=torch.float64)
            batch.set_field("stress", torch.from_numpy(atoms.get_stress(voigt=False))[None], "system")
            batch.set_field("forces", torch.from_numpy(atoms.get_forces()), "atom")
            for name in ("stage", "status"):
                batch.set_field(name, torch.zeros(1, dtype=torch.int32), "system")
            filt = ours_cls(**kwargs)
            filt.init_state(batch, torch.ones(1, dtype=torch.bool))
            ref = np.linalg.norm(ase_cls(atoms, **kwargs).get_forces(), axis=1).max()
            assert float(filt.fmax(batch)[0]) == pytest.approx(ref, rel=1e-12, abs=1e-15)


def relax_systems(seed_list, pressures=None):
    return [argon_cell(seed, repeat=(1, 1, 2) if seed % 2 else (1, 1, 1)) for seed in seed_list]


@pytest.mark.parametrize("kind", list(FILTERS))
def test_fire_cell_relaxation_with_batchmd_lj_matches_ase(kind):
    """The whole loop with batchmd's LJ: relaxed cells, positions, energies and step counts equal ASE's
    (one system at zero pressure, one at 0.003 eV/Å^3, in one batch)."""
    ours_cls, ase_cls = FILTERS[kind]
    systems = relax_systems([4, 5])
    pressures = [0.0, 0.003]
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF)
    filt = ours_cls(scalar_pressure=torch.tensor(pressures, dtype=torch.float64))
    relax = FIRE(model, cell_filter=filt, convergence_hook=ConvergenceHook.from_forces(1e-4))
    out = relax.run(Batch.from_ase(systems, dtype=torch.float64), n_steps=2000)
    ptr = out.ptr.tolist()
    for k, atoms in enumerate(systems):
        atoms, nsteps = ase_relax(atoms, AseFIRE, 1e-4, 2000, ase_cls, {"scalar_pressure": pressures[k]})
        assert bool(out["converged"][k]) and int(out["n_steps"][k]) == nsteps
        assert np.abs(out.cell[k].numpy() - atoms.cell[:]).max() < 1e-8
        assert np.abs(out.positions[ptr[k]:ptr[k + 1]].numpy() - atoms.positions).max() < 1e-8
        assert float(out.energies[k, 0]) == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        assert float(out["filter_fmax"][k]) < 1e-4


def test_model_without_stress_is_refused():
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF, compute_stress=False)
    with pytest.raises(ValueError, match="needs the stress"):
        FIRE(model, cell_filter=FrechetCellFilter(), n_steps=5).run(Batch.from_ase([argon_cell(1)], dtype=torch.float64))
    batch = Batch.from_ase([argon_cell(1)], dtype=torch.float64)
    batch.set_field("forces", torch.zeros_like(batch.positions), "atom")
    for name in ("stage", "status"):
        batch.set_field(name, torch.zeros(1, dtype=torch.int32), "system")
    fire = FIRE(model=lambda b: None, cell_filter=UnitCellFilter())
    fire.init_state(batch, torch.ones(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="stress"):
        fire.pre_force(batch, 0)


def test_bad_filter_arguments():
    with pytest.raises(ValueError, match="mask"):
        FrechetCellFilter(mask=[1, 1, 1])
    with pytest.raises(ValueError, match="finite"):
        UnitCellFilter(scalar_pressure=float("nan"))
    with pytest.raises(ValueError, match="> 0"):
        UnitCellFilter(cell_factor=0.0)


def test_batch_invariance_and_per_system_options():
    """Each system's relaxation is bitwise the same alone and in a mixed batch with other options."""
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF)
    systems = relax_systems([6, 7, 8])
    pressure = torch.tensor([0.0, 0.004, -0.002], dtype=torch.float64)
    hydro = torch.tensor([False, True, False])
    filt = FrechetCellFilter(scalar_pressure=pressure, hydrostatic_strain=hydro)
    mixed = FIRE(model, cell_filter=filt, convergence_hook=ConvergenceHook.from_forces(1e-3)).run(
        Batch.from_ase(systems, dtype=torch.float64), n_steps=600)
    ptr = mixed.ptr.tolist()
    for k, atoms in enumerate(systems):
        alone_filter = FrechetCellFilter(scalar_pressure=float(pressure[k]), hydrostatic_strain=bool(hydro[k]))
        alone = FIRE(model, cell_filter=alone_filter, convergence_hook=ConvergenceHook.from_forces(1e-3)).run(
            Batch.from_ase([atoms], dtype=torch.float64), n_steps=600)
        assert torch.equal(alone.cell[0], mixed.cell[k])
        assert torch.equal(alone.positions, mixed.positions[ptr[k]:ptr[k + 1]])
        assert int(alone["n_steps"][0]) == int(mixed["n_steps"][k])
    assert mixed["filter_pressure"].tolist() == pressure.tolist()


def test_pressure_from_a_field_travels_with_each_system_through_refills():
    """Inflight: every sample brings its own pressure (a system field); refills keep it with its system."""
    from batchmd.ase import AtomsDataset
    from batchmd.dynamics import SizeAwareSampler
    from batchmd.dynamics.sinks import HostMemory

    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF)
    pressures = [0.0, 0.003, -0.001, 0.006, 0.001]
    frames = []
    for k, p in enumerate(pressures):
        atoms = argon_cell(10 + k)
        atoms.info["pressure"] = p  # eV/Å^3, becomes the system field "pressure"
        frames.append(atoms)
    sampler = SizeAwareSampler(AtomsDataset(frames), max_atoms=8)
    sink = HostMemory(capacity=10)
    relax = FIRE(model, cell_filter=UnitCellFilter(scalar_pressure="pressure"),
                 convergence_hook=ConvergenceHook.from_forces(1e-3), n_steps=1000)
    assert FusedStage([relax], sampler=sampler, sinks=[sink], refill_frequency=3).run(None) is None
    done = sink.drain()
    assert done.num_graphs == len(pressures)
    for k in range(done.num_graphs):
        index = int(done["input_index"][k])
        atoms, nsteps = ase_relax(frames[index], AseFIRE, 1e-3, 1000, AseUnit, {"scalar_pressure": pressures[index]})
        assert int(done["n_steps"][k]) == nsteps
        assert np.abs(done.cell[k].numpy() - atoms.cell[:]).max() < 1e-8
        assert float(done["filter_pressure"][k]) == pressures[index]


def test_gpa_constant():
    from ase.units import GPa

    assert GPA == pytest.approx(GPa, rel=1e-12)


def test_equation_of_state_matches_ase():
    """LJ argon relaxed (LBFGS + FrechetCellFilter) at several pressures: volumes and energies equal
    ASE's; volume falls with pressure; the bulk modulus from the curve is positive."""
    from ase.optimize import LBFGS as AseLBFGS

    from batchmd.dynamics.lbfgs import LBFGS

    pressures_gpa = [-0.1, 0.0, 0.3, 1.0, 3.0]
    systems = [argon_cell(20, strain=0.03, rattle=0.05) for _ in pressures_gpa]
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF)
    filt = FrechetCellFilter(scalar_pressure=torch.tensor(pressures_gpa, dtype=torch.float64) * GPA)
    out = LBFGS(model, cell_filter=filt, convergence_hook=ConvergenceHook.from_forces(1e-5)).run(
        Batch.from_ase(systems, dtype=torch.float64), n_steps=1000)
    assert bool(out["converged"].all())
    volumes = torch.linalg.det(out.cell).abs().numpy()
    worst_v = worst_e = 0.0
    for k, p in enumerate(pressures_gpa):
        atoms, _ = ase_relax(systems[k], AseLBFGS, 1e-5, 1000, AseFrechet, {"scalar_pressure": p * GPA})
        worst_v = max(worst_v, abs(volumes[k] - atoms.get_volume()) / atoms.get_volume())
        worst_e = max(worst_e, abs(float(out.energies[k, 0]) - atoms.get_potential_energy()))
    print(f"EOS over {pressures_gpa} GPa: max relative |ΔV| {worst_v:.1e}, max |ΔE| {worst_e:.1e} eV")
    assert worst_v < 1e-10 and worst_e < 1e-10
    assert np.all(np.diff(volumes) < 0)
    bulk_modulus = -volumes[1] * (pressures_gpa[2] - pressures_gpa[0]) / (volumes[2] - volumes[0])
    assert 0.5 < bulk_modulus < 10.0  # GPa (LJ argon at 0 K: a few GPa)


def test_fixed_atoms_follow_the_cell_as_in_ase():
    """FixAtoms (the 'fixed' atom field) with a cell filter: the loop zeroes their forces, so they keep
    their place in the undeformed frame and follow the cell -- what ASE does (set_cell scales them)."""
    from ase.constraints import FixAtoms

    atoms = argon_cell(30, repeat=(2, 1, 1))
    atoms.set_constraint(FixAtoms(indices=[0, 3]))
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF)
    out = FIRE(model, cell_filter=UnitCellFilter(), n_steps=50).run(Batch.from_ase([atoms], dtype=torch.float64))
    ref = atoms.copy()
    ref.set_constraint(FixAtoms(indices=[0, 3]))
    ref.calc = lj_calc()
    opt = AseFIRE(AseUnit(ref), logfile=None)
    for _ in range(50):
        opt.step()
    assert np.abs(out.cell[0].numpy() - ref.cell[:]).max() < 1e-8
    assert np.abs(out.positions.numpy() - ref.positions).max() < 1e-8
    assert np.abs(ref.cell[:] - atoms.cell[:]).max() > 0.05


def test_neighbor_lists_stay_exact_while_the_cell_changes():
    """At every step of a cell relaxation under pressure (cells shrink ~10% in volume, smaller than twice
    the cutoff), batchmd's LJ energy, forces and stress equal ASE's at the same positions and cell; the
    strain-aware skin test keeps some lists across cell changes (fewer builds than steps)."""
    systems = [argon_cell(40, strain=0.05), argon_cell(41, repeat=(1, 2, 1), strain=0.05)]
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF, skin=1.0)
    relax = FIRE(model, cell_filter=FrechetCellFilter(scalar_pressure=1.0 * GPA), n_steps=80)
    loop = FusedStage([relax])
    batch = Batch.from_ase(systems, dtype=torch.float64)
    calcs = [atoms.copy() for atoms in systems]
    for atoms in calcs:
        atoms.calc = lj_calc()
    worst = {"energy": 0.0, "forces": 0.0, "stress": 0.0}
    builds = 0
    volume0 = torch.linalg.det(batch.cell).abs()
    for _ in range(80):
        loop.step(batch)
        builds += int(torch.equal(batch["_nl_ref_cell"][0], batch.cell[0]))
        ptr = batch.ptr.tolist()
        for k, atoms in enumerate(calcs):
            atoms.set_cell(batch.cell[k].numpy())
            atoms.positions = batch.positions[ptr[k]:ptr[k + 1]].numpy()
            worst["energy"] = max(worst["energy"], abs(float(batch.energies[k, 0]) - atoms.get_potential_energy()))
            worst["forces"] = max(worst["forces"], np.abs(batch.forces[ptr[k]:ptr[k + 1]].numpy() - atoms.get_forces()).max())
            worst["stress"] = max(worst["stress"], np.abs(batch.stress[k].numpy() - atoms.get_stress(voigt=False)).max())
    shrink = float((torch.linalg.det(batch.cell).abs() / volume0).min())
    print(f"neighbor lists under cell relaxation: {worst}, system 0 built {builds} times in 80 steps, V/V0 {shrink:.3f}")
    assert worst["energy"] < 1e-11 and worst["forces"] < 1e-11 and worst["stress"] < 1e-12
    assert shrink < 0.95
    assert 1 <= builds < 80


def test_cli_relax_cell_full_with_pressure_and_lbfgs_matches_ase(tmp_path, capsys):
    """``batchmd relax --cell full --pressure GPa --optimizer lbfgs`` equals ASE's LBFGS(FrechetCellFilter)."""
    import ase.io
    from ase.optimize import LBFGS as AseLBFGS

    from batchmd.cli import main

    frames = [argon_cell(50)]
    path = tmp_path / "in.extxyz"
    ase.io.write(path, frames)
    frames = ase.io.read(path, ":")  # the reference starts from the file's (rounded) coordinates too
    out = tmp_path / "out.extxyz"
    args = ["relax", str(path), "-o", str(out), "--fmax", "1e-4", "--max-steps", "500", "--cell", "full",
            "--pressure", "0.5", "--optimizer", "lbfgs", "--quiet", "--cutoff", str(CUTOFF)]
    assert main(args) == 0
    for atoms, original in zip(ase.io.read(out, ":"), frames):
        ref, nsteps = ase_relax(original, AseLBFGS, 1e-4, 500, AseFrechet, {"scalar_pressure": 0.5 * GPA})
        assert atoms.info["converged"] is True and atoms.info["n_steps"] == nsteps
        assert atoms.info["fmax"] < 1e-4  # ASE's fmax through the filter
        assert np.abs(atoms.cell[:] - ref.cell[:]).max() < 1e-8
        assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    assert main(["relax", str(path), "-o", str(tmp_path / "fire.extxyz"), "--cell", "hydrostatic", "--quiet",
                 "--fmax", "1e-3", "--cutoff", str(CUTOFF)]) == 0
    for atoms, original in zip(ase.io.read(tmp_path / "fire.extxyz", ":"), frames):
        ref, nsteps = ase_relax(original, AseFIRE, 1e-3, 500, AseFrechet, {"hydrostatic_strain": True})
        assert atoms.info["n_steps"] == nsteps and np.abs(atoms.cell[:] - ref.cell[:]).max() < 1e-8
    # the cell options are checked before any input is read
    for bad, message in ((["--pressure", "1.0"], "variable cell"), (["--cell", "shape"], "invalid choice")):
        capsys.readouterr()
        assert main(["relax", str(path), "-o", str(tmp_path / "x.extxyz"), *bad]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("method", ["fire", "lbfgs"])
def test_steady_state_step_has_no_host_reads_and_no_allocations(method):
    from torch.profiler import ProfilerActivity, profile

    from batchmd.dynamics.lbfgs import LBFGS
    from test_hot_path import _argon_batch, count_host_reads

    model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
    cls = FIRE if method == "fire" else LBFGS
    dynamics = cls(model, cell_filter=FrechetCellFilter(scalar_pressure=0.001),
                   convergence_hook=ConvergenceHook.from_forces(1e-9))
    batch = _argon_batch()
    for _ in range(4):  # prime, first build, recorded launches
        dynamics.step(batch)
    with count_host_reads() as reads:
        for _ in range(5):
            dynamics.step(batch)
    assert reads == [], f"{method}: host reads in the steady-state step: {reads}"
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(5):
            dynamics.step(batch)
    allocations = [e.name for e in prof.events() if e.cpu_memory_usage > 0]
    assert allocations == [], f"{method}: allocations in the steady-state step: {allocations}"


def test_non_periodic_system_with_a_cell_filter_fails_alone():
    """A cluster (no cell) given a cell filter: a batch handed to the loop is refused before anything moves
    (admission); served by a sampler during a run it is written as FAILED (failure bit NOT_PERIODIC), never
    'converged', and the crystal beside it relaxes as usual. The device-side guard (failure bit CELL) still
    catches a cell that goes bad during the run."""
    import warnings

    from ase.cluster import Icosahedron

    from batchmd.ase import AtomsDataset
    from batchmd.dynamics import FusedStage, SizeAwareSampler
    from batchmd.dynamics.sinks import HostMemory
    from batchmd.dynamics.status import FailureReason, SystemStatus, failure_text

    cluster = Icosahedron("Ar", noshells=2, latticeconstant=5.4)
    cluster.rattle(0.1, seed=1)
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF)
    relax = FIRE(model, cell_filter=FrechetCellFilter(), convergence_hook=ConvergenceHook.from_forces(1e-3),
                 n_steps=300)
    with pytest.raises(ValueError, match="system 0 is not periodic in all three directions"):
        relax.run(Batch.from_ase([cluster, argon_cell(1)], dtype=torch.float64))
    sampler = SizeAwareSampler(AtomsDataset([cluster, argon_cell(1)], dtype=torch.float64), max_atoms=20)
    memory = HostMemory(capacity=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FusedStage([relax], sampler=sampler, sinks=[memory]).run()
    out = memory.drain()
    out = out.index_select(torch.argsort(out["system_id"].reshape(-1)))
    assert out["status"].tolist() == [int(SystemStatus.FAILED), int(SystemStatus.CONVERGED)]
    assert int(out["failure"][0]) == int(FailureReason.NOT_PERIODIC)
    assert "periodic" in failure_text(int(out["failure"][0]))
    assert "cell filter" in failure_text(int(FailureReason.CELL))
