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

    PYTHONPATH=src python benchmarks/properties_elastic.py [--quick] [--n 50] [--out benchmarks/properties_elastic.md]

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


def crystals(n: int):
    """``n`` fcc crystals: metals and cell shapes in turn, every other one rattled (seeded)."""
    from ase.build import bulk

    out = []
    rng = np.random.default_rng(21)
    for i in range(n):
        metal = METALS[i % len(METALS)]
        shape = SHAPES[(i // len(METALS)) % len(SHAPES)]
        if shape == "primitive":
            atoms = bulk(metal, "fcc")
        else:
            atoms = bulk(metal, "fcc", cubic=True)
            reps = {"conventional": (1, 1, 1), "conv 2x1x1": (2, 1, 1), "conv 2x2x1": (2, 2, 1),
                    "conv 2x2x2": (2, 2, 2)}[shape]
            atoms = atoms.repeat(reps)
        if i % 2 == 1:
            atoms.positions += rng.normal(0.0, 0.03, atoms.positions.shape)
        out.append(atoms)
    return out


def ase_elastic(atoms, fmax=FMAX, strains=STRAINS, max_steps=500):
    """The reference: plain ASE, one strain at a time (FIRE, EMT), C[:, j] from np.polyfit; GPa."""
    from ase.calculators.emt import EMT
    from ase.optimize import FIRE
    from ase.units import GPa

    def stress(frame):
        frame.calc = EMT()
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 crystals")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    n = 8 if args.quick else args.n

    from batchmd.models import load_model
    from batchmd.properties.elastic import compute_elastic

    structures = crystals(n)
    atoms_total = sum(len(a) for a in structures)
    model = load_model("emt")
    inside = {"seconds": 0.0, "calls": 0}
    calculate = model.calculator.calculate

    def timed_calculate(*a, **k):
        start = time.perf_counter()
        try:
            return calculate(*a, **k)
        finally:
            inside["seconds"] += time.perf_counter() - start
            inside["calls"] += 1

    model.calculator.calculate = timed_calculate
    compute_elastic([structures[0]], model)  # warm-up (Warp kernels, imports): not timed
    inside.update(seconds=0.0, calls=0)

    start = time.perf_counter()
    results = compute_elastic(structures, model, strains=STRAINS, fmax=FMAX, dtype=torch.float64)
    t_batchmd = time.perf_counter() - start
    steps = sum(sum(r.n_steps) for r in results)

    start = time.perf_counter()
    references = [ase_elastic(a) for a in structures]
    t_ase = time.perf_counter() - start

    ok = sum(r.ok for r in results)
    diff = max(float(np.abs(r.C - c).max() / np.abs(c).max()) for r, c in zip(results, references))
    rows = [
        ("crystals / variants / atoms", f"{n} / {25 * n} / {atoms_total} (x25 per crystal)"),
        ("FIRE steps, all variants (batchmd)", f"{steps}"),
        ("batchmd, one batched run", f"{t_batchmd:.2f} s ({ok}/{n} ok)"),
        ("  of which inside EMT", f"{inside['seconds']:.2f} s ({inside['calls']} calls)"),
        ("ASE one at a time", f"{t_ase:.2f} s"),
        ("ratio ASE / batchmd", f"{t_ase / t_batchmd:.2f}x"),
        ("largest relative difference of C", f"{diff:.1e}"),
    ]
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
