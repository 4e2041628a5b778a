"""Nosé-Hoover chain NVT, batched, step for step as ``ase.md.nose_hoover_chain.NoseHooverChainNVT``.

Example
-------
>>> from batchmd.dynamics import NoseHooverChainNVT
>>> md = NoseHooverChainNVT(model, dt=2.0, temperature=300.0, tdamp=200.0,
...                         n_steps=1000)                            # doctest: +SKIP
>>> batch = md.run(batch)                                            # doctest: +SKIP

``tests/test_nose_hoover.py`` compares trajectories with ASE's and checks the canonical
kinetic-energy distribution.
"""

from __future__ import annotations

import math

import ase.units
import torch

from batchmd.dynamics.base import Dynamics, set_system_param, system_target
from batchmd.dynamics.constraints import system_dof
from batchmd.dynamics.ranges import check_md_ranges
from batchmd.dynamics.velocities import check_policy
from batchmd.kernels import nose_hoover as nhk
from batchmd.runtime import LaunchCache, WarpViewCache, warp_scalar

__all__ = ["NoseHooverChainNVT", "check_positive", "check_count", "set_chain_rows"]


def check_positive(owner: str, name: str, value, allow_zero: bool = False):
    """Validate a per-system float parameter (a number or a 1-D tensor); returns it unchanged.

    Raises ``ValueError`` for non-finite values, values <= 0 (< 0 with ``allow_zero``) or a
    tensor that is not 1-D.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{owner}: {name} must be a number or a 1-D real tensor (one per system)")
        values = value.detach().double().cpu()
        bad = ~torch.isfinite(values) | ((values < 0) if allow_zero else (values <= 0))
        if bool(bad.any()):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{owner}: {name} must be finite and {bound}, got {value.tolist()}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
        value < 0 if allow_zero else value <= 0
    ):
        raise ValueError(f"{owner}: {name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def check_count(owner: str, name: str, value):
    """Validate a per-system integer parameter >= 1 (an int or a 1-D integer tensor); returns it."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.is_floating_point() or value.dtype == torch.bool or bool((value < 1).any()):
            raise ValueError(f"{owner}: {name} must be an int >= 1 or a 1-D integer tensor of them, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def chain_width(value) -> int:
    """Largest chain length of a per-system count parameter (host value, read at construction)."""
    return int(value.max()) if isinstance(value, torch.Tensor) else int(value)


def set_chain_rows(batch, name: str, width: int, mask: torch.Tensor) -> None:
    """Zero the rows of chain field ``name`` ([B, width'] float) where ``mask`` [B] is True.

    The field is created (zeros) if missing and widened with zero columns if narrower than
    ``width``: stages of different chain lengths share it, each system using its own
    ``tchain``/``pchain`` leading columns. Device-side only.
    """
    num, dtype, device = batch.num_graphs, batch.positions.dtype, batch.device
    current = batch[name] if batch.has_field(name) else None
    if current is None or current.dim() != 2 or current.shape[0] != num or current.dtype != dtype:
        current = torch.zeros(num, width, dtype=dtype, device=device)
    elif current.shape[1] < width:
        current = torch.cat([current, current.new_zeros(num, width - current.shape[1])], dim=1)
    new = torch.where(mask[:, None], torch.zeros_like(current), current)
    batch.set_field(name, new.contiguous(), "system")


class NoseHooverChainNVT(Dynamics):
    """Canonical-ensemble MD with a Nosé-Hoover chain thermostat, as ASE's ``NoseHooverChainNVT``.

    A lone system follows ``ase.md.nose_hoover_chain.NoseHooverChainNVT`` (same splitting,
    same Suzuki-Yoshida sub-steps) to ~1e-12 Å in float64 (``tests/test_nose_hoover.py``).

    Parameters
    ----------
    model : callable
        ``model(batch) -> {"energy", "forces", ...}``; called by the loop, not here.
    dt : float or torch.Tensor
        Time step, fs (ASE takes ASE time units: ``timestep = dt * ase.units.fs``).
    temperature : float or torch.Tensor
        Target temperature, K (> 0). ASE's ``temperature_K``.
    tdamp : float or torch.Tensor
        Thermostat time scale, fs (> 0); ASE suggests ~100 ``dt``. ASE's ``tdamp`` is in ASE
        time units (``tdamp * ase.units.fs``).
    tchain : int or torch.Tensor
        Number of thermostat variables in the chain (>= 1). Default 3, as ASE.
    tloop : int or torch.Tensor
        Sub-steps of the thermostat integration (>= 1; each is 3 Suzuki-Yoshida steps).
        Default 1, as ASE.
    n_steps : int, optional
        Steps to run in this stage.
    hooks : list, optional
        Hooks run by the loop.
    convergence_hook : object, optional
        Passed to :class:`~batchmd.dynamics.base.Dynamics`.
    velocities : str
        Velocity policy at stage entry (:mod:`batchmd.dynamics.velocities`): ``"auto"``
        (default: Maxwell-Boltzmann at ``temperature`` after an optimiser or for systems
        without velocities; kept after MD or when the input carries momenta),
        ``"maxwell_boltzmann"``, ``"zero"``, ``"keep"``.
    random_seed : int, optional
        Seed of the Maxwell-Boltzmann draws (per system, keyed on ``system_id``); the
        dynamics itself is deterministic. ``None`` draws one at construction.

    Raises
    ------
    ValueError
        For a non-positive or non-finite ``dt``, ``temperature`` or ``tdamp``, or a chain
        length / loop count below 1.

    Notes
    -----
    **Per-system parameters and state** (floats or 1-D tensors of length
    ``batch.num_graphs``, indexed by slot when a system enters the stage) live in system
    fields that travel with each system through refills: ``nhc_dt`` (fs),
    ``nhc_temperature`` (K), ``nhc_tdamp`` (fs), ``nhc_tchain``, ``nhc_tloop`` (int32), and
    the chain itself, ``nhc_eta`` (dimensionless) and ``nhc_p_eta`` (eV·ASE time), both
    ``[B, width]`` with each system using its first ``nhc_tchain`` columns. Entering the
    stage resets the chain to zero, as a new ASE integrator does. A system's own
    ``target_temperature`` (K, ``atoms.info["temperature_K"]``) replaces ``temperature``
    for it (:func:`~batchmd.dynamics.base.system_target`).

    **Degrees of freedom** ``g`` (``Q_0 = g kT tdamp^2``, target kinetic energy ``g kT/2``)
    are each system's ``dof`` field, ``g = 3N - 3 N_fixed - 3 [fix_com]`` (ASE's
    ``get_number_of_degrees_of_freedom``; :mod:`batchmd.dynamics.constraints`, the one
    count every thermostat and reported temperature uses). Without constraints ``g = 3N``
    and the steps are ASE's exactly. ASE 3.29's ``NoseHooverChainNVT`` keeps ``3N`` with
    ``FixAtoms`` or ``FixCom`` (so with ``FixCom`` its mean kinetic energy is
    ``N/(N-1)`` times the equipartition value over the ``3N - 3`` it keeps), and its
    ``get_forces(md=True)`` leaves the fixed atoms' forces, so their internal momenta grow
    and feed the thermostat while ``FixAtoms`` holds the positions. batchmd samples the
    canonical ensemble of the constrained system (``docs/ensembles.rst``).

    **Where the step runs.** Before the force call: one thread per system sums
    ``sum m v^2`` and integrates the chain for ``dt/2``, then one thread per atom applies
    the scaling, the half kick and the drift. After it: the same per-system kernel on the
    kicked velocities, then the kick and scaling per atom (see
    :mod:`batchmd.kernels.nose_hoover`). Four launches a step, no host synchronisation.

    Velocities are ``batch.velocities`` (Å / ASE time unit), set at stage entry by the
    velocity policy. Per-system tensors should have the batch's dtype (a float32 tensor
    in a float64 run carries float32 rounding).

    References: Martyna, Klein, Tuckerman, J. Chem. Phys. 97, 2635 (1992); Tuckerman et
    al., J. Phys. A 39, 5629 (2006) (the factorisation ASE implements).
    """

    name = "nhc"
    method = "nvt-nose-hoover"

    def __init__(self, model, dt=1.0, temperature=300.0, tdamp=100.0, tchain=3, tloop=1, n_steps=None, hooks=None,
                 convergence_hook=None, velocities: str = "auto", random_seed=None):
        super().__init__(model, n_steps=n_steps, convergence_hook=convergence_hook, hooks=hooks)
        owner = type(self).__name__
        self.velocity_policy = check_policy(owner, velocities)
        if random_seed is None:
            random_seed = int(torch.randint(0, 2**62, (1,)).item())
        self.random_seed = int(random_seed)
        self._no_fixed_cache = {}
        self.dt = check_positive(owner, "dt", dt)
        self.temperature = check_positive(owner, "temperature", temperature)
        self.tdamp = check_positive(owner, "tdamp", tdamp)
        self.tchain = check_count(owner, "tchain", tchain)
        self.tloop = check_count(owner, "tloop", tloop)
        check_md_ranges(owner, dt=dt, temperature=temperature)
        self._views = WarpViewCache()
        self._launch = LaunchCache()

    def init_state(self, batch, mask: torch.Tensor) -> None:
        """Set the ``nhc_*`` parameters and zero the chain for systems where ``mask`` [B] is True."""
        dtype = batch.positions.dtype
        set_system_param(batch, "nhc_dt", self.dt, mask, dtype)
        set_system_param(batch, "nhc_temperature", system_target(batch, "target_temperature", self.temperature, dtype),
                         mask, dtype)
        set_system_param(batch, "nhc_tdamp", self.tdamp, mask, dtype)
        set_system_param(batch, "nhc_tchain", self.tchain, mask, torch.int32)
        set_system_param(batch, "nhc_tloop", self.tloop, mask, torch.int32)
        width = chain_width(self.tchain)
        set_chain_rows(batch, "nhc_eta", width, mask)
        set_chain_rows(batch, "nhc_p_eta", width, mask)
        if not batch.has_field("_nhc_scale") or batch["_nhc_scale"].shape != (batch.num_graphs,) or \
                batch["_nhc_scale"].dtype != dtype:
            batch.set_field("_nhc_scale", torch.ones(batch.num_graphs, dtype=dtype, device=batch.device), "system")
        if not batch.has_field("velocities") or batch.velocities is None:
            batch.set_field("velocities", torch.zeros_like(batch.positions), "atom")

    def velocity_temperature(self, batch):
        """``nhc_temperature`` (K): the temperature of the velocity policy's Maxwell-Boltzmann draws."""
        return batch["nhc_temperature"]

    def _scalar(self, name: str, batch):
        """``ase.units.fs`` or ``ase.units.kB`` as a Warp scalar of the batch dtype (kept while unchanged)."""
        return self._launch.scalar(name, warp_scalar(batch.dtype), getattr(ase.units, name))

    def _system_launch(self, batch, stage_index: int, kicked: int) -> None:
        view = self._views
        self._launch(nhk.nhc_system_kernel, batch.num_graphs, [
            view("ptr", batch.ptr), view("stage", batch["stage"]), view("status", batch["status"]),
            int(stage_index), int(kicked), self._scalar("fs", batch), self._scalar("kB", batch),
            view("nhc_dt", batch["nhc_dt"]), view("nhc_temperature", batch["nhc_temperature"]),
            view("nhc_tdamp", batch["nhc_tdamp"]), view("nhc_tchain", batch["nhc_tchain"]),
            view("nhc_tloop", batch["nhc_tloop"]), view("atomic_masses", batch.atomic_masses),
            view("forces", batch.forces, vector=True), view("velocities", batch.velocities, vector=True),
            view("dof", system_dof(batch)), view("nhc_eta", batch["nhc_eta"]),
            view("nhc_p_eta", batch["nhc_p_eta"]), view("_nhc_scale", batch["_nhc_scale"]),
        ], batch.device, batch.dtype)

    def _atom_inputs(self, batch, stage_index: int) -> list:
        view = self._views
        return [
            view("batch_idx", batch.batch_idx), view("stage", batch["stage"]), view("status", batch["status"]),
            int(stage_index), self._scalar("fs", batch), view("nhc_dt", batch["nhc_dt"]),
            view("_nhc_scale", batch["_nhc_scale"]),
            view("atomic_masses", batch.atomic_masses), view("forces", batch.forces, vector=True),
            view("velocities", batch.velocities, vector=True),
        ]

    def pre_force(self, batch, stage_index: int) -> None:
        """Chain half step, thermostat scaling, half kick and drift for active systems of ``stage_index``."""
        self._system_launch(batch, stage_index, kicked=0)
        inputs = self._atom_inputs(batch, stage_index)
        inputs.append(self._views("positions", batch.positions, vector=True))
        self._launch(nhk.nhc_pre_atom_kernel, batch.num_nodes, inputs, batch.device, batch.dtype)

    def post_force(self, batch, stage_index: int) -> None:
        """Closing half kick with the new forces, chain half step and thermostat scaling."""
        self._system_launch(batch, stage_index, kicked=1)
        self._launch(nhk.nhc_post_atom_kernel, batch.num_nodes, self._atom_inputs(batch, stage_index), batch.device,
                     batch.dtype)

    @staticmethod
    def thermostat_energy(batch) -> torch.Tensor:
        """Energy of the chain variables per system, eV [B] (ASE's ``get_thermostat_energy``).

        ``g kT eta_0 + kT sum_{j>0} eta_j + sum_j p_eta_j^2 / (2 Q_j)`` (``g`` the system's
        degrees of freedom, ``3N`` without constraints), with each system's own
        ``nhc_tchain`` columns. Torch ops on the batch device.
        """
        return chain_energy(batch, "nhc_eta", "nhc_p_eta", "nhc_tchain", batch["nhc_temperature"],
                            batch["nhc_tdamp"], system_dof(batch, record=False))

    @classmethod
    def conserved_energy(cls, batch) -> torch.Tensor:
        """Potential + kinetic + thermostat energy per system, eV [B] (ASE's ``get_conserved_energy``).

        Uses the batch's current ``energies`` (from the last model evaluation), velocities
        and chain. Constant up to the integration error in a correct run.
        """
        masses = batch.atomic_masses.to(batch.dtype)
        kinetic = torch.zeros(batch.num_graphs, dtype=batch.dtype, device=batch.device)
        kinetic.index_add_(0, batch.batch_idx.long(), 0.5 * masses * (batch.velocities ** 2).sum(-1))
        return batch.energies.reshape(-1) + kinetic + cls.thermostat_energy(batch)


def chain_energy(batch, eta_name, p_eta_name, chain_name, temperature, tau_fs, dof0) -> torch.Tensor:
    """``dof0 kT eta_0 + kT sum_{j>0} eta_j + sum_j p_j^2/(2 Q_j)`` per system (eV), ``Q_0 = dof0 kT tau^2``.

    Used for the Nosé-Hoover thermostat (``dof0 = g``, the degrees of freedom) and the MTK barostat chains.
    A chain with ``Q_j = 0`` (``g = 0``: the thermostat leaves it at rest) contributes 0.
    """
    eta, p_eta = batch[eta_name], batch[p_eta_name]
    columns = torch.arange(eta.shape[1], device=eta.device)
    used = (columns[None, :] < batch[chain_name].to(torch.int64)[:, None]).to(eta.dtype)
    kT = ase.units.kB * temperature.to(eta.dtype)
    tau = tau_fs.to(eta.dtype) * ase.units.fs
    q = (kT * tau * tau)[:, None].expand_as(eta).clone()
    q[:, 0] = q[:, 0] * dof0
    weights = kT[:, None].expand_as(eta).clone()
    weights[:, 0] = weights[:, 0] * dof0
    q = torch.where(q > 0, q, torch.ones_like(q))  # g = 0: p_eta stays 0 (no 0/0); q > 0 unchanged
    return ((weights * eta + 0.5 * p_eta * p_eta / q) * used).sum(1)
