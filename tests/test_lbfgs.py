"""LBFGS against ase.optimize.LBFGS step for step, with and without cell filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.cluster import Icosahedron
from ase.filters import FrechetCellFilter as AseFrechet
from ase.filters import UnitCellFilter as AseUnit
from ase.optimize import FIRE as AseFIRE
from ase.optimize import LBFGS as AseLBFGS

from batchmd.data import Batch
from batchmd.dynamics import ConvergenceHook
from batchmd.dynamics.cell_filter import FrechetCellFilter, UnitCellFilter
from batchmd.dynamics.fire import FIRE
from batchmd.dynamics.lbfgs import LBFGS
from batchmd.models.lj import LennardJones

from cell_helpers import CUTOFF, EPS, SIGMA, argon_cell, ase_relax, ase_trajectory, drive, max_deviation

FILTERS = {"frechet": (FrechetCellFilter, AseFrechet), "unit": (UnitCellFilter, AseUnit)}


def argon_cluster(seed=1):
    atoms = Icosahedron("Ar", noshells=2, latticeconstant=5.4)
    atoms.rattle(0.15, seed=seed)
    atoms.center(vacuum=6.0)
    return atoms


@pytest.mark.parametrize("params", [{}, {"memory": 3, "maxstep": 0.05, "damping": 0.8, "alpha": 50.0}])
def test_lbfgs_matches_ase_step_for_step(params):
    systems = [argon_cluster(), argon_cell(3, repeat=(2, 1, 1))]
    n_steps = 60
    batch, traj = drive(LBFGS(model=lambda b: None, **params), systems, n_steps)
    ptr = batch.ptr.tolist()
    worst = 0.0
    for k, atoms in enumerate(systems):
        worst = max(worst, max_deviation(traj, ptr, k, ase_trajectory(atoms, AseLBFGS, n_steps, **params)))
    assert np.abs(traj[-1][0] - batch.positions.numpy()).max() == 0.0
    print(f"LBFGS {params}: max |Δx| over {n_steps} steps {worst:.1e} Å")
    assert worst < 1e-8
    assert batch["lbfgs_iteration"].tolist() == [n_steps, n_steps]


CASES = [("unit", {}), ("unit", {"scalar_pressure": 0.002}), ("unit", {"hydrostatic_strain": True}),
         ("unit", {"hydrostatic_strain": True, "scalar_pressure": 0.001}), ("frechet", {}),
         ("frechet", {"scalar_pressure": 0.002}),
         pytest.param("frechet", {"hydrostatic_strain": True}, marks=pytest.mark.slow),
         pytest.param("frechet", {"constant_volume": True, "mask": [1, 1, 1, 0, 1, 1]}, marks=pytest.mark.slow)]


@pytest.mark.parametrize("kind,kwargs", CASES)
def test_lbfgs_with_cell_filter_matches_ase_step_for_step(kind, kwargs):
    ours_cls, ase_cls = FILTERS[kind]
    systems = [argon_cell(1), argon_cell(2, repeat=(1, 2, 1))]
    n_steps = 50
    params = {"memory": 10} if kwargs else {}
    batch, traj = drive(LBFGS(model=lambda b: None, cell_filter=ours_cls(**kwargs), **params), systems, n_steps)
    ptr = batch.ptr.tolist()
    worst = 0.0
    for k, atoms in enumerate(systems):
        ref = ase_trajectory(atoms, AseLBFGS, n_steps, ase_cls, kwargs, **params)
        worst = max(worst, max_deviation(traj, ptr, k, ref))
        assert np.abs(ref[-1][1] - atoms.cell[:]).max() > 0.05  # the cell really moved
    print(f"LBFGS + {kind} {kwargs}: max |Δx|, |Δcell| over {n_steps} steps {worst:.1e} Å")
    assert worst < 1e-8


def test_lbfgs_cell_relaxation_with_batchmd_lj_matches_ase():
    systems = [argon_cell(4), argon_cell(5, repeat=(1, 1, 2))]
    pressures = [0.0, 0.003]
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF)
    filt = FrechetCellFilter(scalar_pressure=torch.tensor(pressures, dtype=torch.float64))
    out = LBFGS(model, cell_filter=filt, convergence_hook=ConvergenceHook.from_forces(1e-4)).run(
        Batch.from_ase(systems, dtype=torch.float64), n_steps=1000)
    ptr = out.ptr.tolist()
    for k, atoms in enumerate(systems):
        atoms, nsteps = ase_relax(atoms, AseLBFGS, 1e-4, 1000, AseFrechet, {"scalar_pressure": pressures[k]})
        assert bool(out["converged"][k]) and int(out["n_steps"][k]) == nsteps
        assert np.abs(out.cell[k].numpy() - atoms.cell[:]).max() < 1e-8
        assert np.abs(out.positions[ptr[k]:ptr[k + 1]].numpy() - atoms.positions).max() < 1e-8
        assert float(out.energies[k, 0]) == pytest.approx(atoms.get_potential_energy(), abs=1e-10)


def test_fire_then_lbfgs_pipeline_attaches_a_fresh_filter_on_entry():
    """FIRE+cell -> LBFGS+cell over one batch: the second stage equals ASE's LBFGS with a new
    UnitCellFilter attached to FIRE's result (reference cell = the cell on entry)."""
    systems = [argon_cell(6), argon_cell(7, repeat=(2, 1, 1))]
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF)
    fire = FIRE(model, cell_filter=UnitCellFilter(), convergence_hook=ConvergenceHook.from_forces(0.02))
    lbfgs = LBFGS(model, cell_filter=UnitCellFilter(), convergence_hook=ConvergenceHook.from_forces(1e-4))
    out = (fire + lbfgs).run(Batch.from_ase(systems, dtype=torch.float64), n_steps=1000)
    ptr = out.ptr.tolist()
    for k, atoms in enumerate(systems):
        first, n_fire = ase_relax(atoms, AseFIRE, 0.02, 1000, AseUnit)
        second, n_lbfgs = ase_relax(first, AseLBFGS, 1e-4, 1000, AseUnit)
        assert int(out["n_steps"][k]) == n_fire + n_lbfgs and int(out["stage_steps"][k]) == n_lbfgs
        assert np.abs(out.cell[k].numpy() - second.cell[:]).max() < 1e-8
        assert np.abs(out.positions[ptr[k]:ptr[k + 1]].numpy() - second.positions).max() < 1e-8


def test_per_system_parameters_and_reset():
    systems = [argon_cluster(2), argon_cluster(2)]
    opt = LBFGS(model=lambda b: None, maxstep=torch.tensor([0.2, 0.05]), memory=torch.tensor([100, 4]))
    batch, traj = drive(opt, systems, 20)
    ptr = batch.ptr.tolist()
    ref0 = ase_trajectory(systems[0], AseLBFGS, 20, maxstep=0.2)
    ref1 = ase_trajectory(systems[1], AseLBFGS, 20, maxstep=0.05, memory=4)
    assert max_deviation(traj, ptr, 0, ref0) < 1e-8 and max_deviation(traj, ptr, 1, ref1) < 1e-8
    assert batch["lbfgs_memory"].tolist() == [100, 4]
    s_before = batch["_lbfgs_s"].clone()
    opt.init_state(batch, torch.tensor([False, True]))
    assert batch["lbfgs_iteration"].tolist() == [20, 0]
    assert torch.equal(batch["_lbfgs_s"][: ptr[1]], s_before[: ptr[1]])
    assert torch.count_nonzero(batch["_lbfgs_s"][ptr[1]:]) == 0


def test_bad_parameters():
    with pytest.raises(ValueError, match="maxstep"):
        LBFGS(model=lambda b: None, maxstep=1.5)
    with pytest.raises(ValueError, match="memory"):
        LBFGS(model=lambda b: None, memory=0)
    with pytest.raises(ValueError, match="alpha"):
        LBFGS(model=lambda b: None, alpha=-1.0)
