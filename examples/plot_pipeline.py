"""
FIRE then NVT over a dataset, with inflight batching
====================================================

Forty argon crystals of mixed sizes go through a two-stage pipeline -- FIRE relaxation,
then 40 steps of Langevin NVT -- in a live batch of at most 160 atoms. Whenever a system
finishes, its slot is refilled from the dataset. :func:`batchmd.ase.run_frames` wires the
:class:`~batchmd.ase.AtomsDataset`, :class:`~batchmd.dynamics.SizeAwareSampler` and
:class:`~batchmd.dynamics.FusedStage` together and returns ``ase.Atoms`` in input order.

The same run from the command line is ``batchmd pipeline examples/pipeline.toml``.
"""

import matplotlib.pyplot as plt
import numpy as np
from ase.build import bulk

from batchmd.ase import run_frames
from batchmd.dynamics import FIRE, ConvergenceHook, NVTLangevin
from batchmd.models.lj import LennardJones

# %%
# The dataset: 40 rattled, strained argon crystals of 4 to 32 atoms
# -----------------------------------------------------------------
rng = np.random.default_rng(0)
repeats = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)]
frames = []
for i in range(40):
    atoms = bulk("Ar", "fcc", a=5.26 + rng.uniform(-0.08, 0.08), cubic=True).repeat(repeats[i % 4])
    atoms.rattle(0.1, seed=i)
    frames.append(atoms)

# %%
# Two stages sharing one model
# ----------------------------
# ``capacity``: neighbors per atom, allocated once for every system of the dataset.
model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, capacity=160)
fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=300)
nvt = NVTLangevin(model, dt=5.0, temperature=30.0, friction=0.02, random_seed=0, n_steps=40)

result = run_frames(frames, [fire, nvt], max_atoms=160, refill_frequency=5)
stats = result.stats
print(f"{stats.systems_graduated} systems in {stats.steps} loop steps; "
      f"mean live-batch occupancy {stats.mean_occupancy:.0%}")

# %%
# Per-system results
# ------------------
# Every frame comes back in input order and carries ``input_index`` (its position in
# ``frames``; ``system_id``, which keys its random streams, equals it here), ``status``,
# ``n_steps`` (its FIRE steps + 40 NVT steps: the left panel), the per-stage keys
# (``stage0_steps`` FIRE steps, ``stage1_temperature`` ...) and its final energy (right panel).
n_atoms = np.array([len(a) for a in result.frames])
n_steps = np.array([a.info["n_steps"] for a in result.frames])
index = np.array([a.info["input_index"] for a in result.frames])
energy = np.array([a.get_potential_energy() for a in result.frames]) / n_atoms

fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5))
scatter = left.scatter(index, n_steps, c=n_atoms, cmap="viridis")
left.set_xlabel("input index (frame of the dataset)")
left.set_ylabel("steps per system (FIRE + 40 NVT)")
fig.colorbar(scatter, ax=left, label="atoms")
right.hist(energy, bins=12)
right.set_xlabel("final potential energy per atom (eV/atom)")
right.set_ylabel("number of systems")
fig.tight_layout()
# Headless (no display: CI, ssh, the docs build) the figure is saved instead of shown.
if plt.get_backend().lower().endswith("agg"):
    plt.savefig("pipeline.png", dpi=100)
else:
    plt.show()
