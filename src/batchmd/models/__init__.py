"""Potentials for :class:`~batchmd.data.Batch`: ``model(batch) -> {"energy", "forces", "stress"}``.

Example
-------
>>> from batchmd.models import LennardJones
>>> model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
"""

from batchmd.models.base import Model
from batchmd.models.lj import LennardJones
from batchmd.models.neighbors import NeighborList

__all__ = ["Model", "LennardJones", "NeighborList"]
