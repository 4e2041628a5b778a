"""
Relaxing crystals with batched FIRE
===================================

Relax a handful of rattled argon crystals of different sizes together, in one batch,
with :class:`~batchmd.dynamics.FIRE` on batchmd's Lennard-Jones potential, and plot each
system's energy and largest atomic force against the step.

FIRE reproduces ``ase.optimize.FIRE`` step for step; the batch only changes how many
systems one kernel launch advances. Units: eV, Å, eV/Å.
"""

import matplotlib.pyplot as plt
import torch
from ase.build import bulk

from batchmd.data import Batch
from batchmd.dynamics import FIRE, ConvergenceHook, TrajectoryHook
from batchmd.models.lj import LennardJones

# %%
# Four rattled argon crystals with 4 to 32 atoms
# ----------------------------------------------
structures = []
for i, repeat in enumerate([(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)]):
    atoms = bulk("Ar", "fcc", a=5.30, cubic=True).repeat(repeat)
    atoms.rattle(0.15, seed=i)
    structures.append(atoms)
batch = Batch.from_ase(structures, dtype=torch.float64)
print(batch)

# %%
# FIRE with a trajectory recorder
# -------------------------------
# :class:`~batchmd.dynamics.TrajectoryHook` copies per-system scalars to the host every
# ``frequency`` steps (each record is one host synchronisation; keep it sparse on a GPU).
model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
trajectory = TrajectoryHook(frequency=1, fields=("energies", "fmax"))
fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300, hooks=[trajectory])
relaxed = fire.run(batch)

print("converged:", relaxed.converged.reshape(-1).tolist())
print("steps:    ", relaxed.n_steps.tolist())
print("energy per atom (eV):", (relaxed.energies.reshape(-1) / relaxed.num_atoms_per_system).tolist())

# %%
# Energy and fmax against step
# ----------------------------
# A converged system stops moving; its records stay flat until the whole batch is done.
steps = [record["step"] for record in trajectory.records]
energies = torch.stack([record["energies"] for record in trajectory.records])
fmax = torch.stack([record["fmax"] for record in trajectory.records])
atoms_per_system = relaxed.num_atoms_per_system.to(energies.dtype)

fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 6))
for s in range(relaxed.num_graphs):
    label = f"{len(structures[s])} atoms"
    top.plot(steps, energies[:, s] / atoms_per_system[s], label=label)
    bottom.semilogy(steps, fmax[:, s], label=label)
bottom.axhline(0.01, color="k", linestyle=":", label="fmax threshold")
top.set_ylabel("energy per atom (eV)")
bottom.set_ylabel("fmax (eV/Å)")
bottom.set_xlabel("FIRE step")
top.legend()
fig.tight_layout()
# Headless (no display: CI, ssh, the docs build) the figure is saved instead of shown.
if plt.get_backend().lower().endswith("agg"):
    plt.savefig("relaxation.png", dpi=100)
else:
    plt.show()
