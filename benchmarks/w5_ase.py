"""W5's one-structure-at-a-time baseline: ASE's FIRE + FrechetCellFilter with MACE's own ASE calculator.

    PYTHONPATH=src:. python -m benchmarks.w5_ase --n 40 --threads 1 --out benchmarks/w5_ase.md

The first ``n`` W5 structures (``workloads.w5_structures``), the same random-weight MACE file as
``w5.py --model mace-random+lj`` plus its Lennard-Jones baseline (``W5_LJ``), relaxed the way a
user of ASE would: one structure after another, ``ase.optimize.FIRE(FrechetCellFilter(atoms))``
to fmax 0.05 eV/Å in at most 400 steps, with ``SumCalculator([MACECalculator, LennardJones])``
(ASE's LJ is shifted at the cutoff; the shift changes no force or stress, so the trajectories
are those of the unshifted baseline). Against it: batchmd inflight on the same structures with
the budget of the W5 report (409 atoms, chunks of 512 atoms, refill every step), both float32 on
one torch thread. Reported: wall per structure, the ratio, FIRE steps, and per-structure energy
differences (after removing ASE's LJ shift, which depends on the pairs inside the cutoff).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import w5
from benchmarks import workloads as wl


def run_ase(structures, model_file: str) -> dict:
    from ase.calculators.lj import LennardJones
    from ase.calculators.mixing import SumCalculator
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from mace.calculators import MACECalculator

    sigma, epsilon, cutoff = w5.W5_LJ
    mace = MACECalculator(model_paths=model_file, device="cpu", default_dtype="float32")
    lj = LennardJones(sigma=sigma, epsilon=epsilon, rc=cutoff, smooth=False)
    shift = 4.0 * epsilon * ((sigma / cutoff) ** 12 - (sigma / cutoff) ** 6)
    energies, steps = [], []
    t0 = time.perf_counter()
    for atoms in structures:
        a = atoms.copy()
        a.calc = SumCalculator([mace, lj])
        opt = FIRE(FrechetCellFilter(a), logfile=None)
        opt.run(fmax=wl.W5_FMAX, steps=wl.W5_MAX_STEPS)
        steps.append(int(opt.nsteps))
        energies.append(float(a.get_potential_energy()) + _pairs_within(a, cutoff) * shift)  # unshifted
    return {"wall": time.perf_counter() - t0, "steps": steps, "energies": energies}


def _pairs_within(atoms, cutoff: float) -> int:
    """Pairs (i < j, with periodic images) closer than ``cutoff`` (ASE's LJ shifts each by a constant)."""
    from ase.neighborlist import neighbor_list

    i, j = neighbor_list("ij", atoms, cutoff)
    return len(i) // 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--max-atoms", type=int, default=409, help="batchmd's atom budget (the W5 report's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    structures = wl.w5_structures(args.n)
    model, path = w5.build_model("mace-random+lj", torch.float32, "cpu", stress=True)
    w5.run_inflight(structures[:4], model, args.max_atoms, 512, 1, torch.float32, "cpu", cell="frechet")  # warm
    mine = w5.run_inflight(structures, model, args.max_atoms, 512, 1, torch.float32, "cpu", cell="frechet")
    ase = run_ase(structures, str(path))
    d_e = np.abs(np.array(mine["energies"]) - np.array(ase["energies"]))
    same_steps = sum(a == b for a, b in zip(mine["steps"], ase["steps"]))
    lines = [
        f"# W5 one structure at a time: ASE + MACECalculator vs batchmd inflight ({args.n} structures)", "",
        f"`python -m benchmarks.w5_ase --n {args.n} --threads {args.threads}`; float32, torch threads "
        f"{args.threads}, cpu, variable cell (FrechetCellFilter), FIRE to fmax {wl.W5_FMAX} eV/Å.", "",
        "| run | wall | per structure | FIRE steps median / max |", "|---|---|---|---|",
        f"| ASE FIRE(FrechetCellFilter), SumCalculator(MACECalculator, LennardJones), one at a time | "
        f"{ase['wall']:.2f} s | {1e3 * ase['wall'] / args.n:.0f} ms | "
        f"{statistics.median(ase['steps']):.0f} / {max(ase['steps'])} |",
        f"| batchmd inflight, {mine['max_atoms']} atoms, chunks of 512, refill every step | {mine['wall']:.2f} s | "
        f"{1e3 * mine['wall'] / args.n:.0f} ms | {statistics.median(mine['steps']):.0f} / {max(mine['steps'])} |",
        "", f"ASE / batchmd: **{ase['wall'] / mine['wall']:.1f}x**. Same FIRE step count for {same_steps} of "
        f"{args.n} structures; relaxed energies: median |dE| {np.median(d_e):.1e} eV, max {d_e.max():.1e} eV "
        "(float32 on both sides: MACE's float32 sums round differently one at a time and in a batch, "
        "and FIRE carries that along).", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
