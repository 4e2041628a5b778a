"""ASE: FIRE + LennardJones one structure at a time (the reference), Langevin for W2.

ASE's final W1 energies are the reference every other peer is checked against.
"""

from __future__ import annotations

import numpy as np

from benchmarks import workloads as wl
from benchmarks.common import Result, Timer, require

NAME = "ase"


def setup() -> None:
    require("ase")


def _calculator():
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=wl.SIGMA, epsilon=wl.EPSILON, rc=wl.CUTOFF, smooth=False)


class _Counting:
    """Counts the calculator's force evaluations (ASE caches repeated requests)."""

    def __init__(self, calc):
        self.calc = calc
        self.count = 0
        original = calc.calculate

        def calculate(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        calc.calculate = calculate


def run_w1(structures) -> Result:
    from ase.optimize import FIRE

    energies, steps, converged, evals, atom_evals = [], [], [], 0, 0
    with Timer() as t:
        for atoms in structures:
            counter = _Counting(_calculator())
            atoms.calc = counter.calc
            opt = FIRE(atoms, logfile=None)
            ok = opt.run(fmax=wl.FMAX, steps=wl.FIRE_MAX_STEPS)
            energies.append(float(atoms.get_potential_energy()))
            steps.append(int(opt.nsteps))
            converged.append(bool(ok))
            evals += counter.count
            atom_evals += counter.count * len(atoms)
    return Result(NAME, "W1", t.elapsed, atom_evals, evals, energies, steps, converged,
                  variant="FIRE, one at a time")


def run_w2(structures, n_steps: int = wl.W2_STEPS) -> Result:
    from ase import units
    from ase.md.langevin import Langevin

    with Timer() as t:
        for i, atoms in enumerate(structures):
            atoms.calc = _calculator()
            dyn = Langevin(atoms, timestep=wl.W2_DT * units.fs, temperature_K=wl.W2_TEMPERATURE,
                           friction=wl.W2_FRICTION / units.fs, rng=np.random.default_rng(i))
            dyn.run(n_steps)
    n = wl.n_atoms(structures)
    return Result(NAME, "W2", t.elapsed, n * n_steps, len(structures) * n_steps,
                  variant="Langevin, one at a time")


W3_MAX_STEPS = 3  # ASE's LJ does ~24k atom-steps/s: 1,000 steps on 32k atoms is ~20 min


def run_w3(atoms, n_steps: int) -> Result:
    from ase import units
    from ase.md.verlet import VelocityVerlet

    run_steps = min(n_steps, W3_MAX_STEPS)
    atoms.calc = _calculator()
    dyn = VelocityVerlet(atoms, timestep=wl.W3_DT * units.fs)
    atoms.get_forces()  # neighbor list built outside the timed region, as for other peers
    with Timer() as t:
        dyn.run(run_steps)
    scale = n_steps / run_steps
    return Result(NAME, "W3", t.elapsed * scale, len(atoms) * n_steps, n_steps,
                  extrapolated_from=run_steps if run_steps < n_steps else None,
                  variant="VelocityVerlet")
