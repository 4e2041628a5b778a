"""Elastic tensors of 50 EMT fcc crystals: batchmd (one batched run) against ASE one structure and one strain at a time.

Both sides do the same work (issue 21): each crystal under the six Voigt strains at -1%, -0.5%,
+0.5%, +1% plus the unstrained cell (25 variants), ions relaxed at every strained cell with FIRE
to fmax 0.005 eV/Å (ASE's ``FIRE``; batchmd's FIRE reproduces it step for step), stress from
ASE's EMT, least-squares stress-strain fit. batchmd runs the 50 x 25 variants as one inflight
batch (:func:`batchmd.properties.elastic.compute_elastic`, EMT through
``load_model("emt")``); ASE loops over structures and variants with a fresh ``EMT()`` per
relaxation. The crystals mix Al Cu Ag Au Ni Pd Pt, primitive and conventional cells and
supercells (1 to 32 atoms), half of them rattled by 0.03 Å so the ions have work to do.

Also measured: the time batchmd spends inside EMT itself (the calculator's ``calculate``), so
the batching overhead is the rest; and the largest relative difference of C between the two.

Usage::

    PYTHONPATH=src python benchmarks/properties_elastic.py [--quick] [--n 50] [--models emt,lj] [--out FILE]

``--quick``: 8 crystals (a smoke run, seconds). One run each side (no repeats: minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
SHAPES = ("primitive", "conventional", "conv 2x1x1", "conv 2x2x1", "conv 2x2x2")
STRAINS = (-0.01, -0.005, 0.005, 0.01)
FMAX = 0.005
PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
LJ_A = {"Ar": 5.26, "Kr": 5.64, "Xe": 6.13}  # fcc lattice constants near the LJ presets' minima (Å)
LJ_FMAX = 1e-4  # soft LJ crystals need a tight fmax (see the docs' "Accuracy and fmax")


def crystals(n: int, metals=METALS):
    """``n`` fcc crystals: metals and cell shapes in turn, every other one rattled (seeded)."""
    from ase.build import bulk

    out = []
    rng = np.random.default_rng(21)
    for i in range(n):
        metal = metals[i % len(metals)]
        shape = SHAPES[(i // len(metals)) % len(SHAPES)]
        if shape == "primitive":
            atoms = bulk(metal, "fcc", a=LJ_A.get(metal))
        else:
            atoms = bulk(metal, "fcc", a=LJ_A.get(metal), cubic=True)
            reps = {"conventional": (1, 1, 1), "conv 2x1x1": (2, 1, 1), "conv 2x2x1": (2, 2, 1),
                    "conv 2x2x2": (2, 2, 2)}[shape]
            atoms = atoms.repeat(reps)
        if i % 2 == 1:
            atoms.positions += rng.normal(0.0, 0.03, atoms.positions.shape)
        out.append(atoms)
    return out


def ase_elastic(atoms, calculator, fmax=FMAX, strains=STRAINS, max_steps=500):
    """The reference: plain ASE, one strain at a time (FIRE, a fresh ``calculator()`` per relaxation),
    C[:, j] from np.polyfit; GPa."""
    from ase.optimize import FIRE
    from ase.units import GPa

    def stress(frame):
        frame.calc = calculator()
        FIRE(frame, logfile=None).run(fmax=fmax, steps=max_steps)
        return frame.get_stress(voigt=True) / GPa

    sigma0 = stress(atoms.copy())
    C = np.zeros((6, 6))
    for j, (a, b) in enumerate(PAIRS):
        e, sigma = [0.0], [sigma0]
        for m in strains:
            eps = np.zeros((3, 3))
            eps[a, b] += m / 2
            eps[b, a] += m / 2
            F = np.eye(3) + eps
            frame = atoms.copy()
            frame.set_cell(atoms.cell.array @ F.T)
            frame.positions = atoms.positions @ F.T
            e.append(m)
            sigma.append(stress(frame))
        C[:, j] = np.polyfit(e, np.array(sigma), 1)[0]
    return C


def _models(name):
    """(batchmd model, ASE calculator factory, structure metals, fmax, timed calculator or None)."""
    from batchmd.models import load_model

    if name == "emt":
        from ase.calculators.emt import EMT

        model = load_model("emt")
        return model, EMT, METALS, FMAX, model.calculator
    from ase.calculators.lj import LennardJones as AseLJ

    from batchmd.models.lj import LJ_PRESETS, LennardJones

    sigma, epsilon = LJ_PRESETS["Ar"]
    model = LennardJones(sigma=sigma, epsilon=epsilon, cutoff=3 * sigma)
    return model, lambda: AseLJ(sigma=sigma, epsilon=epsilon, rc=3 * sigma, smooth=False), ("Ar",), LJ_FMAX, None


def bench(name: str, n: int) -> list[tuple[str, str]]:
    from batchmd.properties.elastic import compute_elastic

    model, calculator, metals, fmax, timed = _models(name)
    structures = crystals(n, metals)
    atoms_total = sum(len(a) for a in structures)
    inside = {"seconds": 0.0, "calls": 0}
    if timed is not None:  # time spent inside the ASE calculator that batchmd's EMT model calls
        calculate = timed.calculate

        def timed_calculate(*a, **k):
            start = time.perf_counter()
            try:
                return calculate(*a, **k)
            finally:
                inside["seconds"] += time.perf_counter() - start
                inside["calls"] += 1

        timed.calculate = timed_calculate
    compute_elastic([structures[0]], model, fmax=fmax)  # warm-up (Warp kernels, imports): not timed
    inside.update(seconds=0.0, calls=0)

    start = time.perf_counter()
    results = compute_elastic(structures, model, strains=STRAINS, fmax=fmax, dtype=torch.float64)
    t_batchmd = time.perf_counter() - start
    steps = sum(sum(r.n_steps) for r in results)

    start = time.perf_counter()
    references = [ase_elastic(a, calculator, fmax=fmax) for a in structures]
    t_ase = time.perf_counter() - start

    ok = sum(r.ok for r in results)
    diff = max(float(np.abs(r.C - c).max() / np.abs(c).max()) for r, c in zip(results, references))
    rows = [
        (f"**{name}**: crystals / variants / atoms", f"{n} / {25 * n} / {atoms_total} (x25 per crystal)"),
        ("fmax (eV/Å); FIRE steps, all variants", f"{fmax:g}; {steps}"),
        ("batchmd, one batched run", f"{t_batchmd:.2f} s ({ok}/{n} ok)"),
    ]
    if timed is not None:
        rows.append(("  of which inside the ASE calculator", f"{inside['seconds']:.2f} s ({inside['calls']} calls)"))
    rows += [
        ("ASE one at a time", f"{t_ase:.2f} s"),
        ("ratio ASE / batchmd", f"{t_ase / t_batchmd:.2f}x"),
        ("largest relative difference of C", f"{diff:.1e}"),
    ]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 crystals")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--models", default="emt", help="comma-separated: emt, lj (default emt)")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    n = 8 if args.quick else args.n
    rows = []
    for name in args.models.split(","):
        if name not in ("emt", "lj"):
            raise SystemExit(f"--models: unknown model {name!r} (emt, lj)")
        rows += bench(name, n)
    header = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"python {platform.python_version()}, torch {torch.__version__}")
    lines = [f"Machine: {header}", "", "| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
