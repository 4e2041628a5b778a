"""Stochastic cell rescaling (C-rescale) NPT with a Nosé-Hoover chain thermostat, batched.

Example
-------
>>> import ase.units
>>> from batchmd.dynamics import CRescaleNPT
>>> md = CRescaleNPT(model, dt=2.0, temperature=300.0, pressure=1.0 * ase.units.GPa,
...                  compressibility=0.3 / ase.units.GPa, taup=1000.0, tdamp=200.0,
...                  random_seed=1, n_steps=1000)                        # doctest: +SKIP

``tests/test_npt.py`` checks the mean pressure and the volume fluctuations.
"""

from __future__ import annotations

import torch
import warp as wp

from batchmd.dynamics.base import set_system_param, system_target
from batchmd.dynamics.constraints import system_dof
from batchmd.dynamics.npt import BAROSTAT_REQUIREMENTS, MTKBase, check_barostat_batch, check_pressure
from batchmd.dynamics.nose_hoover import NoseHooverChainNVT, check_positive
from batchmd.dynamics.velocities import ensure_rng_counter
from batchmd.kernels import crescale as crk

__all__ = ["CRescaleNPT"]


class CRescaleNPT(NoseHooverChainNVT):
    """Isothermal-isobaric MD: isotropic stochastic cell rescaling and a Nosé-Hoover chain thermostat.

    The barostat is C-rescale (M. Bernetti, G. Bussi, J. Chem. Phys. 153, 114107 (2020)),
    a first-order stochastic equation for ``eps = ln V`` that samples the isothermal-isobaric
    ensemble with any ``taup`` and ``compressibility`` (these set how fast the volume
    relaxes, not its distribution), with no cell momentum to oscillate. The thermostat is
    :class:`~batchmd.dynamics.NoseHooverChainNVT`'s. The cell keeps its shape. ASE has no
    C-rescale; TorchSim offers one.

    Parameters
    ----------
    model : callable
        Must compute the stress (e.g. :class:`~batchmd.models.lj.LennardJones`).
    dt, temperature, tdamp, tchain, tloop, n_steps, hooks, convergence_hook, velocities
        As for :class:`~batchmd.dynamics.NoseHooverChainNVT` (fs, K).
    pressure : float or torch.Tensor
        External pressure, eV/Å^3 (``ase.units.GPa`` per GPa). Default 0.
    compressibility : float or torch.Tensor
        ``beta_T`` of the barostat, Å^3/eV (> 0; ``1 / ase.units.GPa`` per 1/GPa); an estimate of
        the system's isothermal compressibility (LJ argon near 40 K: ~0.3 1/GPa).
    taup : float or torch.Tensor
        Barostat relaxation time, fs (> 0). Default 1000.
    random_seed : int, optional
        Seed of the barostat noise and of Maxwell-Boltzmann draws; the noise of a system
        depends only on ``(random_seed, system_id, rng_counter)``. ``None`` draws one.

    Raises
    ------
    ValueError
        Bad parameters; a model declaring ``computes_stress=False``. Systems that are not
        fully periodic, have no volume or carry ``FixAtoms`` never enter the
        stage (admission, :mod:`batchmd.dynamics.admission`, as for the MTK barostats).

    Notes
    -----
    One step: thermostat half step, half kick, barostat (pressure from the stress of the
    current configuration and the kinetic tensor of the half-kicked velocities;
    ``x, h *= mu``, ``v /= mu`` with ``mu = exp(d eps / 3)``), drift; model evaluation;
    half kick, thermostat half step (see :mod:`batchmd.kernels.crescale`). The thermostat
    targets each system's degrees of freedom (the ``dof`` field, ``3N``, or ``3N - 3`` with
    ``FixCom``, which is supported; ``FixAtoms`` is refused). State: the
    ``nhc_*`` fields of the thermostat, ``crs_pressure`` (eV/Å^3), ``crs_taup`` (fs),
    ``crs_compressibility`` (Å^3/eV) and the int32 ``rng_counter``.
    """

    name = "crescale"
    method = "npt-crescale"
    needs_stress = True
    #: Admission rules (:mod:`batchmd.dynamics.admission`): those of every barostat.
    REQUIREMENTS = BAROSTAT_REQUIREMENTS

    def requirements(self):
        """``REQUIREMENTS``: fully periodic 3-D cells, no FixAtoms (FixCom allowed)."""
        return self.REQUIREMENTS

    def __init__(self, model, dt=1.0, temperature=300.0, pressure=0.0, compressibility=None, taup=1000.0,
                 tdamp=100.0, tchain=3, tloop=1, n_steps=None, hooks=None, convergence_hook=None,
                 velocities: str = "auto", random_seed=None):
        super().__init__(model, dt=dt, temperature=temperature, tdamp=tdamp, tchain=tchain, tloop=tloop,
                         n_steps=n_steps, hooks=hooks, convergence_hook=convergence_hook, velocities=velocities,
                         random_seed=random_seed)
        owner = type(self).__name__
        if getattr(model, "computes_stress", None) is False:
            raise ValueError(f"{owner}: the model does not compute the stress (computes_stress=False), which a "
                             "barostat needs")
        if compressibility is None:
            raise ValueError(f"{owner}: compressibility (Å^3/eV) is required, e.g. 0.3 / ase.units.GPa")
        self.compressibility = check_positive(owner, "compressibility", compressibility)
        self.taup = check_positive(owner, "taup", taup)
        self.pressure = check_pressure(owner, pressure)
        self._checked = None

    def init_state(self, batch, mask: torch.Tensor) -> None:
        """The thermostat's state (:meth:`NoseHooverChainNVT.init_state`) and the ``crs_*`` parameters."""
        super().init_state(batch, mask)
        dtype = batch.positions.dtype
        pressure = system_target(batch, "target_pressure", self.pressure, dtype)
        set_system_param(batch, "crs_pressure", pressure, mask, dtype)
        set_system_param(batch, "crs_taup", self.taup, mask, dtype)
        set_system_param(batch, "crs_compressibility", self.compressibility, mask, dtype)
        if not batch.has_field("_crs_stretch") or batch["_crs_stretch"].shape != (batch.num_graphs,) or \
                batch["_crs_stretch"].dtype != dtype:
            batch.set_field("_crs_stretch", torch.ones(batch.num_graphs, dtype=dtype, device=batch.device), "system")
        ensure_rng_counter(batch)

    def pre_force(self, batch, stage_index: int) -> None:
        """Thermostat half step, half kick, cell rescaling and drift for active systems of ``stage_index``."""
        self._checked = check_barostat_batch(type(self).__name__, batch, stage_index, self._checked)
        view = self._views
        ids = batch.system_id.reshape(-1) if batch.has_field("system_id") else self._slots(batch)
        self._launch(crk.crescale_system_kernel, batch.num_graphs, [
            view("ptr", batch.ptr), view("stage", batch["stage"]), view("status", batch["status"]), int(stage_index),
            self._scalar("fs", batch), self._scalar("kB", batch),
            self._launch.scalar("seed", wp.int64, self.random_seed),
            view("system_id", ids),
            view("rng_counter", batch["rng_counter"]), view("nhc_dt", batch["nhc_dt"]),
            view("nhc_temperature", batch["nhc_temperature"]), view("nhc_tdamp", batch["nhc_tdamp"]),
            view("nhc_tchain", batch["nhc_tchain"]), view("nhc_tloop", batch["nhc_tloop"]),
            view("crs_pressure", batch["crs_pressure"]), view("crs_taup", batch["crs_taup"]),
            view("crs_compressibility", batch["crs_compressibility"]), view("atomic_masses", batch.atomic_masses),
            view("forces", batch.forces, vector=True), view("velocities", batch.velocities, vector=True),
            view("dof", system_dof(batch)), view("stress", batch.stress, matrix=True),
            view("cell", batch.cell, matrix=True), view("nhc_eta", batch["nhc_eta"]),
            view("nhc_p_eta", batch["nhc_p_eta"]), view("_nhc_scale", batch["_nhc_scale"]),
            view("_crs_stretch", batch["_crs_stretch"]),
        ], batch.device, batch.dtype)
        self._launch(crk.crescale_atom_kernel, batch.num_nodes, [
            view("batch_idx", batch.batch_idx), view("stage", batch["stage"]), view("status", batch["status"]),
            int(stage_index), self._scalar("fs", batch), view("nhc_dt", batch["nhc_dt"]),
            view("_nhc_scale", batch["_nhc_scale"]), view("_crs_stretch", batch["_crs_stretch"]),
            view("atomic_masses", batch.atomic_masses), view("forces", batch.forces, vector=True),
            view("velocities", batch.velocities, vector=True), view("positions", batch.positions, vector=True),
        ], batch.device, batch.dtype)

    def _slots(self, batch) -> torch.Tensor:
        cached = getattr(self, "_slot_ids", None)
        if cached is None or cached.shape[0] != batch.num_graphs or cached.device != batch.device:
            cached = torch.arange(batch.num_graphs, dtype=torch.int64, device=batch.device)
            self._slot_ids = cached
        return cached

    volume = staticmethod(MTKBase.volume)
    instantaneous_pressure = classmethod(MTKBase.instantaneous_pressure.__func__)
    kinetic_tensor = staticmethod(MTKBase.kinetic_tensor)

