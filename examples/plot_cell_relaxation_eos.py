"""
Variable-cell relaxation: the equation of state of argon at 0 K
===============================================================

Six strained, triclinic argon cells, each relaxed -- atoms and cell -- at its own external
pressure by :class:`~batchmd.dynamics.LBFGS` through a
:class:`~batchmd.dynamics.FrechetCellFilter` (ASE's ``LBFGS(FrechetCellFilter(atoms))``,
batched): one launch moves every system. The relaxed volumes give the zero-temperature
equation of state of Lennard-Jones argon and its bulk modulus; one point is checked
against ASE itself.

For the E(V) equation of state of many structures at once (V0, E0, B0, B0' from ASE's
``EquationOfState``), see ``plot_eos.py`` (:func:`batchmd.properties.compute_eos`).

Units: pressure in eV/Å^3 in the API (``GPA`` converts from GPa), forces eV/Å, volumes Å^3.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.filters import FrechetCellFilter as AseFrechetCellFilter
from ase.optimize import LBFGS as AseLBFGS

from batchmd.data import Batch
from batchmd.dynamics import LBFGS, ConvergenceHook, FrechetCellFilter
from batchmd.dynamics.cell_filter import GPA
from batchmd.models.lj import LennardJones

# %%
# Six strained cells and six pressures
# ------------------------------------
# Conventional fcc cells (4 atoms, edges ~5.5 Å: smaller than twice the 8.5 Å cutoff),
# sheared and stretched at random so that the cell shape has to relax too.
rng = np.random.default_rng(0)
pressures_gpa = np.array([-0.2, 0.0, 0.25, 0.5, 1.0, 2.0])
structures = []
for _ in pressures_gpa:
    atoms = bulk("Ar", "fcc", a=5.5, cubic=True)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.03 * rng.normal(size=(3, 3))), scale_atoms=True)
    atoms.rattle(0.05, seed=int(rng.integers(1000)))
    structures.append(atoms)
batch = Batch.from_ase(structures, dtype=torch.float64)
model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)  # computes the stress the filter needs

# %%
# Relax atoms and cells together
# ------------------------------
# ``scalar_pressure`` takes one value per system; the criterion ``fmax`` applies to the
# filter's rows (atom forces and the cell "forces" from the stress), as in ASE.
cell_filter = FrechetCellFilter(scalar_pressure=torch.tensor(pressures_gpa * GPA, dtype=torch.float64))
relax = LBFGS(model, cell_filter=cell_filter, convergence_hook=ConvergenceHook.from_forces(1e-4))
relaxed = relax.run(batch, n_steps=500)
volumes = torch.linalg.det(relaxed.cell).abs().numpy() / 4  # Å^3 per atom
energies = relaxed.energies[:, 0].numpy() / 4  # eV per atom
print("converged:", relaxed["converged"].reshape(-1).tolist(), "steps:", relaxed["n_steps"].tolist())

# %%
# The same relaxation in ASE, for the zero-pressure cell
# ------------------------------------------------------
reference = structures[1].copy()
reference.calc = AseLJ(sigma=3.405, epsilon=0.0104, rc=8.5125, smooth=False)
AseLBFGS(AseFrechetCellFilter(reference), logfile=None).run(fmax=1e-4, steps=500)
print(f"V per atom: batchmd {volumes[1]:.10f} Å^3, ASE {reference.get_volume() / 4:.10f} Å^3")

# %%
# Equation of state and bulk modulus
# ----------------------------------
# ``B = -V dP/dV`` from a quadratic fit of P(V) around zero pressure.
fit = np.polyfit(volumes, pressures_gpa, 2)
v0 = volumes[1]
bulk_modulus = -v0 * np.polyval(np.polyder(fit), v0)
print(f"V0 = {v0:.3f} Å^3/atom, B0 = {bulk_modulus:.2f} GPa")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
ax1.plot(volumes, pressures_gpa, "o-")
ax1.set_xlabel("volume (Å$^3$/atom)")
ax1.set_ylabel("pressure (GPa)")
ax1.set_title(f"P(V), B$_0$ = {bulk_modulus:.2f} GPa")
ax2.plot(volumes, energies, "o-")
ax2.set_xlabel("volume (Å$^3$/atom)")
ax2.set_ylabel("energy (eV/atom)")
ax2.set_title("E(V) of the relaxed cells")
fig.tight_layout()
fig.savefig("cell_relaxation_eos.png")  # headless-safe; the gallery also shows the figure
