"""FIRE against ase.optimize.FIRE, step for step, driving the stage protocol by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.cluster import Icosahedron
from ase.optimize import FIRE as AseFIRE

from batchmd.data import Batch
from batchmd.dynamics.fire import FIRE

SIGMA, EPS = 3.405, 0.0104  # argon


def lj_calc():
    return AseLJ(sigma=SIGMA, epsilon=EPS, rc=2.5 * SIGMA, smooth=True)


def argon_cluster(seed=1):
    atoms = Icosahedron("Ar", noshells=2, latticeconstant=5.4)
    atoms.rattle(0.15, seed=seed)
    atoms.center(vacuum=6.0)
    return atoms


def argon_crystal(seed=2):
    atoms = bulk("Ar", "fcc", a=5.4, cubic=True) * (2, 2, 2)
    atoms.rattle(0.12, seed=seed)
    return atoms


def loop_fields(batch):
    for name in ("stage", "status"):
        batch.set_field(name, torch.zeros(batch.num_graphs, dtype=torch.int32), "system")


def write_ase_forces(batch, atoms_list):
    """Evaluate ASE's LJ on every system at the batch's current positions."""
    pos = batch.positions.detach().cpu().numpy()
    ptr = batch.ptr.tolist()
    forces = []
    for atoms, start, end in zip(atoms_list, ptr[:-1], ptr[1:]):
        atoms.positions = pos[start:end]
        forces.append(atoms.get_forces())
    batch.set_field("forces", torch.from_numpy(np.concatenate(forces)).to(batch.dtype), "atom")


def make_batch(systems, dtype=torch.float64):
    batch = Batch.from_ase(systems, dtype=dtype)
    loop_fields(batch)
    calcs = []
    for atoms in systems:
        copy = atoms.copy()
        copy.calc = lj_calc()
        calcs.append(copy)
    return batch, calcs


def ase_fire_trajectory(atoms, n_steps, return_optimizer=False, **kwargs):
    atoms = atoms.copy()
    atoms.calc = lj_calc()
    opt = AseFIRE(atoms, logfile=None, **kwargs)
    traj = []
    for _ in range(n_steps):
        opt.step()
        traj.append(atoms.get_positions().copy())
    return (traj, opt) if return_optimizer else traj


def run_fire(fire, batch, calcs, n_steps):
    fire.init_state(batch, torch.ones(batch.num_graphs, dtype=torch.bool))
    write_ase_forces(batch, calcs)
    traj = []
    for _ in range(n_steps):
        fire.pre_force(batch, 0)
        write_ase_forces(batch, calcs)
        fire.post_force(batch, 0)
        traj.append(batch.positions.clone().numpy())
    return traj


@pytest.mark.parametrize("params", [{}, {"dt": 0.05, "maxstep": 0.1, "Nmin": 2, "finc": 1.2, "fa": 0.95}])
def test_fire_matches_ase_step_for_step(params):
    systems = [argon_cluster(), argon_crystal()]
    n_steps = 40
    batch, calcs = make_batch(systems)
    ours = run_fire(FIRE(model=lambda b: None, **params), batch, calcs, n_steps)
    ptr = batch.ptr.tolist()
    worst = 0.0
    for k, atoms in enumerate(systems):
        ref = ase_fire_trajectory(atoms, n_steps, **params)
        for step in range(n_steps):
            dev = np.abs(ours[step][ptr[k] : ptr[k + 1]] - ref[step]).max()
            worst = max(worst, dev)
            assert dev < 1e-8, f"system {k} step {step}: {dev}"
    # moved a lot: the comparison is not trivially satisfied
    assert np.abs(ours[-1] - ours[0]).max() > 0.05
    print(f"max |x - x_ASE| over {n_steps} FIRE steps: {worst:.2e} Å")


def test_fire_uphill_reset_and_first_step_follow_ase():
    """A large dt forces uphill steps (v·f < 0): exercises the reset branch and dt growth."""
    params = {"dt": 0.6, "dtmax": 2.0, "maxstep": 0.5, "Nmin": 1}
    systems = [argon_cluster(seed=5)]
    batch, calcs = make_batch(systems)
    fire = FIRE(model=lambda b: None, **params)
    ours = run_fire(fire, batch, calcs, 30)
    ref, opt = ase_fire_trajectory(systems[0], 30, return_optimizer=True, **params)
    assert max(np.abs(a - b).max() for a, b in zip(ours, ref)) < 1e-8
    assert float(batch["fire_dt"][0]) == pytest.approx(opt.dt, rel=1e-12)
    assert float(batch["fire_alpha"][0]) == pytest.approx(opt.a, rel=1e-12)
    assert int(batch["fire_nsteps"][0]) == opt.Nsteps


def test_fire_per_system_parameters_and_frozen_systems():
    """Tensor parameters apply per system; systems in another stage or not ACTIVE do not move."""
    systems = [argon_cluster(seed=1), argon_cluster(seed=1), argon_cluster(seed=1)]
    batch, calcs = make_batch(systems)
    batch["stage"][2] = 1  # not in stage 0
    fire = FIRE(model=lambda b: None, dt=torch.tensor([0.1, 0.05, 0.1]), maxstep=torch.tensor([0.2, 0.1, 0.2]))
    start = batch.positions.clone()
    ours = run_fire(fire, batch, calcs, 20)
    ptr = batch.ptr.tolist()
    ref0 = ase_fire_trajectory(systems[0], 20, dt=0.1, maxstep=0.2)
    ref1 = ase_fire_trajectory(systems[1], 20, dt=0.05, maxstep=0.1)
    assert np.abs(ours[-1][ptr[0] : ptr[1]] - ref0[-1]).max() < 1e-8
    assert np.abs(ours[-1][ptr[1] : ptr[2]] - ref1[-1]).max() < 1e-8
    assert torch.equal(batch.positions[ptr[2] :], start[ptr[2] :])
    assert batch["fire_dtmax"].tolist() == [1.0, 1.0, 1.0]
    assert batch["fire_nmin"].dtype == torch.int32


def test_fire_init_state_resets_only_masked_systems():
    systems = [argon_cluster(seed=3), argon_cluster(seed=4)]
    batch, calcs = make_batch(systems)
    fire = FIRE(model=lambda b: None)
    run_fire(fire, batch, calcs, 10)
    dt_before = batch["fire_dt"].clone()
    v_before = batch["fire_velocities"].clone()
    fire.init_state(batch, torch.tensor([False, True]))
    ptr = batch.ptr.tolist()
    assert batch["fire_dt"][0] == dt_before[0] and batch["fire_dt"][1] == 0.1
    assert batch["fire_nsteps"].tolist()[1] == -1
    assert torch.equal(batch["fire_velocities"][: ptr[1]], v_before[: ptr[1]])
    assert torch.count_nonzero(batch["fire_velocities"][ptr[1] :]) == 0


def test_fire_batch_invariance_bitwise():
    """A system's trajectory does not depend on its slot or on the other systems."""
    a, b, c = argon_cluster(seed=7), argon_crystal(seed=8), argon_cluster(seed=9)
    alone, calcs = make_batch([a])
    traj_alone = run_fire(FIRE(model=lambda b: None), alone, calcs, 25)
    mixed, calcs = make_batch([b, c, a])
    traj_mixed = run_fire(FIRE(model=lambda b: None), mixed, calcs, 25)
    start = mixed.ptr.tolist()[2]
    assert np.array_equal(traj_alone[-1], traj_mixed[-1][start:])


def test_fire_float32_runs_and_relaxes():
    systems = [argon_cluster(seed=11)]
    batch, calcs = make_batch(systems, dtype=torch.float32)
    fire = FIRE(model=lambda b: None)
    fire.init_state(batch, torch.ones(1, dtype=torch.bool))
    write_ase_forces(batch, calcs)
    fmax0 = batch.forces.norm(dim=1).max()
    for _ in range(150):
        fire.pre_force(batch, 0)
        write_ase_forces(batch, calcs)
    assert batch.positions.dtype == torch.float32
    assert batch.forces.norm(dim=1).max() < 0.05 * fmax0


def test_fire_zero_forces_do_not_produce_nan():
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [20, 0, 0]], cell=[40, 40, 40])
    batch, calcs = make_batch([atoms])
    fire = FIRE(model=lambda b: None)
    fire.init_state(batch, torch.ones(1, dtype=torch.bool))
    batch.set_field("forces", torch.zeros_like(batch.positions), "atom")
    for _ in range(3):
        fire.pre_force(batch, 0)
    assert torch.isfinite(batch.positions).all() and torch.isfinite(batch["fire_velocities"]).all()


class AseLJModel:
    """ASE's LJ calculator wrapped as a batchmd model (one host round trip per call; tests only)."""

    def __call__(self, batch):
        pos = batch.positions.detach().cpu().numpy()
        ptr = batch.ptr.tolist()
        forces, energies = [], []
        for k, (start, end) in enumerate(zip(ptr[:-1], ptr[1:])):
            atoms = Atoms(numbers=batch.atomic_numbers[start:end].numpy(), positions=pos[start:end],
                          cell=batch.cell[k].numpy(), pbc=batch.pbc[k].numpy())
            atoms.calc = lj_calc()
            forces.append(atoms.get_forces())
            energies.append(atoms.get_potential_energy())
        return {"forces": torch.from_numpy(np.concatenate(forces)).to(batch.dtype),
                "energy": torch.tensor(energies, dtype=batch.dtype).reshape(-1, 1)}


def test_fire_in_the_loop_matches_ase_and_converges():
    """FIRE.run (the FusedStage loop, convergence on fmax) reproduces ASE's FIRE positions."""
    from batchmd.dynamics import ConvergenceHook

    systems = [argon_cluster(), argon_crystal()]
    opt = FIRE(AseLJModel(), convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300)
    out = opt.run(Batch.from_ase(systems), check_frequency=5)
    assert out["status"].tolist() == [1, 1]
    ptr = out.ptr.tolist()
    for k, atoms in enumerate(systems):
        ref = ase_fire_trajectory(atoms, int(out["n_steps"][k]))[-1]
        assert np.abs(out.positions[ptr[k] : ptr[k + 1]].numpy() - ref).max() < 1e-8


def test_fire_state_follows_systems_through_slot_operations():
    """Reordering slots mid-run (index_select) does not change any system's trajectory."""
    systems = [argon_cluster(seed=3), argon_crystal(seed=4)]
    batch, calcs = make_batch(systems)
    fire = FIRE(model=lambda b: None, dt=torch.tensor([0.1, 0.07]))
    run_fire(fire, batch, calcs, 8)
    swapped = batch.index_select(torch.tensor([1, 0]))
    calcs_swapped = [calcs[1], calcs[0]]
    for _ in range(12):
        fire.pre_force(batch, 0)
        write_ase_forces(batch, calcs)
        fire.pre_force(swapped, 0)
        write_ase_forces(swapped, calcs_swapped)
    n0 = len(systems[0])
    assert torch.equal(batch.positions[:n0], swapped.positions[-n0:])
    assert torch.equal(batch.positions[n0:], swapped.positions[:-n0])
    assert batch["fire_dt"].tolist() == swapped["fire_dt"].flip(0).tolist()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_skipping_finished_systems_changes_nothing(dtype):
    """The loop skips converged systems in the model (LJ): every result is bitwise what full evaluations give."""
    from ase.build import bulk

    from batchmd.dynamics import FIRE, ConvergenceHook
    from batchmd.models.lj import LennardJones

    class Recomputing(LennardJones):
        supports_skip_finished = False

    frames = []
    for i, shape in enumerate([(2, 2, 2), (1, 2, 2), (2, 2, 3), (1, 1, 2)]):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(shape)
        atoms.rattle(0.02 + 0.08 * i, seed=i)
        frames.append(atoms)
    results = []
    for cls in (LennardJones, Recomputing):
        lj = cls(sigma=3.405, epsilon=0.0104, cutoff=8.5)
        fire = FIRE(lj, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300)
        results.append(fire.run(Batch.from_ase(frames, dtype=dtype)))
    skipped, full = results
    steps = skipped.n_steps.reshape(-1).tolist()
    assert len(set(steps)) > 1 and steps == full.n_steps.reshape(-1).tolist()
    for name in ("positions", "forces", "energies", "fmax", "fire_velocities"):
        assert torch.equal(skipped[name], full[name]), name


def test_a_new_loop_recomputes_finished_systems_it_did_not_evaluate():
    """Outputs a batch arrives with (another model's) are never kept by skipping finished systems."""
    from ase.build import bulk

    from batchmd.dynamics import FIRE, ConvergenceHook, FusedStage
    from batchmd.models.lj import LennardJones

    frames = []
    for i, shape in enumerate([(2, 2, 2), (1, 2, 2)]):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(shape)
        atoms.rattle(0.001 if i == 0 else 0.3, seed=i)
        frames.append(atoms)
    first = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5)
    fire = FIRE(first, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300)
    live = FusedStage([fire]).run(Batch.from_ase(frames, dtype=torch.float64), n_steps=3)
    assert live["status"].tolist() == [1, 0]  # the first converged, the second still moves
    other = LennardJones(sigma=3.405, epsilon=0.02, cutoff=8.5)
    again = FusedStage([FIRE(other, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300)]).run(
        live, n_steps=1)
    expected = other(again.index_select([0]))["energy"]
    assert torch.equal(again.energies[0], expected[0])
