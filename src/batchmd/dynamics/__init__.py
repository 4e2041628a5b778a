"""Dynamics: FIRE, LBFGS (with cell filters), NVE, NVTLangevin, NoseHooverChainNVT, IsotropicMTKNPT, MTKNPT, the FusedStage loop, sampler, hooks and sinks.

Example
-------
>>> from batchmd.dynamics import FIRE, NVTLangevin, NVE, FusedStage, ConvergenceHook, SizeAwareSampler
>>> from batchmd.dynamics import NoseHooverChainNVT, IsotropicMTKNPT, MTKNPT

See ``examples/inflight_batching.py``.
"""

from batchmd.dynamics.base import Dynamics
from batchmd.dynamics.convergence import ConvergenceHook
from batchmd.dynamics.fused import FusedStage
from batchmd.dynamics.hooks import ConvergedSnapshotHook, Hook, HookContext, HookStage, RunStats, TrajectoryHook
from batchmd.dynamics.sampler import SizeAwareSampler
from batchmd.dynamics.stage_results import status_names
from batchmd.dynamics.status import SystemStatus

__all__ = [
    "Dynamics",
    "ConvergenceHook",
    "FusedStage",
    "SizeAwareSampler",
    "SystemStatus",
    "status_names",
    "Hook",
    "HookStage",
    "HookContext",
    "RunStats",
    "ConvergedSnapshotHook",
    "TrajectoryHook",
    "FIRE",
    "NVE",
    "NVTLangevin",
    "NoseHooverChainNVT",
    "IsotropicMTKNPT",
    "MTKNPT",
    "CRescaleNPT",
    "LBFGS",
    "FrechetCellFilter",
    "UnitCellFilter",
]


def __getattr__(name):
    # The method classes load lazily so that importing the loop does not compile their kernels.
    if name == "FIRE":
        from batchmd.dynamics.fire import FIRE

        return FIRE
    if name == "NVE":
        from batchmd.dynamics.verlet import NVE

        return NVE
    if name == "NVTLangevin":
        from batchmd.dynamics.langevin import NVTLangevin

        return NVTLangevin
    if name == "NoseHooverChainNVT":
        from batchmd.dynamics.nose_hoover import NoseHooverChainNVT

        return NoseHooverChainNVT
    if name == "CRescaleNPT":
        from batchmd.dynamics.crescale import CRescaleNPT

        return CRescaleNPT
    if name in ("IsotropicMTKNPT", "MTKNPT"):
        from batchmd.dynamics import npt

        return getattr(npt, name)
    if name == "LBFGS":
        from batchmd.dynamics.lbfgs import LBFGS

        return LBFGS
    if name in ("FrechetCellFilter", "UnitCellFilter"):
        from batchmd.dynamics import cell_filter

        return getattr(cell_filter, name)
    raise AttributeError(f"module 'batchmd.dynamics' has no attribute {name!r}")
