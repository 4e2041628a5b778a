"""
Equation of state of many crystals in one batched run
=====================================================

:func:`batchmd.properties.compute_eos` scales every structure to a set of volumes (9 points
over +-6% in volume by default), relaxes the atoms at each fixed volume with FIRE, **all
points of all structures in one inflight-batched run**, and fits E(V) with ASE's
``EquationOfState`` (Birch-Murnaghan): V0 (Å^3), E0 (eV), B0 (GPa) and B0'.

The model here is ASE's EMT (cheap, for the gallery); any batchmd model works the same way
(``load_model("sevennet-0")``, MACE, Lennard-Jones, ...). The same is available on the
command line: ``batchmd eos metals.extxyz -o eos.csv --model emt``.

(For relaxing cells *under pressure*, see the variable-cell example,
``plot_cell_relaxation_eos.py``.)
"""

import matplotlib.pyplot as plt
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.optimize import FIRE

from batchmd.models import load_model
from batchmd.properties import compute_eos
from batchmd.properties.eos import eos_volume_strains, scaled_copies

# %%
# Five fcc metals; the copper cell is rattled, so relaxing the atoms at each volume matters
# -----------------------------------------------------------------------------------------
copper = bulk("Cu", "fcc", a=3.59, cubic=True)
copper.rattle(0.03, seed=0)
structures = [copper, bulk("Al", "fcc", a=3.99), bulk("Ni", "fcc", a=3.51), bulk("Ag", "fcc", a=4.06),
              bulk("Au", "fcc", a=4.06)]
results = compute_eos(structures, load_model("emt"), n_points=9, strain=0.06, fmax=0.01)
for r in results:
    print(f"{r.formula:4s} ok={r.ok}  V0 {r.V0_A3 / r.n_atoms:7.3f} Å^3/atom  B0 {r.B0_GPa:6.1f} GPa  "
          f"B0' {r.B0_prime:5.2f}  steps per point {r.n_steps.tolist()}")

# %%
# The same procedure in ASE, for copper: one volume at a time
# -----------------------------------------------------------
volumes, energies = [], []
for atoms in scaled_copies(copper, eos_volume_strains(9, 0.06)):
    atoms.calc = EMT()
    FIRE(atoms, logfile=None).run(fmax=0.01, steps=500)
    volumes.append(atoms.get_volume())
    energies.append(atoms.get_potential_energy())
v0, e0, b0 = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
print(f"Cu V0: batchmd {results[0].V0_A3:.10f} Å^3, ASE {v0:.10f} Å^3")

# %%
# E(V) per atom, points and fits
# ------------------------------
fig, ax = plt.subplots(figsize=(6, 4))
for i, r in enumerate(results):
    fit = EquationOfState(r.volumes_A3, r.energies_eV, eos="birchmurnaghan")
    fit.fit()
    _, _, _, _, x, y, _, _ = fit.getplotdata()
    ax.plot(r.volumes_A3 / r.n_atoms, (r.energies_eV - r.E0_eV) / r.n_atoms, "o", color=f"C{i}", ms=4)
    ax.plot(x / r.n_atoms, (y - r.E0_eV) / r.n_atoms, "-", color=f"C{i}",
            label=f"{r.formula}: B0 = {r.B0_GPa:.0f} GPa")
ax.set_xlabel("volume (Å$^3$/atom)")
ax.set_ylabel("E - E0 (eV/atom)")
ax.set_title("EMT equations of state (one batched run)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig("eos.png")  # headless-safe; the gallery also shows the figure
assert np.isclose(results[0].V0_A3, v0, rtol=1e-6)
