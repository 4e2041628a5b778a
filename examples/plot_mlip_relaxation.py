"""
Relaxing real crystals with SevenNet-0
======================================

Load the universal machine-learned potential SevenNet-0 by name (its weights ship inside the
``sevenn`` package: ``pip install "batchmd[sevennet]"``, no download), check that it covers
the elements, and relax four rattled crystals of different chemistry together with batched
FIRE. The edge list, the element check, forces and stress by autograd and chunked
evaluation all happen inside the model (see :doc:`/mlip`).

Units: eV, Å, eV/Å.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from ase.build import bulk

from batchmd.data import Batch
from batchmd.dynamics import FIRE, ConvergenceHook, TrajectoryHook
from batchmd.models import available_models, load_model

# %%
# Choosing and loading a model
# ----------------------------
# ``available_models()`` lists what ``load_model`` understands; ``mace:PATH`` and
# ``metatomic:PATH`` load a file you have.
for spec, description in available_models().items():
    print(f"{spec:16s} {description}")
model = load_model("sevennet-0")
print(model.model_info()["model"], "cutoff", model.cutoff, "Å,", len(model.supported_numbers), "elements")

# %%
# Four rattled crystals
# ---------------------
# Small cells keep this example quick on a CPU; any size works the same way.
structures = [bulk("Si", "diamond", a=5.43), bulk("NaCl", "rocksalt", a=5.64), bulk("MgO", "rocksalt", a=4.21),
              bulk("Cu", "fcc", a=3.61).repeat((2, 1, 1))]
rng = np.random.default_rng(0)
for atoms in structures:
    atoms.positions += rng.normal(0.0, 0.04, atoms.positions.shape)
batch = Batch.from_ase(structures, dtype=torch.float32)
model.check_species(batch.atomic_numbers)  # one line naming any uncovered element, before a run

# %%
# Batched FIRE
# ------------
trajectory = TrajectoryHook(frequency=1, fields=("energies", "fmax"))
fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=100, hooks=[trajectory])
relaxed = fire.run(batch)
for atoms, steps, energy in zip(structures, relaxed.n_steps.tolist(), relaxed.energies.reshape(-1).tolist()):
    print(f"{atoms.get_chemical_formula():8s} {steps:4d} steps  E/atom = {energy / len(atoms):8.4f} eV")

# %%
# Energy and fmax against step
# ----------------------------
steps = [record["step"] for record in trajectory.records]
energies = torch.stack([record["energies"] for record in trajectory.records]).double()
fmax = torch.stack([record["fmax"] for record in trajectory.records]).double()
fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 6))
for s, atoms in enumerate(structures):
    label = atoms.get_chemical_formula()
    top.plot(steps, (energies[:, s] - energies[-1, s]) / len(atoms), label=label)
    bottom.semilogy(steps, fmax[:, s], label=label)
bottom.axhline(0.05, color="k", linestyle=":", label="fmax threshold")
top.set_ylabel("E - E_final (eV/atom)")
bottom.set_ylabel("fmax (eV/Å)")
bottom.set_xlabel("FIRE step")
top.legend(fontsize=8)
fig.tight_layout()
# Headless (no display: CI, ssh, the docs build) the figure is saved instead of shown.
if plt.get_backend().lower().endswith("agg"):
    plt.savefig("mlip_relaxation.png", dpi=100)
else:
    plt.show()
