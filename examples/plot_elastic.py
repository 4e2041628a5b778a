"""
Elastic tensors of fcc metals, every strain of every crystal in one batched run
===============================================================================

:func:`batchmd.properties.elastic.compute_elastic` relaxes each crystal (atoms and cell), strains
it along the six Voigt components at -1%, -0.5%, +0.5% and +1%, relaxes the ions at every strained
cell and fits the stress-strain lines (Le Page & Saxe 2002). All 3 x 25 variants run as one
inflight batch. The model here is ASE's EMT (cheap); any batchmd model with a stress works the
same way (Lennard-Jones, SevenNet-0, MACE, ...).

Units: C and the moduli in GPa; strain dimensionless (engineering strain for the shears);
stress positive in tension (ASE's convention).
"""

import matplotlib.pyplot as plt
import numpy as np
from ase.build import bulk

from batchmd.models import load_model
from batchmd.properties.elastic import compute_elastic

# %%
# Three metals, one batched run
# -----------------------------
# ``relax_input=True`` first relaxes positions and cell (``FrechetCellFilter``, batched too),
# so that the strains start from the model's own zero-stress lattice.
structures = [bulk("Cu", "fcc", a=3.6), bulk("Al", "fcc", a=4.05), bulk("Ni", "fcc", a=3.52)]
results = compute_elastic(structures, load_model("emt"), relax_input=True, fmax=0.005)

np.set_printoptions(precision=1, suppress=True, linewidth=120)
cu = results[0]
print("Cu, C (GPa), Voigt order xx yy zz yz xz xy:")
print(np.round(cu.C_sym, 1) + 0.0)  # + 0.0: no "-0." for round-off zeros
for result in results:
    row = result.row()
    print(f"{row['formula']:3s} C11 {row['C11_GPa']:6.1f}  C12 {row['C12_GPa']:6.1f}  C44 {row['C44_GPa']:5.1f}  "
          f"K_VRH {row['K_VRH_GPa']:6.1f}  G_VRH {row['G_VRH_GPa']:5.1f} GPa  stable {row['stable']}")

# %%
# The fit, and the tensor
# -----------------------
# The left panel is the symmetric part of the fitted tensor (what the moduli use: cubic, so
# C11 = C22 = C33, C12 = C13 = C23, C44 = C55 = C66 and zeros elsewhere); the right panels
# show each strained component's six stresses with their least-squares lines.
fig = plt.figure(figsize=(13, 5.2), layout="constrained")
cu.figure(fig)
fig.savefig("elastic.png", dpi=80)
