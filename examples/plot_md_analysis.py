"""
Analysing an MD run: trajectory store, thermo log, T(t), g(r) and the MSD
=========================================================================

Run Langevin NVT on liquid Lennard-Jones argon (two independent replicas in one batched
run) while a :class:`~batchmd.trajectory.TrajectoryWriter` stores every system's frames
and a :class:`~batchmd.trajectory.ThermoLogHook` logs its thermodynamics; then read them
back with :mod:`batchmd.analysis`: the average temperature with its error bar, the radial
distribution function g(r) (ASE's RDF) and the mean squared displacement with the
self-diffusion coefficient (tidynamics, Einstein relation).

Units: Å, fs, K, eV; D in Å^2/fs and cm^2/s (1 Å^2/fs = 0.1 cm^2/s). The same plots from
the command line: ``batchmd plot argon.thermo.parquet --systems 0,1 -o thermo.png``,
``batchmd plot argon.h5 --what rdf -o rdf.png`` (see docs/analysis.rst).
"""

import ase.units
import matplotlib.pyplot as plt
from ase.build import bulk

from batchmd import analysis
from batchmd.ase import run_frames
from batchmd.dynamics import NVTLangevin
from batchmd.models.lj import LennardJones
from batchmd.trajectory import ThermoLogHook, TrajectoryWriter

# %%
# Two replicas of argon at Rahman's liquid density (1.374 g/cm^3), 256 atoms each
# -------------------------------------------------------------------------------
number_density = 1.374 / (39.948 * 1.66053906660)  # atoms per Å^3
a = (4.0 / number_density) ** (1.0 / 3.0)
frames = [bulk("Ar", "fcc", a=a, cubic=True).repeat(4) for _ in range(2)]
sigma = 3.4
model = LennardJones(sigma=sigma, epsilon=120.0 * ase.units.kB, cutoff=2.5 * sigma)

# %%
# Melt at 300 K, then hold at 94.4 K; record every 10 steps
# ---------------------------------------------------------
# The two stages' systems run in one batch; each replica gets its own Langevin noise
# (keyed on its system id). Frames and log rows of both stages are recorded; ``time_fs``
# restarts at each stage, and the observables use the last stage by default.
melt = NVTLangevin(model, dt=10.0, temperature=300.0, friction=0.02, random_seed=1, n_steps=150)
hold = NVTLangevin(model, dt=10.0, temperature=94.4, friction=0.002, random_seed=2, n_steps=600)
stages = [melt, hold]
with TrajectoryWriter("argon.h5", every=10, stages=stages, overwrite=True) as store, \
        ThermoLogHook("argon.thermo.parquet", 10, stages, overwrite=True) as log:
    run_frames(frames, stages, hooks=[store, log])

# %%
# Averages with error bars (pymbar's statistical inefficiency)
# ------------------------------------------------------------
# Discard the rows before equilibration (pymbar's ``detect_equilibration``).
for system in (0, 1):
    print(analysis.average("argon.thermo.parquet", system, "temperature_K", discard="auto"))

# %%
# g(r) over the second half of the 94.4 K stage, MSD and D after its first 2 ps
# -----------------------------------------------------------------------------
# ``r_max`` within half the cell's smallest width (11.6 Å here) needs no repeated cell.
g = [analysis.rdf("argon.h5", s, r_max=11.0, n_bins=110, frames=slice(30, None, 6)) for s in (0, 1)]
msds = [analysis.msd("argon.h5", s, frames=slice(20, None), remove_com=True) for s in (0, 1)]
d = analysis.diffusion_coefficient("argon.h5", [0, 1], frames=slice(20, None), remove_com=True)
print(f"first peak of g(r) at {g[0].r[g[0].g.argmax()]:.2f} Å (height {g[0].g.max():.2f})")
print(f"D = {d.D_cm2_s:.2e} +/- {d.sem_cm2_s:.1e} cm^2/s over lags {d.fit_fs[0]:.0f}-{d.fit_fs[1]:.0f} fs "
      "(Langevin friction slows diffusion: measure D in NVE, as Rahman's 2.43e-5 cm^2/s; see docs/analysis.rst)")

# %%
# Plots: T(t) from the log, g(r) and the MSD from the store
# ---------------------------------------------------------
fig, (ax_t, ax_g, ax_m) = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
for system in (0, 1):
    rows = analysis.series("argon.thermo.parquet", system, "temperature_K", stage=None)
    ax_t.plot(rows["step"] * 10.0 / 1000.0, rows["temperature_K"], label=f"system {system}")
ax_t.axvline(150 * 10.0 / 1000.0, color="0.6", ls=":")
ax_t.set_xlabel("time (ps)")
ax_t.set_ylabel("temperature (K)")
ax_t.legend()
analysis.plot_rdf(g, ax=ax_g)
analysis.plot_msd(msds, ax=ax_m, diffusion=d)
analysis.plot_thermo("argon.thermo.parquet", [0, 1], "md_analysis_thermo.png")  # T, E, P, V panels
# Headless (no display: CI, ssh, the docs build) the figure is saved instead of shown.
if plt.get_backend().lower().endswith("agg"):
    plt.savefig("md_analysis.png", dpi=100)
else:
    plt.show()
