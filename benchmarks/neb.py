"""Nudged elastic bands: batchmd (many bands inflight) against ASE (one band at a time), same model.

    PYTHONPATH=src:. python -m benchmarks.neb --out benchmarks/neb.json            # 50 EMT + 50 LJ bands
    PYTHONPATH=src:. python -m benchmarks.neb --quick                              # 10 + 10 bands

Workloads (endpoints relaxed with ASE's FIRE to 0.02 eV/Å and bands interpolated with
ASE's ``NEB.interpolate`` first, not timed; both sides start from the same images):

- **EMT** (``n`` bands): adatom hops between hollow sites of fcc(100) slabs (2x2x3, bottom
  layer fixed; every adatom on every surface of Cu, Al, Ni, Ag, Au, Pd, Pt, cycled) and
  vacancy hops in 2x2x2 cubic crystals of the same metals (31 atoms, the hop crosses the
  periodic boundary), one in five bands a vacancy. batchmd: ``load_model("emt")`` (ASE's EMT
  through ``ASECalculatorModel(per_system=True)``: one EMT per image, as ASE's NEB has).
- **Lennard-Jones** (``n`` bands): argon vacancy hops in 3x3x3 cubic crystals (107 atoms) at
  lattice constants 5.22-5.36 Å and adatom hops on Ar(100) slabs (3x3x4 and 4x4x4).
  batchmd: its Warp ``LennardJones`` (sigma 3.405 Å, epsilon 0.0104 eV, cutoff 8.5125 Å);
  ASE: ``ase.calculators.lj.LennardJones(..., smooth=False)``, the same potential.

Every band: 5 images (3 moving), ``improvedtangent``, climbing image, ``ase.optimize.FIRE``
semantics, fmax 0.05 eV/Å, at most 500 steps. batchmd: :func:`batchmd.neb.run_bands`, all
bands in one inflight run (float64, after an untimed warm-up band); ASE:
``FIRE(NEB(images, climb=True, method="improvedtangent")).run(0.05, 500)`` band by band.

Reported per workload: wall time of each side, ratio, occupancy of batchmd's live batch,
optimizer steps (total, and bands whose step count equals ASE's), largest image-energy
difference between the two (eV).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

METALS = ("Cu", "Al", "Ni", "Ag", "Au", "Pd", "Pt")
FMAX, MAX_STEPS, N_IMAGES = 0.05, 500, 5
LJ = dict(sigma=3.405, epsilon=0.0104, cutoff=8.5125)


def emt_pairs(n: int) -> list:
    from ase.calculators.emt import EMT

    from batchmd.neb.systems import adatom_hop, vacancy_hop

    pairs = []
    combos = [(s, a) for s in METALS for a in METALS]
    for i in range(n):
        if i % 5 == 4:
            pairs.append(("vacancy " + METALS[(i // 5) % 7], vacancy_hop(METALS[(i // 5) % 7], calc=EMT, fmax=0.02)))
        else:
            surface, adatom = combos[i % len(combos)]
            pairs.append((f"{adatom} on {surface}(100)", adatom_hop(surface, adatom, calc=EMT, fmax=0.02)))
    return pairs


def ase_lj():
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=LJ["sigma"], epsilon=LJ["epsilon"], rc=LJ["cutoff"], smooth=False)


def lj_pairs(n: int) -> list:
    from batchmd.neb.systems import adatom_hop, vacancy_hop

    pairs = []
    for i in range(n):
        if i % 2 == 0:
            a = 5.22 + 0.14 * ((i // 2) % 8) / 7
            pairs.append((f"Ar vacancy a={a:.3f}", vacancy_hop("Ar", a=a, repeat=3, calc=ase_lj, fmax=0.02)))
        else:
            size = (3, 3, 4) if (i // 2) % 2 == 0 else (4, 4, 4)
            pairs.append((f"Ar on Ar(100) {size[0]}x{size[1]}", adatom_hop("Ar", "Ar", a=5.26, size=size, height=2.0,
                                                                           calc=ase_lj, fmax=0.02)))
    return pairs


def run_ase(bands, calc_factory) -> tuple[float, list]:
    from ase.mep import NEB
    from ase.optimize import FIRE

    out = []
    start = time.perf_counter()
    for images in bands:
        images = [a.copy() for a in images]
        for a in images:
            a.calc = calc_factory()
        neb = NEB(images, climb=True, method="improvedtangent")
        opt = FIRE(neb, logfile=None)
        opt.run(fmax=FMAX, steps=MAX_STEPS)
        out.append((opt.nsteps, [a.get_potential_energy() for a in images]))
    return time.perf_counter() - start, out


def run_batchmd(bands, model, max_atoms=None, device="cpu") -> tuple[float, list, float]:
    from batchmd.neb import run_bands

    kw = dict(climb=True, fmax=FMAX, max_steps=MAX_STEPS, device=device)
    run_bands([bands[0]], model, **kw)  # warm-up (Warp kernels)
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = run_bands(bands, model, max_atoms=max_atoms, **kw)
    elapsed = time.perf_counter() - start
    stats = run_bands.last_stats
    occupancy = stats.occupancy_sum / max(stats.steps, 1)
    return elapsed, results, occupancy


def workload(name, pairs, model, calc_factory, max_atoms=None, device="cpu") -> dict:
    from batchmd.neb import interpolate_band

    bands = [interpolate_band(ini, fin, N_IMAGES) for _, (ini, fin) in pairs]
    t_b, results, occupancy = run_batchmd(bands, model, max_atoms, device)
    t_a, ref = run_ase(bands, calc_factory)
    same = sum(r.n_steps == s for r, (s, _) in zip(results, ref))
    d_e = max(float(np.abs(np.asarray(r.energies) - e).max()) for r, (_, e) in zip(results, ref))
    atoms = sum((N_IMAGES - 2) * len(b[0]) for b in bands)
    row = {"workload": name, "bands": len(bands), "band_atoms_total": atoms,
           "batchmd_s": round(t_b, 3), "ase_s": round(t_a, 3), "ratio_ase_over_batchmd": round(t_a / t_b, 2),
           "occupancy": round(occupancy, 3), "steps_batchmd": sum(r.n_steps for r in results),
           "steps_ase": sum(s for s, _ in ref), "bands_same_steps": same,
           "converged": sum(r.converged for r in results), "max_dE_eV": d_e,
           "barriers_eV": [round(r.barrier_forward, 4) for r in results]}
    print(f"{name}: {len(bands)} bands, batchmd {t_b:.2f} s, ASE {t_a:.2f} s, ratio {t_a / t_b:.2f}x, "
          f"occupancy {occupancy:.0%}, same steps {same}/{len(bands)}, max |dE| {d_e:.2e} eV", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 bands per workload")
    parser.add_argument("--n", type=int, default=50, help="bands per workload")
    parser.add_argument("--out", default=None, help="write the rows as JSON")
    parser.add_argument("--skip-emt", action="store_true")
    parser.add_argument("--skip-lj", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    n = 10 if args.quick else args.n
    from batchmd.models import load_model
    from batchmd.models.lj import LennardJones

    rows = []
    t0 = time.perf_counter()
    if not args.skip_emt:
        from ase.calculators.emt import EMT

        rows.append(workload("EMT adatom and vacancy hops", emt_pairs(n), load_model("emt"), EMT, device=args.device))
    if not args.skip_lj:
        rows.append(workload("Lennard-Jones argon vacancy and adatom hops", lj_pairs(n), LennardJones(**LJ), ase_lj,
                             device=args.device))
    report = {"device": args.device, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch_threads": torch.get_num_threads(), "total_s": round(time.perf_counter() - t0, 1), "rows": rows}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
