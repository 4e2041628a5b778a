"""Nudged elastic band at batch scale: many bands in one live batch, each optimized as ASE does.

- :mod:`batchmd.neb.bands`: endpoint checks, interpolation (ASE's linear / IDPP), a band as
  one system of the live batch (:class:`Band`, :func:`band_data`).
- :mod:`batchmd.neb.forces`: :class:`NEBForces`, the model wrapper that evaluates every
  image of every band in one call and returns ASE's NEB forces (``aseneb``,
  ``improvedtangent``, ``eb``; climbing image).
- :mod:`batchmd.neb.run`: :func:`run_bands`, the inflight run.
- :mod:`batchmd.neb.results`: :class:`BandResult` (energies, barriers, transition state),
  :func:`plot_band`, :func:`write_images`.

Data flow: this package sits above the engine (it imports :mod:`batchmd.dynamics`,
:mod:`batchmd.data`, :mod:`batchmd.models`); nothing below imports it. See ``docs/neb.rst``.
"""

from batchmd.neb.bands import Band, band_data, check_endpoints, interpolate_band
from batchmd.neb.forces import METHODS, NEBForces
from batchmd.neb.results import BandResult, plot_band, write_images
from batchmd.neb.run import endpoint_energies, prepare_bands, run_bands

__all__ = ["Band", "BandResult", "METHODS", "NEBForces", "band_data", "check_endpoints", "endpoint_energies",
           "interpolate_band", "plot_band", "prepare_bands", "run_bands", "write_images"]
