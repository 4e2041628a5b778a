"""Potentials for :class:`~batchmd.data.Batch`: ``model(batch) -> {"energy", "forces", "stress"}``.

Names are imported lazily (PEP 562), so ``from batchmd.models import load_model`` and
``available_models()`` do not import torch, Warp or any MLIP package.

Example
-------
>>> from batchmd.models import LennardJones, load_model
>>> model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Model": "batchmd.models.base",
    "UnsupportedSpeciesError": "batchmd.models.base",
    "LennardJones": "batchmd.models.lj",
    "NeighborList": "batchmd.models.neighbors",
    "load_model": "batchmd.models.registry",
    "available_models": "batchmd.models.registry",
    "register_model": "batchmd.models.registry",
    "MissingExtraError": "batchmd.models.registry",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchmd.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
