"""
Reaction barriers: many nudged elastic bands in one batched run
===============================================================

:func:`batchmd.neb.run.run_bands` optimizes many nudged elastic bands at once. Each band is
**one system of the live batch** (its moving images concatenated), whose forces are ASE's
NEB forces, so batchmd's FIRE steps it exactly as ``ase.optimize.FIRE(NEB(images))`` does:
same steps, same images. Bands graduate when converged and the next ones take their place.

The system is ASE's NEB tutorial: a gold adatom hopping between hollow sites of Al(100)
(EMT, bottom layer fixed), here together with a silver and a platinum adatom and a vacancy
hop in copper. The same on the command line: ``batchmd neb pairs.extxyz -o barriers.csv
--model emt --climb``.
"""

import matplotlib.pyplot as plt
import numpy as np
from ase.calculators.emt import EMT
from ase.mep import NEB
from ase.optimize import FIRE

from batchmd.models import load_model
from batchmd.neb import interpolate_band, run_bands
from batchmd.neb.systems import adatom_hop, vacancy_hop

# %%
# Endpoints: relaxed with ASE (``run_bands(..., relax_endpoints=True)`` does it batched)
# ---------------------------------------------------------------------------------------
pairs = [adatom_hop("Al", "Au", calc=EMT), adatom_hop("Al", "Ag", calc=EMT), adatom_hop("Al", "Pt", calc=EMT),
         vacancy_hop("Cu", calc=EMT)]
names = ["Au on Al(100)", "Ag on Al(100)", "Pt on Al(100)", "Cu vacancy"]

# %%
# All bands in one run: 7 images each, climbing image, FIRE to 0.05 eV/Å
# -----------------------------------------------------------------------
results = run_bands(pairs, load_model("emt"), n_images=7, climb=True, fmax=0.05, max_steps=300)
for name, r in zip(names, results):
    print(f"{name:14s} {r.status:9s} {r.n_steps:3d} steps  barrier {r.barrier_forward:.3f} eV "
          f"(backward {r.barrier_backward:.3f} eV), transition state: image {r.ts_index}")

# %%
# The same band with ASE, one band at a time: the same steps and images
# ---------------------------------------------------------------------
images = interpolate_band(*pairs[0], 7)
for atoms in images:
    atoms.calc = EMT()
opt = FIRE(NEB(images, climb=True, method="improvedtangent"), logfile=None)
opt.run(fmax=0.05, steps=300)
ase_energies = np.array([a.get_potential_energy() for a in images])
d_energy = np.abs(ase_energies - results[0].energies).max()
d_position = max(np.abs(a.positions - b.positions).max() for a, b in zip(images, results[0].images))
print(f"ASE: {opt.nsteps} steps (batchmd: {results[0].n_steps}); largest differences {d_energy:.1e} eV, "
      f"{d_position:.1e} Å")

# %%
# Energy profiles
# ---------------
fig, ax = plt.subplots(figsize=(5.5, 3.6))
for name, r in zip(names, results):
    ax.plot(np.arange(len(r.energies)), r.energies - r.energies[0], "o-", label=f"{name}: {r.barrier_forward:.2f} eV")
ax.set_xlabel("image")
ax.set_ylabel("E - E(initial) (eV)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig("neb.png", dpi=100)  # headless-safe; the gallery also shows the figure
