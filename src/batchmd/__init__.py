"""batchmd: batched molecular dynamics and relaxation with inflight batching on NVIDIA Warp.

Units throughout: energy eV, length Å, mass amu, temperature K, MD time steps fs.
See the README and the gallery in ``examples/`` for a first run.
"""

__version__ = "0.1.0"
