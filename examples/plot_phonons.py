"""
Phonons of four EMT crystals with phonopy, every displaced supercell in one batched run
=========================================================================================

:func:`~batchmd.properties.phonons.compute_phonons` lets phonopy build the supercells and the
finite displacements of every structure, evaluates the perfect and displaced supercells of
**all** of them as one inflight-batched single-point run, and hands the forces back to
phonopy for the force constants, band structure, density of states and the harmonic thermal
properties.

Here: fcc Cu, Al and Ni (primitive cells, 3x3x3 supercells) and the L1_2 alloy Cu3Au
(conventional cell, 2x2x2 supercell) with ASE's EMT. Units: THz, J/K/mol (per mole of
primitive cells, as phonopy reports), K.
"""

import matplotlib.pyplot as plt
import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.units import kB, mol

from batchmd.models import load_model
from batchmd.properties.phonons import compute_phonons

# %%
# Four crystals, one call
# -----------------------
a = 3.74
cu3au = Atoms("AuCu3", cell=[a, a, a], pbc=True,
              scaled_positions=[[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
structures = [bulk("Cu", "fcc", a=3.59), bulk("Al", "fcc", a=4.05), bulk("Ni", "fcc", a=3.52), cu3au]
supercells = [np.diag([3, 3, 3])] * 3 + [np.diag([2, 2, 2])]
results = compute_phonons(structures, load_model("emt"), supercell_matrix=supercells, mesh=(16, 16, 16),
                          temperatures=np.arange(0, 1001, 10))
for res in results:
    row = res.row()
    print(f"{row['formula']:6s} supercell {row['supercell']} ({row['n_supercell_atoms']} atoms, "
          f"{row['n_displacements']} displacements): max {row['max_freq_THz']:.2f} THz, "
          f"{row['n_imaginary']} imaginary modes, Cv(300 K) = {row['Cv_300K_J_K_mol']:.2f} J/K/mol")

# %%
# Cu bands and DOS, and the heat capacity of all four
# ---------------------------------------------------
# ``results[0].plot("cu_bands.png")`` writes the bands and DOS on their own; here they share a
# figure with Cv(T), which tends to Dulong-Petit, 3 N R per mole of primitive cells.
cu = results[0]
fig, (bands, dos, cv) = plt.subplots(1, 3, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1, 2]})
offset, ticks, labels = 0.0, [0.0], [cu.band_labels[0][0]]
for (start, end), dist, freq in zip(cu.band_labels, cu.band_distances, cu.band_frequencies):
    x = dist - dist[0] + offset
    bands.plot(x, freq, color="C0", lw=1)
    if abs(x[0] - ticks[-1]) < 1e-9 and start != labels[-1]:
        labels[-1] = f"{labels[-1]}|{start}"
    offset = x[-1]
    ticks.append(offset)
    labels.append(end)
bands.set_xticks(ticks, labels)
bands.set_xlim(0, offset)
bands.set_ylabel("frequency (THz)")
bands.set_title("Cu (EMT) phonon bands")
dos.plot(cu.dos, cu.dos_frequencies, color="C1")
dos.set_ylim(bands.get_ylim())
dos.set_xlabel("DOS (states/THz)")
R = kB * mol * 1.602176634e-19  # J/K/mol
for res in results:
    n = len(res.phonopy.primitive)
    cv.plot(res.temperatures, res.heat_capacity_J_K_mol / (3 * n * R), label=res.formula)
cv.axhline(1.0, color="0.5", ls="--", lw=0.8)
cv.set_xlabel("T (K)")
cv.set_ylabel("Cv / 3NR")
cv.legend()
fig.tight_layout()
fig.savefig("phonons.png")
