"""Phonons of many crystals: batchmd (one batched run of every displaced supercell) vs phonopy + ASE one at a time.

    PYTHONPATH=src:. python -m benchmarks.properties_phonons --out benchmarks/properties_phonons.md
    PYTHONPATH=src:. python -m benchmarks.properties_phonons --quick

Workloads (all in one run, side by side):

- **EMT, 50 crystals**: fcc Al Cu Ag Au Ni Pd Pt (primitive cells at three lattice constants,
  2x2x2 and 3x3x3 supercells), L1_2 A3B and L1_0 AB alloys (conventional 4-atom cells, 2x2x2
  supercells). batchmd: :func:`batchmd.properties.phonons.compute_phonons` with
  ``load_model("emt")``. Note: batchmd's EMT is ASE's EMT behind ``ASECalculatorModel``,
  which evaluates the systems of a batch one after another, so this row measures batchmd's
  overhead against the plain ASE loop, not a batching gain.
- **Lennard-Jones argon, 30 crystals**: fcc primitive cells at ten lattice constants with 2x2x2,
  3x3x3 and 4x4x4 supercells; batchmd's native (batched) LJ against the same model as an ASE
  calculator (``batchmd.ase.Calculator``) one supercell at a time.

Reference: what a phonopy user does with ASE: per structure ``Phonopy(...)``,
``generate_displacements``, one ``atoms.get_forces()`` per supercell (perfect supercell
included, its forces subtracted), ``produce_force_constants``, then the same post-processing
as batchmd (Γ, mesh, total DOS, thermal properties, seekpath band path). Both float64, one
torch thread. Reported: time to solution, the force-evaluation part of it, the ratio and the
largest force-constant difference.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk

FCC = {"Al": 4.05, "Cu": 3.59, "Ag": 4.07, "Au": 4.06, "Ni": 3.52, "Pd": 3.93, "Pt": 3.94}
POST = dict(mesh=(20, 20, 20), band_path="auto", temperatures=np.arange(0, 1001, 10))


def emt_crystals(n: int = 50):
    """``n`` EMT crystals and their supercell matrices (see the module docstring)."""
    out = []
    for scale in (1.0, 0.99, 1.01):
        for el, a in FCC.items():
            for sc in (2, 3):
                out.append((bulk(el, "fcc", a=a * scale), np.diag([sc] * 3)))
    pairs = [("Cu", "Au"), ("Au", "Cu"), ("Ni", "Al"), ("Pt", "Cu"), ("Pd", "Ag"), ("Cu", "Pd"), ("Ni", "Pt"),
             ("Ag", "Au")]
    alloys = []
    for a_el, b_el in pairs:
        a = 0.75 * FCC[a_el] + 0.25 * FCC[b_el]  # Vegard: L1_2 A3B, B at the corner
        alloys.append(Atoms(f"{b_el}{a_el}3", cell=[a, a, a], pbc=True,
                            scaled_positions=[[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]))
        a = 0.5 * (FCC[a_el] + FCC[b_el])  # L1_0 AB: (001) layers of A and B
        alloys.append(Atoms(f"{a_el}2{b_el}2", cell=[a, a, a], pbc=True,
                            scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0.5]]))
    out += [(atoms, np.diag([2, 2, 2])) for atoms in alloys]
    return out[:n]


def lj_crystals(n: int = 30):
    out = []
    for a in np.linspace(5.2, 5.45, 10):
        for sc in (2, 3, 4):
            out.append((bulk("Ar", "fcc", a=float(a)), np.diag([sc] * 3)))
    return out[:n]


def sevennet_crystals(n: int = 6):
    """Binary and elemental semiconductors/ionics, primitive cells, 2x2x2 supercells (16 atoms)."""
    cells = [bulk("Si", "diamond", a=5.43), bulk("C", "diamond", a=3.57), bulk("Ge", "diamond", a=5.66),
             bulk("SiC", "zincblende", a=4.36), bulk("NaCl", "rocksalt", a=5.64), bulk("MgO", "rocksalt", a=4.21),
             bulk("GaAs", "zincblende", a=5.65), bulk("LiF", "rocksalt", a=4.03)]
    return [(atoms, np.diag([2, 2, 2])) for atoms in cells[:n]]


def run_batchmd(cases, model, max_atoms=None, dtype=torch.float64):
    import batchmd.properties.phonons as ph_mod

    spent = {"eval": 0.0, "frames": 0}
    original = ph_mod.evaluate_frames

    def timed(frames, model, **kw):
        start = time.perf_counter()
        out = original(frames, model, **kw)
        spent["eval"] += time.perf_counter() - start
        spent["frames"] += len(frames)
        return out

    ph_mod.evaluate_frames = timed
    try:
        start = time.perf_counter()
        results = ph_mod.compute_phonons([a for a, _ in cases], model, supercell_matrix=[m for _, m in cases],
                                         max_atoms=max_atoms, dtype=dtype, **POST)
        wall = time.perf_counter() - start
    finally:
        ph_mod.evaluate_frames = original
    return results, wall, spent


def run_reference(cases, make_calc):
    """phonopy + an ASE calculator, one structure and one supercell at a time (same post-processing)."""
    import phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    spent = {"eval": 0.0, "frames": 0}
    out = []
    calc = make_calc()  # loading the model is not timed (batchmd's model is loaded before its run too)
    start = time.perf_counter()
    for atoms, matrix in cases:
        ph = phonopy.Phonopy(PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.array(atoms.cell),
                                          scaled_positions=atoms.get_scaled_positions(), masses=atoms.get_masses()),
                             supercell_matrix=matrix, primitive_matrix="auto", log_level=0)
        ph.generate_displacements(distance=0.01)
        t0 = time.perf_counter()
        forces = []
        for cell in [ph.supercell] + list(ph.supercells_with_displacements):
            sc = Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)
            sc.calc = calc
            forces.append(sc.get_forces())
        spent["eval"] += time.perf_counter() - t0
        spent["frames"] += len(forces)
        ph.forces = np.array(forces[1:]) - forces[0]
        ph.produce_force_constants(show_drift=False)
        ph.run_qpoints([[0, 0, 0]])
        ph.run_mesh(POST["mesh"], is_gamma_center=True)
        ph.run_total_dos()
        ph.run_thermal_properties(temperatures=POST["temperatures"], exclude_gamma_acoustic=True)
        ph.auto_band_structure(npoints=51)
        out.append(ph)
    return out, time.perf_counter() - start, spent


def compare(name, cases, model, make_calc, rows, dtype=torch.float64):
    results, wall_b, sp_b = run_batchmd(cases, model, dtype=dtype)
    refs, wall_r, sp_r = run_reference(cases, make_calc)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    diff = max(float(np.abs(r.force_constants - p.force_constants).max()) for r, p in zip(results, refs))
    n_imag = sum(r.n_imaginary > 0 for r in results)
    atoms_sc = sum(r.n_supercell_atoms for r in results)
    rows.append(dict(workload=name, structures=len(cases), frames=sp_b["frames"], sc_atoms=atoms_sc,
                     batchmd_s=wall_b, batchmd_eval_s=sp_b["eval"], ase_s=wall_r, ase_eval_s=sp_r["eval"],
                     ratio=wall_r / wall_b, eval_ratio=sp_r["eval"] / sp_b["eval"], max_dfc=diff, n_imag=n_imag))
    print(f"{name}: batchmd {wall_b:.2f} s (eval {sp_b['eval']:.2f} s), phonopy+ASE {wall_r:.2f} s "
          f"(eval {sp_r['eval']:.2f} s), ratio {wall_r / wall_b:.2f}x, eval ratio {sp_r['eval'] / sp_b['eval']:.2f}x,"
          f" max |dfc| {diff:.1e} eV/A^2, {n_imag} with imaginary modes", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 EMT and 6 LJ crystals (seconds)")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    parser.add_argument("--sevennet", type=int, default=None,
                        help="SevenNet-0 crystals (float32, CPU; default 6, 0 with --quick; skipped without sevenn)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from ase.calculators.emt import EMT

    from batchmd.ase import Calculator
    from batchmd.models import load_model
    from batchmd.models.lj import LennardJones

    n_emt, n_lj = (10, 6) if args.quick else (50, 30)
    emt = emt_crystals(50)
    emt = emt if not args.quick else emt[::5][:n_emt]
    lj_model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
    # warm-up (imports, Warp kernels, seekpath) outside the timed region
    run_batchmd(lj_crystals(1), lj_model)
    run_batchmd(emt[:1], load_model("emt"))
    rows = []
    start = time.perf_counter()
    compare("EMT (ASECalculatorModel)", emt, load_model("emt"), EMT, rows)
    compare("LJ argon (native batched)", lj_crystals(n_lj), lj_model, lambda: Calculator(lj_model), rows)
    n_7net = args.sevennet if args.sevennet is not None else (0 if args.quick else 6)
    if n_7net:
        try:
            from batchmd.models.mlip.sevennet import import_sevenn

            import_sevenn()  # torch >= 2.6 loading of e3nn's constants, as load_model does
            from sevenn.calculator import SevenNetCalculator
        except ImportError:
            print("SevenNet-0 row skipped: sevenn is not installed")
        else:
            model = load_model("sevennet-0")
            cases = sevennet_crystals(n_7net)
            run_batchmd(cases[:1], model, dtype=torch.float32)  # TorchScript warm-up, both sides
            run_reference(cases[:1], lambda: SevenNetCalculator("7net-0", device="cpu"))
            compare("SevenNet-0 float32 (CPU)", cases, model, lambda: SevenNetCalculator("7net-0", device="cpu"),
                    rows, dtype=torch.float32)
    total = time.perf_counter() - start
    lines = ["| workload | structures | supercells evaluated | batchmd s (eval s) | phonopy+ASE s (eval s) | "
             "ratio (eval ratio) | max abs dfc eV/A^2 | with imaginary modes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['structures']} | {r['frames']} ({r['sc_atoms']} atoms in the "
                     f"structures' supercells) | {r['batchmd_s']:.2f} ({r['batchmd_eval_s']:.2f}) | {r['ase_s']:.2f} "
                     f"({r['ase_eval_s']:.2f}) | {r['ratio']:.2f}x ({r['eval_ratio']:.2f}x) | {r['max_dfc']:.1e} | "
                     f"{r['n_imag']} |")
    table = "\n".join(lines)
    print(table)
    print(f"total benchmark wall {total:.1f} s on {platform.processor() or platform.machine()}, "
          f"torch threads {torch.get_num_threads()}")
    if args.out:
        args.out.write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
