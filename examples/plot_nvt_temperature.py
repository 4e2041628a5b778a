"""
Langevin NVT: a temperature trace
=================================

Heat relaxed argon crystals to 60 K with :class:`~batchmd.dynamics.NVTLangevin` and watch
each system's instantaneous kinetic temperature approach the thermostat's.

Units: time step in fs, temperature in K, friction in 1/fs.
"""

import matplotlib.pyplot as plt
import torch
from ase.build import bulk

from batchmd.data import Batch
from batchmd.dynamics import NVTLangevin, TrajectoryHook
from batchmd.models.lj import LennardJones

# %%
# Three perfect argon crystals, at rest
# -------------------------------------
structures = [bulk("Ar", "fcc", a=5.26, cubic=True).repeat(r) for r in [(2, 1, 1), (2, 2, 1), (2, 2, 2)]]
batch = Batch.from_ase(structures, dtype=torch.float64)
model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)

# %%
# 150 steps of 5 fs with a strong friction (fast equilibration)
# -------------------------------------------------------------
# ``TrajectoryHook`` computes the temperature from velocities and masses over each
# system's degrees of freedom (3N here: no constraints; see docs/ensembles.rst), every 5 steps.
target = 60.0
trajectory = TrajectoryHook(frequency=5, fields=("temperature", "energies"))
nvt = NVTLangevin(model, dt=5.0, temperature=target, friction=0.05, random_seed=0, n_steps=150,
                  hooks=[trajectory])
final = nvt.run(batch)
print("steps taken:", final.n_steps.tolist())

# %%
# Temperature against time
# ------------------------
time_ps = [5.0 * record["step"] / 1000.0 for record in trajectory.records]
temperature = torch.stack([record["temperature"] for record in trajectory.records])
late = temperature[len(temperature) // 2:]
print("mean temperature over the second half (K):", late.mean(dim=0).tolist())

fig, ax = plt.subplots(figsize=(6, 3.5))
for s, atoms in enumerate(structures):
    ax.plot(time_ps, temperature[:, s], label=f"{len(atoms)} atoms")
ax.axhline(target, color="k", linestyle=":", label="thermostat")
ax.set_xlabel("time (ps)")
ax.set_ylabel("temperature (K)")
ax.legend()
fig.tight_layout()
# Headless (no display: CI, ssh, the docs build) the figure is saved instead of shown.
if plt.get_backend().lower().endswith("agg"):
    plt.savefig("nvt_temperature.png", dpi=100)
else:
    plt.show()
