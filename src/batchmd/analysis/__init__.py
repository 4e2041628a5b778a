"""Observables and plots from trajectory stores and thermo logs (:mod:`batchmd.trajectory`).

- :func:`rdf`, :func:`partial_rdfs`: radial distribution function g(r), averaged over
  frames (ASE's :func:`ase.geometry.rdf.get_rdf`);
- :func:`msd`, :func:`diffusion_coefficient`: mean squared displacement (tidynamics' FFT
  algorithm, unwrapped positions) and the self-diffusion coefficient (Einstein relation);
- :func:`average`: mean of a thermo-log column with the standard error from pymbar's
  statistical inefficiency;
- :func:`plot_thermo`, :func:`plot_rdf`, :func:`plot_msd`: PNG figures (``batchmd plot``).

This package sits above the engine and the trajectory package: it only reads stores
(:func:`batchmd.trajectory.read_trajectory`) and logs (:func:`batchmd.trajectory.read_thermo`).
See docs/analysis.rst.

Example
-------
>>> from batchmd import analysis                                                # doctest: +SKIP
>>> g = analysis.rdf("nvt.h5", system_id=0, r_max=8.0, n_bins=80)
>>> d = analysis.diffusion_coefficient("nve.h5", [0, 1, 2, 3])
>>> print(d.D_cm2_s, "+/-", d.sem_cm2_s)
>>> print(analysis.average("nvt.thermo.parquet", 0, "temperature_K", discard="auto"))
"""

from batchmd.analysis.averages import Average, average, series
from batchmd.analysis.diffusion import A2_FS_TO_CM2_S, MSD, Diffusion, diffusion_coefficient, fit_diffusion, msd, unwrap
from batchmd.analysis.plots import plot_msd, plot_rdf, plot_thermo
from batchmd.analysis.structure import RDF, default_r_max, max_r_max, partial_rdfs, rdf

__all__ = ["rdf", "partial_rdfs", "max_r_max", "default_r_max", "RDF", "msd", "diffusion_coefficient",
           "fit_diffusion", "unwrap", "MSD", "Diffusion", "A2_FS_TO_CM2_S", "average", "series", "Average",
           "plot_thermo", "plot_rdf", "plot_msd"]
