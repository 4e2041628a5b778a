"""Equation of state of 50 EMT metal crystals: batchmd batched against ASE one structure at a time.

    PYTHONPATH=src:. python -m benchmarks.properties_eos --out benchmarks/properties_eos.md
    PYTHONPATH=src:. python -m benchmarks.properties_eos --quick          # 10 crystals

Workload: ``n`` fcc crystals of Cu, Al, Ni, Ag, Au, Pd, Pt (cycled), at each metal's EMT
lattice constant (found first with a quick ASE EOS, not timed), as 1-, 4-, 8- and 32-atom
cells, rattled by 0, 0.02 or 0.04 Å (seeded). Each: 9 volumes over +-6% (volume strain),
atoms relaxed with FIRE to fmax 0.01 eV/Å (at most 500 steps), Birch-Murnaghan fit
(``ase.eos.EquationOfState``).

- batchmd: :func:`batchmd.properties.compute_eos` with ``load_model("emt")`` (ASE's EMT
  through :class:`~batchmd.models.ase_calculator.ASECalculatorModel`), float64, all
  ``9 n`` points in one inflight-batched run (after a one-structure warm-up that compiles
  the Warp kernels, not timed).
- ASE: for each structure and volume, ``atoms.calc = EMT()``, ``ase.optimize.FIRE(atoms).run(fmax,
  500)``, then ``EquationOfState(volumes, energies, eos="birchmurnaghan").fit()``.

``--lj`` adds the same EOS for ``n`` Lennard-Jones argon crystals, batchmd's Warp LJ (a model
batchmd evaluates batched) against ASE's ``LennardJones(smooth=False)`` one at a time.

Reported: wall time of each side, the ratio, the time spent inside EMT's ``calculate`` on each
side (the rest is optimizer, batching and bookkeeping), optimizer steps, and the largest
relative difference of V0 and B0 between the two (they run the same FIRE step for step).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import types
from pathlib import Path

import numpy as np
import torch

METALS = ("Cu", "Al", "Ni", "Ag", "Au", "Pd", "Pt")
CELLS = ("primitive", "cubic", "primitive2", "cubic2")  # 1, 4, 8, 32 atoms
RATTLES = (0.0, 0.02, 0.04)
FMAX, MAX_STEPS, N_POINTS, STRAIN = 0.01, 500, 9, 0.06


def emt_lattice_constants() -> dict:
    """Each metal's EMT fcc lattice constant, Å (ASE single points of the cubic cell, BM fit)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.eos import EquationOfState

    out = {}
    for metal in METALS:
        guess = bulk(metal, "fcc", cubic=True).cell[0, 0]
        volumes, energies = [], []
        for a in guess * np.linspace(0.94, 1.06, 13):
            atoms = bulk(metal, "fcc", a=a, cubic=True)
            atoms.calc = EMT()
            volumes.append(atoms.get_volume())
            energies.append(atoms.get_potential_energy())
        v0, _, _ = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
        out[metal] = float((v0) ** (1 / 3))
    return out


def build_structures(n: int, seed: int = 0) -> list:
    """``n`` crystals: metals, cell sizes and rattles cycled (seeded)."""
    from ase.build import bulk

    a0 = emt_lattice_constants()
    rng = np.random.default_rng(seed)
    structures = []
    for i in range(n):
        metal = METALS[i % len(METALS)]
        kind = CELLS[(i // len(METALS)) % len(CELLS)]
        if kind.startswith("primitive"):
            atoms = bulk(metal, "fcc", a=a0[metal])
        else:
            atoms = bulk(metal, "fcc", a=a0[metal], cubic=True)
        if kind.endswith("2"):
            atoms = atoms.repeat(2)
        rattle = RATTLES[i % len(RATTLES)]
        if rattle and len(atoms) > 1:
            atoms.rattle(rattle, seed=int(rng.integers(1 << 30)))
        structures.append(atoms)
    return structures


class _Timed:
    """Wraps an EMT instance's ``calculate`` to sum the seconds spent in it."""

    total = 0.0

    @classmethod
    def wrap(cls, calc):
        # a method bound to ``calc``: the per-system copies of ASECalculatorModel(per_system=True)
        # (copy.deepcopy) get it bound to themselves, so every copy is timed and computes its own results
        def calculate(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return type(self).calculate(self, *args, **kwargs)
            finally:
                cls.total += time.perf_counter() - start

        calc.calculate = types.MethodType(calculate, calc)
        return calc


class PerCellEMT:
    """A calculator router for ``ASECalculatorModel``: one EMT per (cell, numbers), as ASE's loop has one per
    structure, so each keeps its neighbor list between steps (one shared EMT rebuilds it for every system of
    every step). A diagnostic of where batchmd's EMT time goes, not part of batchmd."""

    def __init__(self) -> None:
        self.calcs = {}

    def _calc(self, atoms):
        key = (atoms.numbers.tobytes(), np.round(atoms.cell.array, 8).tobytes())
        if key not in self.calcs:
            from ase.calculators.emt import EMT

            self.calcs[key] = _Timed.wrap(EMT())
        return self.calcs[key]

    def get_potential_energy(self, atoms):
        return self._calc(atoms).get_potential_energy(atoms)

    def get_forces(self, atoms):
        return self._calc(atoms).get_forces(atoms)

    def get_stress(self, atoms):
        return self._calc(atoms).get_stress(atoms)


#: Lennard-Jones argon (sigma Å, epsilon eV, cutoff Å) of the ``--lj`` table.
AR_LJ = (3.405, 0.0104, 8.5125)


def argon_structures(n: int, seed: int = 0) -> list:
    """``n`` fcc argon crystals near the LJ minimum (a = 5.25 Å), 1/4/8/32-atom cells, rattled as the metals."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = CELLS[i % len(CELLS)]
        atoms = bulk("Ar", "fcc", a=5.25, cubic=kind.startswith("cubic"))
        if kind.endswith("2"):
            atoms = atoms.repeat(2)
        rattle = RATTLES[(i // len(CELLS)) % len(RATTLES)]
        if rattle and len(atoms) > 1:
            atoms.rattle(rattle, seed=int(rng.integers(1 << 30)))
        out.append(atoms)
    return out


def run_batchmd(structures, per_cell: bool = False, lj: bool = False) -> dict:
    from batchmd.models import load_model
    from batchmd.models.ase_calculator import ASECalculatorModel
    from batchmd.models.lj import LennardJones
    from batchmd.properties import compute_eos

    model = load_model("emt")
    if per_cell:
        model = ASECalculatorModel(PerCellEMT(), compute_stress=False)
    if lj:
        sigma, epsilon, cutoff = AR_LJ
        model, per_cell = LennardJones(sigma=sigma, epsilon=epsilon, cutoff=cutoff), True  # nothing to wrap
    compute_eos(structures[:1], model, n_points=N_POINTS, strain=STRAIN)  # warm-up: Warp kernels compiled
    _Timed.total = 0.0
    if not per_cell:
        _Timed.wrap(model.calculator)
    start, cpu = time.perf_counter(), time.process_time()
    results = compute_eos(structures, model, n_points=N_POINTS, strain=STRAIN, fmax=FMAX, max_steps=MAX_STEPS,
                          dtype=torch.float64)
    wall = time.perf_counter() - start
    return {"wall": wall, "cpu": time.process_time() - cpu, "model": _Timed.total, "results": results,
            "steps": int(sum(r.n_steps.sum() for r in results))}


def run_ase(structures, lj: bool = False) -> dict:
    from ase.calculators.emt import EMT
    from ase.calculators.lj import LennardJones
    from ase.eos import EquationOfState
    from ase.optimize import FIRE
    from ase.units import GPa

    from batchmd.properties.eos import eos_volume_strains, scaled_copies

    strains = eos_volume_strains(N_POINTS, STRAIN)
    _Timed.total = 0.0
    out, steps = [], 0
    start, cpu = time.perf_counter(), time.process_time()
    for atoms in structures:
        volumes, energies = [], []
        for copy in scaled_copies(atoms, strains):
            sigma, epsilon, cutoff = AR_LJ
            copy.calc = _Timed.wrap(LennardJones(sigma=sigma, epsilon=epsilon, rc=cutoff, smooth=False) if lj
                                    else EMT())
            opt = FIRE(copy, logfile=None)
            opt.run(fmax=FMAX, steps=MAX_STEPS)
            steps += opt.nsteps
            volumes.append(copy.get_volume())
            energies.append(copy.get_potential_energy())
        v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
        out.append((v0, e0, b / GPa))
    wall = time.perf_counter() - start
    return {"wall": wall, "cpu": time.process_time() - cpu, "model": _Timed.total, "results": out, "steps": steps}


def _line(label: str, side: dict, ase: dict) -> str:
    return (f"| {label} | {side['wall']:.2f} | {side['cpu']:.2f} | {side['model']:.2f} | "
            f"{side['wall'] - side['model']:.2f} | {side['steps']} | {ase['wall'] / side['wall']:.2f} |")


def report(n: int, structures, ours: dict, ase: dict, routed: dict, load: str) -> str:
    ok = sum(r.ok for r in ours["results"])
    dv = max(abs(r.V0_A3 / v - 1) for r, (v, _, _) in zip(ours["results"], ase["results"]) if r.ok)
    db = max(abs(r.B0_GPa / b - 1) for r, (_, _, b) in zip(ours["results"], ase["results"]) if r.ok)
    atoms = sum(len(a) for a in structures)
    lines = [
        f"# EOS benchmark: {n} EMT metal crystals x {N_POINTS} volumes (CPU)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        f"torch thread(s); shared with other jobs (load average {load}): wall times depend on the load, "
        "process CPU times much less; compare only ratios taken in one run.",
        f"Workload: {n} fcc crystals (Cu Al Ni Ag Au Pd Pt; 1/4/8/32-atom cells, {atoms} atoms in all; rattles "
        f"0/0.02/0.04 Å), {N_POINTS} volumes each over +-{100 * STRAIN:g}% volume, FIRE to fmax {FMAX} eV/Å "
        f"(<= {MAX_STEPS} steps), Birch-Murnaghan fit. {n * N_POINTS} relaxations.",
        "",
        "| side | wall (s) | CPU (s) | inside EMT.calculate (s) | rest (s) | FIRE steps | wall ratio ASE / side |",
        "|---|---|---|---|---|---|---|",
        *(_line(label, side, ase) for label, side in (
            ("batchmd `compute_eos` (one batched run)", ours),
            ("batchmd, one EMT per cell (diagnostic, `PerCellEMT`)", routed),
            ("ASE one structure / volume at a time", ase))),
        "",
        f"Agreement: {ok}/{n} structures ok; largest relative difference to ASE: V0 {dv:.1e}, B0 {db:.1e}.",
    ]
    return "\n".join(lines) + "\n"


def lj_report(n: int, structures, ours: dict, ase: dict) -> str:
    dv = max(abs(r.V0_A3 / v - 1) for r, (v, _, _) in zip(ours["results"], ase["results"]) if r.ok)
    db = max(abs(r.B0_GPa / b - 1) for r, (_, _, b) in zip(ours["results"], ase["results"]) if r.ok)
    lines = [
        "",
        f"## The same EOS for {n} Lennard-Jones argon crystals ({sum(len(a) for a in structures)} atoms; "
        f"sigma, epsilon, cutoff = {AR_LJ})",
        "",
        "| side | wall (s) | CPU (s) | inside the ASE calculator (s) | FIRE steps | wall ratio ASE / side |",
        "|---|---|---|---|---|---|",
        f"| batchmd `compute_eos` (Warp LJ, one batched run) | {ours['wall']:.2f} | {ours['cpu']:.2f} | - | "
        f"{ours['steps']} | {ase['wall'] / ours['wall']:.2f} |",
        f"| ASE `LennardJones(smooth=False)`, one at a time | {ase['wall']:.2f} | {ase['cpu']:.2f} | "
        f"{ase['model']:.2f} | {ase['steps']} | 1 |",
        "",
        f"Agreement: {sum(r.ok for r in ours['results'])}/{n} ok; largest relative difference: V0 {dv:.1e}, "
        f"B0 {db:.1e}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50, help="crystals (default 50)")
    parser.add_argument("--quick", action="store_true", help="10 crystals")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--lj", action="store_true",
                        help="also the same EOS for n Lennard-Jones argon crystals (batchmd's Warp LJ against ASE's "
                             "LennardJones(smooth=False)): a model batchmd evaluates batched")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    n = 10 if args.quick else args.n
    torch.set_num_threads(args.threads)
    structures = build_structures(n)
    before = os.getloadavg()[0]
    ours = run_batchmd(structures)
    ase = run_ase(structures)
    routed = run_batchmd(structures, per_cell=True)
    load = f"{before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    text = report(n, structures, ours, ase, routed, load)
    if args.lj:
        argon = argon_structures(n)
        ours, ase = run_batchmd(argon, lj=True), run_ase(argon, lj=True)
        text += lj_report(n, argon, ours, ase)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
