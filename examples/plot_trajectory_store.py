"""
Trajectories and thermo logs on disk
====================================

Run Nosé-Hoover NVT over several argon crystals with inflight batching, writing every
system's frames to one HDF5 store (:class:`~batchmd.trajectory.TrajectoryWriter`) and a
thermo log to Parquet (:class:`~batchmd.trajectory.ThermoLogHook`), every 10 of each
system's steps. Then read them back: the log as a pandas table (temperature and conserved
energy against time), the frames of one system as ``ase.Atoms``, and export two systems to
extended XYZ for OVITO or ``ase gui``. See :doc:`/trajectories`.

Units: time step in fs, temperature in K, energies in eV.
"""

import ase.io
import matplotlib.pyplot as plt
from ase.build import bulk

from batchmd.ase import run_frames
from batchmd.dynamics import NoseHooverChainNVT
from batchmd.models.lj import LennardJones
from batchmd.trajectory import ThermoLogHook, TrajectoryWriter, export_frames, list_systems, read_thermo, \
    read_trajectory

# %%
# Six argon crystals, rattled, through a live batch of at most 64 atoms
# ---------------------------------------------------------------------
structures = [bulk("Ar", "fcc", a=5.30, cubic=True).repeat((2, 2, 1 + i % 2)) for i in range(6)]
for i, atoms in enumerate(structures):
    atoms.rattle(0.05, seed=i)
model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
nvt = NoseHooverChainNVT(model, dt=5.0, temperature=40.0, tdamp=250.0, n_steps=200)

# %%
# Record while running
# --------------------
# ``stages=[nvt]`` gives the writers the time step (``time_fs``) and the conserved quantity;
# the ``with`` block closes them after the run and merges their segments into single files.
with TrajectoryWriter("nvt.h5", every=10, fields=("velocities", "energy"), stages=[nvt], overwrite=True) as traj, \
        ThermoLogHook("nvt.thermo.parquet", every=10, stages=[nvt], overwrite=True) as log:
    run_frames(structures, [nvt], hooks=[traj, log], max_atoms=64, refill_frequency=10)

print("systems in the store:", list_systems("nvt.h5"))
table = read_thermo("nvt.thermo.parquet").to_pandas()
print(table[["system_id", "step", "time_fs", "temperature_K", "total_energy_eV", "conserved_energy_eV"]].head())

# %%
# Temperature and conserved energy against time
# ---------------------------------------------
fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
for system_id, rows in table.groupby("system_id"):
    top.plot(rows["time_fs"] / 1000, rows["temperature_K"], label=f"system {system_id}")
    drift = rows["conserved_energy_eV"] - rows["conserved_energy_eV"].iloc[0]
    bottom.plot(rows["time_fs"] / 1000, 1000 * drift)
top.axhline(40.0, color="k", linestyle=":")
top.set_ylabel("temperature (K)")
top.legend(fontsize=7, ncol=2)
bottom.set_ylabel("conserved energy\nchange (meV)")
bottom.set_xlabel("time (ps)")
fig.tight_layout()
if plt.get_backend().lower().endswith("agg"):
    plt.savefig("trajectory_store.png", dpi=100)
else:
    plt.show()

# %%
# One system's frames, and an export for OVITO / ase gui
# ------------------------------------------------------
frames = read_trajectory("nvt.h5", 3)
print(len(frames), "frames of system 3; last at step", frames[-1].info["step"],
      f"({frames[-1].info['time_fs']:.0f} fs), T = {frames[-1].get_temperature():.1f} K")
export_frames("nvt.h5", [0, 3], "systems_0_3.extxyz")
print(len(ase.io.read("systems_0_3.extxyz", ":")), "frames written to systems_0_3.extxyz")
