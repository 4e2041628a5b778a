"""Material properties at batch scale, on top of the engine: equation of state (and, as they land,
elastic tensor and phonons).

Each ``compute_<property>(structures, model, ...)`` makes the variants every structure needs
(scaled, strained or displaced copies), runs all variants of all structures as ONE
inflight-batched run (:func:`batchmd.ase.run_frames`), and returns one result per
structure, in input order, with ``ok``/``error`` per structure, ``row()`` (flat columns,
units in the names) and ``plot(path)``.

- :func:`compute_eos` / :class:`EOSResult` (:mod:`batchmd.properties.eos`): V0, E0, B0, B0'
  from ASE's ``EquationOfState``.
- :mod:`batchmd.properties.common`: the shared pieces (variant runs, status checks, rows).

This package imports the engine; nothing in the engine imports it.
"""

from batchmd.properties.eos import EOSResult, compute_eos

__all__ = ["EOSResult", "compute_eos"]
