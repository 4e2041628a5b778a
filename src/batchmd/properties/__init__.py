"""Material properties at batch scale, on top of the engine: equation of state, elastic tensor, phonons.

Each ``compute_<property>(structures, model, ...)`` makes the variants every structure needs
(scaled, strained or displaced copies), runs all variants of all structures as ONE
inflight-batched run (:func:`batchmd.ase.run_frames`), and returns one result per
structure, in input order, with ``ok``/``error`` per structure, ``row()`` (flat columns,
units in the names) and ``plot(path)``.

- :func:`compute_eos` / :class:`EOSResult` (:mod:`batchmd.properties.eos`): V0, E0, B0, B0'
  from ASE's ``EquationOfState``.
- :func:`~batchmd.properties.elastic.compute_elastic` /
  :class:`~batchmd.properties.elastic.ElasticResult` (:mod:`batchmd.properties.elastic`): the
  6x6 elastic tensor from stress-strain finite differences, Voigt/Reuss/Hill moduli.
- :func:`~batchmd.properties.phonons.compute_phonons` /
  :class:`~batchmd.properties.phonons.PhononResult` (:mod:`batchmd.properties.phonons`):
  phonopy's force constants, bands, DOS and thermal properties. phonopy is an optional
  extra (``pip install 'batchmd[phonons]'``): these two names are imported on first use,
  so the package imports without it.
- :mod:`batchmd.properties.common`: the shared pieces (variant runs, single points, input
  relaxation, status checks, rows).

This package imports the engine; nothing in the engine imports it.
"""

from batchmd.properties.elastic import ElasticResult, compute_elastic
from batchmd.properties.eos import EOSResult, compute_eos

__all__ = ["EOSResult", "ElasticResult", "PhononResult", "compute_elastic", "compute_eos", "compute_phonons"]

_LAZY = {"PhononResult": "batchmd.properties._phonon_result", "compute_phonons": "batchmd.properties.phonons"}


def __getattr__(name):
    # phonons needs phonopy (the "phonons" extra): imported only when asked for
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'batchmd.properties' has no attribute {name!r}")
