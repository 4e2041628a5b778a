"""Shared helpers of test_cell_filter.py, test_lbfgs.py and the property tests: argon cells, ASE-driven
stepping, one BLAS thread for ASE's cell filters."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ

from batchmd.data import Batch

SIGMA, EPS = 3.405, 0.0104  # argon
CUTOFF = 2.5 * SIGMA  # 8.51 Å: every cell below is smaller than twice the cutoff


def lj_calc():
    """ASE's Lennard-Jones matching batchmd's (``shift=True`` is ASE's ``smooth=False``)."""
    return AseLJ(sigma=SIGMA, epsilon=EPS, rc=CUTOFF, smooth=False)


def argon_cell(seed, repeat=(1, 1, 1), strain=0.04, rattle=0.1, a=5.6):
    """A strained, triclinic, rattled fcc argon cell (4 atoms per repeat; edges ~5.6 Å)."""
    atoms = bulk("Ar", "fcc", a=a, cubic=True)
    rng = np.random.default_rng(seed)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + strain * rng.normal(size=(3, 3))), scale_atoms=True)
    atoms = atoms.repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


def loop_fields(batch):
    for name in ("stage", "status"):
        batch.set_field(name, torch.zeros(batch.num_graphs, dtype=torch.int32), "system")


def write_ase_results(batch, atoms_list):
    """Forces and stress from ASE's LJ at the batch's current positions and cells."""
    pos = batch.positions.detach().cpu().numpy()
    cell = batch.cell.detach().cpu().numpy()
    ptr = batch.ptr.tolist()
    forces, stress = [], []
    for k, (atoms, start, end) in enumerate(zip(atoms_list, ptr[:-1], ptr[1:])):
        atoms.set_cell(cell[k])
        atoms.positions = pos[start:end]
        forces.append(atoms.get_forces())
        stress.append(atoms.get_stress(voigt=False))
    batch.set_field("forces", torch.from_numpy(np.concatenate(forces)).to(batch.dtype), "atom")
    batch.set_field("stress", torch.from_numpy(np.stack(stress)).to(batch.dtype), "system")


def drive(optimizer, systems, n_steps):
    """Step ``optimizer`` by hand on ``systems`` with ASE's forces/stress; returns the batch and
    the trajectory ``[(positions, cells)]`` after each step."""
    batch = Batch.from_ase(systems, dtype=torch.float64)
    loop_fields(batch)
    calcs = [atoms.copy() for atoms in systems]
    for atoms in calcs:
        atoms.calc = lj_calc()
    optimizer.init_state(batch, torch.ones(batch.num_graphs, dtype=torch.bool))
    write_ase_results(batch, calcs)
    traj = []
    for _ in range(n_steps):
        optimizer.pre_force(batch, 0)
        write_ase_results(batch, calcs)
        optimizer.post_force(batch, 0)
        traj.append((batch.positions.clone().numpy(), batch.cell.clone().numpy()))
    return batch, traj


def ase_trajectory(atoms, optimizer_cls, n_steps, filter_cls=None, filter_kwargs=None, **kwargs):
    """ASE's own trajectory ``[(positions, cell)]`` of ``optimizer_cls(filter_cls(atoms))``."""
    with one_blas_thread():
        return _ase_trajectory(atoms, optimizer_cls, n_steps, filter_cls, filter_kwargs, **kwargs)


def _ase_trajectory(atoms, optimizer_cls, n_steps, filter_cls, filter_kwargs, **kwargs):
    atoms = atoms.copy()
    atoms.calc = lj_calc()
    target = filter_cls(atoms, **(filter_kwargs or {})) if filter_cls is not None else atoms
    opt = optimizer_cls(target, logfile=None, **kwargs)
    traj = []
    for _ in range(n_steps):
        opt.step()
        traj.append((atoms.get_positions().copy(), atoms.cell[:].copy()))
    return traj


def max_deviation(ours, ptr, k, ref):
    """Largest |Δx| or |Δcell| (Å) of system ``k`` over a trajectory."""
    worst = 0.0
    for (pos, cell), (ref_pos, ref_cell) in zip(ours, ref):
        worst = max(worst, np.abs(pos[ptr[k]:ptr[k + 1]] - ref_pos).max(), np.abs(cell[k] - ref_cell).max())
    return worst


def one_blas_thread():
    """A context in which BLAS/OpenMP pools use one thread (``threadpoolctl``; a no-op without it).

    ASE's ``FrechetCellFilter`` calls scipy's ``logm``/``expm_frechet`` on 3x3 matrices at every
    force call: with multithreaded OpenBLAS on a loaded 2-core machine that is ~20x slower than
    with one thread. Wrap ASE reference relaxations of cells in it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a speed-up only (threadpoolctl is in the test extra)
        return contextlib.nullcontext()
    return threadpool_limits(1)


def ase_relax(atoms, optimizer_cls, fmax, steps, filter_cls=None, filter_kwargs=None, **kwargs):
    """ASE's ``optimizer.run(fmax, steps)`` with one force call per step (ASE's own ``run`` asks a
    filter for its forces three times per step, and FrechetCellFilter's are slow); returns
    ``(atoms, nsteps)`` with ASE's semantics (``fmax`` tested before each step, strictly below)."""
    with one_blas_thread():
        return _ase_relax(atoms, optimizer_cls, fmax, steps, filter_cls, filter_kwargs, **kwargs)


def _ase_relax(atoms, optimizer_cls, fmax, steps, filter_cls, filter_kwargs, **kwargs):
    atoms = atoms.copy()
    atoms.calc = lj_calc()
    target = filter_cls(atoms, **(filter_kwargs or {})) if filter_cls is not None else atoms
    opt = optimizer_cls(target, logfile=None, **kwargs)
    for nsteps in range(steps + 1):
        forces = target.get_forces()
        if np.linalg.norm(forces, axis=1).max() < fmax or nsteps == steps:
            return atoms, nsteps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "do not pass forces to step()": same numbers
            opt.step(forces)
