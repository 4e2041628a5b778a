"""batchmd: batched molecular dynamics and relaxation with inflight batching on NVIDIA Warp.

Units throughout: energy eV, length Å, mass amu, temperature K, MD time steps fs.
See the README and the gallery in ``examples/`` for a first run.

The two workflow functions are also reachable from the package (imported on first use, so
``import batchmd`` stays cheap): ``batchmd.relax`` is :func:`batchmd.ase.relax` and
``batchmd.run_frames`` is :func:`batchmd.ase.run_frames`.
"""

__version__ = "0.1.0"

_LAZY = {"relax": "batchmd.ase", "run_frames": "batchmd.ase"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'batchmd' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
