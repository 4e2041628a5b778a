"""
MTK NPT: a pressure scan in one batch
=====================================

Five argon crystals, each at its own external pressure, advanced together by
:class:`~batchmd.dynamics.IsotropicMTKNPT` (ASE's ``IsotropicMTKNPT``, batched): one
launch moves every system, and the per-system ``pressure`` tensor gives each its own
target. The mean volumes trace the equation of state of Lennard-Jones argon at 40 K.

Units: time step, ``tdamp`` and ``pdamp`` in fs; temperature in K; pressure in eV/Å^3
(``ase.units.GPa`` converts from GPa).
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from ase import units
from ase.build import bulk

from batchmd.data import Batch
from batchmd.dynamics import IsotropicMTKNPT
from batchmd.models.lj import LennardJones

# %%
# Five 32-atom crystals and five pressures
# ----------------------------------------
pressures_gpa = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
structures = [bulk("Ar", "fcc", a=5.3, cubic=True) * (2, 2, 2) for _ in pressures_gpa]
batch = Batch.from_ase(structures, dtype=torch.float64)
model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)  # computes the stress the barostat needs

# %%
# 1200 steps of 4 fs
# ------------------
# The systems start at rest, so the velocity policy draws Maxwell-Boltzmann velocities at
# 40 K (seeded). ``pdamp`` sets the barostat's time scale (ASE suggests ~1000 dt; shorter
# here so the cells settle within the example's few picoseconds).
npt = IsotropicMTKNPT(model, dt=4.0, temperature=40.0,
                      pressure=torch.tensor(pressures_gpa * units.GPa, dtype=torch.float64),
                      tdamp=100.0, pdamp=400.0, random_seed=0)
volumes, pressures = [], []
for step in range(1200):
    npt.step(batch)
    if step % 10 == 0:
        volumes.append(npt.volume(batch) / batch.num_atoms_per_system)
        pressures.append(npt.instantaneous_pressure(batch) / units.GPa)
volumes = torch.stack(volumes).numpy()
pressures = torch.stack(pressures).numpy()
late = slice(len(volumes) // 2, None)
print("target pressure (GPa):   ", pressures_gpa.tolist())
print("mean pressure (GPa):     ", np.round(pressures[late].mean(0), 3).tolist())
print("mean volume (Å^3/atom):  ", np.round(volumes[late].mean(0), 2).tolist())

# %%
# Volume against time, and the equation of state
# ----------------------------------------------
time_ps = 4.0 * 10 * np.arange(len(volumes)) / 1000.0
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
for s, p in enumerate(pressures_gpa):
    left.plot(time_ps, volumes[:, s], label=f"{p:.2f} GPa")
left.set_xlabel("time (ps)")
left.set_ylabel("volume (Å$^3$/atom)")
left.legend(fontsize="small")
right.errorbar(volumes[late].mean(0), pressures_gpa, xerr=volumes[late].std(0), fmt="o")
right.set_xlabel("mean volume (Å$^3$/atom)")
right.set_ylabel("pressure (GPa)")
right.set_title("LJ argon, 40 K")
fig.tight_layout()
# Headless (no display: CI, ssh, the docs build) the figure is saved instead of shown.
if plt.get_backend().lower().endswith("agg"):
    plt.savefig("npt_pressure_scan.png", dpi=100)
else:
    plt.show()
