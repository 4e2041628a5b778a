"""
Writing a model
===============

A batchmd model maps a :class:`~batchmd.data.Batch` to per-system energies ``[B, 1]`` (eV)
and per-atom forces ``[N, 3]`` (eV/Å) -- see :class:`batchmd.models.base.Model`. Any
``torch.nn.Module`` following that contract drives every dynamics method, and
:class:`batchmd.ase.Calculator` turns it into an ASE calculator.

This one is a Morse pair potential over all pairs of each (non-periodic) system, written in
plain torch with forces by autograd.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from ase.build import molecule
from ase.optimize import BFGS

from batchmd.ase import Calculator
from batchmd.data import Batch
from batchmd.dynamics import FIRE, ConvergenceHook, TrajectoryHook
from batchmd.models.base import Model


class Morse(Model):
    """E = sum_{i<j} D [(1 - exp(-a (r_ij - r0)))^2 - 1] within each system (no cutoff, no pbc).

    Parameters: ``D`` in eV, ``a`` in 1/Å, ``r0`` in Å.
    """

    cutoff, needs_neighbors, computes_stress = None, False, False

    def __init__(self, D=0.5, a=1.6, r0=1.4):
        super().__init__()
        self.D, self.a, self.r0 = D, a, r0

    def forward(self, batch):
        index = batch.batch_idx.long()
        with torch.enable_grad():
            x = batch.positions.detach().requires_grad_(True)
            i, j = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
            same = index[i] == index[j]  # only pairs inside one system
            i, j = i[same], j[same]
            r = (x[i] - x[j]).norm(dim=1)
            pair = self.D * ((1 - torch.exp(-self.a * (r - self.r0))) ** 2 - 1)
            energy = torch.zeros(batch.num_graphs, dtype=x.dtype, device=x.device).index_add_(0, index[i], pair)
            (grad,) = torch.autograd.grad(energy.sum(), x)
        return {"energy": energy.detach().reshape(-1, 1), "forces": -grad}


# %%
# Check the forces against finite differences
# -------------------------------------------
model = Morse()
batch = Batch.from_ase([molecule("CH4"), molecule("C6H6")], dtype=torch.float64)
forces = model(batch)["forces"]
h, atom, axis = 1e-5, 3, 2
plus, minus = batch.positions.clone(), batch.positions.clone()
plus[atom, axis] += h
minus[atom, axis] -= h
batch.positions = plus
e_plus = model(batch)["energy"].sum()
batch.positions = minus
e_minus = model(batch)["energy"].sum()
print("autograd force:", float(forces[atom, axis]), " finite difference:", float(-(e_plus - e_minus) / (2 * h)))

# %%
# Relax both molecules with batched FIRE
# --------------------------------------
batch = Batch.from_ase([molecule("CH4"), molecule("C6H6")], dtype=torch.float64)
trajectory = TrajectoryHook(frequency=1, fields=("energies",))
relaxed = FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-3), n_steps=500,
               hooks=[trajectory]).run(batch)
print("converged:", relaxed.converged.reshape(-1).tolist(), "after", relaxed.n_steps.tolist(), "steps")

# %%
# The same model as an ASE calculator
# -----------------------------------
atoms = molecule("CH4")
atoms.calc = Calculator(model)
BFGS(atoms, logfile=None).run(fmax=1e-3)
print("ASE BFGS energy:", atoms.get_potential_energy(), " batchmd FIRE energy:", float(relaxed.energies[0]))

steps = [record["step"] for record in trajectory.records]
energies = np.array([record["energies"].numpy() for record in trajectory.records])
fig, ax = plt.subplots(figsize=(6, 3.5))
for s, name in enumerate(["CH4", "C6H6"]):
    ax.plot(steps, energies[:, s], label=name)
ax.set_xlabel("FIRE step")
ax.set_ylabel("Morse energy (eV)")
ax.legend()
fig.tight_layout()
# Headless (no display: CI, ssh, the docs build) the figure is saved instead of shown.
if plt.get_backend().lower().endswith("agg"):
    plt.savefig("custom_model.png", dpi=100)
else:
    plt.show()
