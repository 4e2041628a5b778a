"""Data layer: :class:`AtomicData` (one system) and :class:`Batch` (many systems).

Units: Å, amu, eV, velocities in Å per ASE time unit. Knows nothing of dynamics.

Example
-------
>>> from ase.build import molecule
>>> from batchmd.data import Batch
>>> Batch.from_ase([molecule("H2O"), molecule("CH4")]).num_nodes
8
"""

from batchmd.data.atomic_data import MAX_ATOMIC_NUMBER, AtomicData
from batchmd.data.batch import Batch
from batchmd.data.fields import KNOWN_FIELDS, LEVELS, FieldSpec

__all__ = ["AtomicData", "Batch", "FieldSpec", "KNOWN_FIELDS", "LEVELS", "MAX_ATOMIC_NUMBER"]
