"""Velocity Verlet (NVE) molecular dynamics, step for step as ``ase.md.verlet.VelocityVerlet``.

Example
-------
>>> from batchmd.dynamics import NVE
>>> md = NVE(model, dt=2.0, n_steps=1000)     # dt in fs          # doctest: +SKIP
>>> batch = md.run(batch)                                          # doctest: +SKIP

``tests/test_nve.py`` drives the stage protocol step by step against ASE.
"""

from __future__ import annotations

import ase.units
import torch

from batchmd.dynamics.base import Dynamics, check_parameter, set_system_param, system_target
from batchmd.dynamics.ranges import check_md_ranges
from batchmd.dynamics.velocities import check_policy
from batchmd.runtime import CachedLaunch, WarpViewCache
from batchmd.kernels.verlet import verlet_post_force_kernel_overloads, verlet_pre_force_kernel_overloads

__all__ = ["NVE"]


class NVE(Dynamics):
    """Microcanonical MD with the velocity Verlet integrator.

    A lone system follows ``ase.md.verlet.VelocityVerlet`` (same order of operations)
    to ~1e-13 in float64.

    Parameters
    ----------
    model : callable
        ``model(batch) -> {"energy", "forces", ...}``; called by the loop, not here.
    dt : float or torch.Tensor
        Time step in fs (a float, or a 1-D tensor of length ``batch.num_graphs`` giving
        one per system, indexed by slot at :meth:`init_state`). Default 1.0.
    n_steps : int, optional
        Steps to run in this stage (the normal end of an MD stage).
    hooks : list, optional
        Hooks run by the loop.
    convergence_hook : object, optional
        Rarely useful for MD; passed to :class:`~batchmd.dynamics.base.Dynamics`.
    temperature : float or torch.Tensor, optional
        K. Temperature of the Maxwell-Boltzmann draw of the velocity policy (no
        thermostat). None (default): systems that need velocities start from rest.
    velocities : str
        Velocity policy at stage entry: ``"auto"`` (default), ``"maxwell_boltzmann"``,
        ``"zero"`` or ``"keep"``; see :mod:`batchmd.dynamics.velocities`. With "auto", NVE
        after an optimiser starts from rest (as ASE's ``VelocityVerlet`` after ``FIRE``)
        or from a ``temperature`` draw, and keeps the velocities a system carries at the
        start of a run (file momenta, a previous MD run).
    random_seed : int, optional
        Seed of the Maxwell-Boltzmann draws (per system, keyed on ``system_id``).

    Notes
    -----
    Where the step runs: :meth:`pre_force` does the first half kick with the forces
    at the current positions (from the previous model call) and the drift; the loop
    then evaluates the model once; :meth:`post_force` does the closing half kick with
    the new forces. One kernel launch each.

    State fields: ``nve_dt`` (system, fs) and ``nve_temperature`` (K, with
    ``temperature``), set by :meth:`init_state` and travelling with the system;
    ``velocities`` (Å / ASE time unit, as ``atoms.get_velocities()``) are set at stage
    entry by the velocity policy. Fixed atoms (``fixed``) have zero force and velocity,
    so they never move.
    """

    name = "nve"
    method = "nve"

    def __init__(self, model, dt=1.0, n_steps=None, hooks=None, convergence_hook=None, temperature=None,
                 velocities: str = "auto", random_seed=None):
        super().__init__(model, n_steps=n_steps, convergence_hook=convergence_hook, hooks=hooks)
        check_md_ranges("NVE", dt=dt, temperature=temperature)  # unit slips, with units (skips strings)
        self.dt = check_parameter("NVE", "dt", dt)
        self.temperature = None if temperature is None else check_parameter("NVE", "temperature", temperature,
                                                                              allow_zero=True)
        self.velocity_policy = check_policy("NVE", velocities)
        if velocities == "maxwell_boltzmann" and temperature is None:
            raise ValueError("NVE: velocities='maxwell_boltzmann' needs a temperature (K)")
        if random_seed is None:
            random_seed = int(torch.randint(0, 2**62, (1,)).item())
        self.random_seed = int(random_seed)
        self._views = WarpViewCache()
        self._launch_pre = CachedLaunch(verlet_pre_force_kernel_overloads)
        self._launch_post = CachedLaunch(verlet_post_force_kernel_overloads)

    def init_state(self, batch, mask: torch.Tensor) -> None:
        """Set ``nve_dt`` (and ``nve_temperature``) where ``mask`` [B] is True; create zero velocities if missing.

        The loop then applies the velocity policy to the entering systems.
        """
        set_system_param(batch, "nve_dt", self.dt, mask, batch.positions.dtype)
        if self.temperature is not None or batch.has_field("target_temperature"):
            temperature = system_target(batch, "target_temperature", self.temperature, batch.positions.dtype)
            set_system_param(batch, "nve_temperature", temperature, mask, batch.positions.dtype)
        if not batch.has_field("velocities") or batch.velocities is None:
            batch.set_field("velocities", torch.zeros_like(batch.positions), "atom")

    def velocity_temperature(self, batch):
        """``nve_temperature`` (K) for Maxwell-Boltzmann draws, or None without ``temperature`` (start from rest).

        A system's own ``target_temperature`` (``atoms.info["temperature_K"]``) replaces the
        stage's; systems with neither draw zeros.
        """
        has = self.temperature is not None or batch.has_field("target_temperature")
        return batch["nve_temperature"] if has and batch.has_field("nve_temperature") else None

    def _common(self, batch, stage_index):
        view = self._views
        return [
            view("batch_idx", batch.batch_idx),
            view("stage", batch["stage"]),
            view("status", batch["status"]),
            int(stage_index),
            ase.units.fs,
            view("nve_dt", batch["nve_dt"]),
            view("atomic_masses", batch.atomic_masses),
            view("forces", batch.forces, vector=True),
            view("velocities", batch.velocities, vector=True),
        ]

    def pre_force(self, batch, stage_index: int) -> None:
        """Half kick with the current forces, then drift, for active systems of stage ``stage_index``."""
        inputs = self._common(batch, stage_index)
        positions = batch.positions
        inputs.append(self._views("positions", positions, vector=True))
        self._launch_pre(positions.dtype, positions.shape[0], inputs, positions.device)

    def post_force(self, batch, stage_index: int) -> None:
        """Closing half kick with the new forces."""
        positions = batch.positions
        self._launch_post(positions.dtype, positions.shape[0], self._common(batch, stage_index), positions.device)
