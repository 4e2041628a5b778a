"""MTK NPT: ``IsotropicMTKNPT`` and ``MTKNPT``, batched, step for step as ``ase.md.nose_hoover_chain``'s.

Example
-------
>>> from batchmd.dynamics import MTKNPT
>>> import ase.units
>>> md = MTKNPT(model, dt=2.0, temperature=300.0, pressure=1.0 * ase.units.GPa,
...             tdamp=200.0, pdamp=2000.0, n_steps=1000)              # doctest: +SKIP
>>> batch = md.run(batch)                                             # doctest: +SKIP

``tests/test_npt.py`` compares trajectories and cells with ASE's and checks the mean
pressure and the volume fluctuations.
"""

from __future__ import annotations

import ase.units
import numpy as np
import torch

from batchmd.dynamics.admission import Requirements
from batchmd.dynamics.base import Dynamics, set_system_param, system_target
from batchmd.dynamics.constraints import system_dof
from batchmd.dynamics.ranges import check_md_ranges
from batchmd.dynamics.velocities import check_policy
from batchmd.dynamics.nose_hoover import chain_energy, chain_width, check_count, check_positive, set_chain_rows
from batchmd.kernels import npt as nptk
from batchmd.runtime import LaunchCache, WarpViewCache, warp_scalar

__all__ = ["IsotropicMTKNPT", "MTKNPT", "MTKBase", "check_pressure", "check_barostat_batch", "BAROSTAT_REQUIREMENTS"]

#: Admission rules of the barostats (MTK and C-rescale): fully periodic 3-D cells; FixAtoms
#: refused, as in ASE, which raises NotImplementedError; FixCom allowed (``3N - 3`` degrees of
#: freedom, :mod:`batchmd.dynamics.constraints`; ASE refuses it); at least one degree of
#: freedom (MTK's ``1 + 3/N_f`` and the barostat mass divide by ``N_f``; a one-atom crystal
#: with FixCom has none and is refused). One line per rule.
BAROSTAT_REQUIREMENTS = Requirements(
    needs_pbc=True,
    needs_stress=True,
    allows_fixed=False,
    allows_fix_com=True,
    needs_dof=True,
    role="a barostat",
    constraint_note="as in ASE, which raises NotImplementedError",
)


class MTKBase(Dynamics):
    """Shared implementation of :class:`IsotropicMTKNPT` and :class:`MTKNPT` (use those).

    Holds the parameters, the ``npt_*`` state, the launches and the observables
    (``volume``, ``kinetic_tensor``, ``instantaneous_pressure``, ``conserved_energy``).
    """

    isotropic = False
    needs_stress = True
    #: What a system needs to enter a barostat stage (:mod:`batchmd.dynamics.admission`): a fully
    #: periodic 3-D cell, no FixAtoms (as ASE's MTKNPT); FixCom is allowed.
    REQUIREMENTS = BAROSTAT_REQUIREMENTS

    def requirements(self) -> Requirements:
        """``REQUIREMENTS`` (see :meth:`Dynamics.requirements <batchmd.dynamics.Dynamics.requirements>`)."""
        return self.REQUIREMENTS

    def __init__(self, model, dt=1.0, temperature=300.0, pressure=0.0, tdamp=100.0, pdamp=1000.0, tchain=3,
                 pchain=3, tloop=1, ploop=1, n_steps=None, hooks=None, convergence_hook=None, velocities: str = "auto",
                 random_seed=None):
        super().__init__(model, n_steps=n_steps, convergence_hook=convergence_hook, hooks=hooks)
        owner = type(self).__name__
        self.velocity_policy = check_policy(owner, velocities)
        if random_seed is None:
            random_seed = int(torch.randint(0, 2**62, (1,)).item())
        self.random_seed = int(random_seed)
        if getattr(model, "computes_stress", None) is False:
            raise ValueError(f"{owner}: the model does not compute the stress (computes_stress=False), which a "
                             "barostat needs; e.g. LennardJones(compute_stress=True)")
        self.dt = check_positive(owner, "dt", dt)
        self.temperature = check_positive(owner, "temperature", temperature)
        self.pressure = check_pressure(owner, pressure)
        self.tdamp = check_positive(owner, "tdamp", tdamp)
        self.pdamp = check_positive(owner, "pdamp", pdamp)
        self.tchain = check_count(owner, "tchain", tchain)
        self.pchain = check_count(owner, "pchain", pchain)
        self.tloop = check_count(owner, "tloop", tloop)
        self.ploop = check_count(owner, "ploop", ploop)
        check_md_ranges(owner, dt=dt, temperature=temperature)
        self._views = WarpViewCache()
        self._launch = LaunchCache()
        self._checked = None

    # ----------------------------------------------------------------- state
    def init_state(self, batch, mask: torch.Tensor) -> None:
        """Set the ``npt_*`` parameters, zero both chains and the cell momenta, remember the entry cell.

        For systems where ``mask`` [B] is True; device-side only.
        """
        dtype, num, device = batch.positions.dtype, batch.num_graphs, batch.device
        temperature = system_target(batch, "target_temperature", self.temperature, dtype)
        pressure = system_target(batch, "target_pressure", self.pressure, dtype)
        for name, value in (("dt", self.dt), ("temperature", temperature), ("pressure", pressure),
                            ("tdamp", self.tdamp), ("pdamp", self.pdamp)):
            set_system_param(batch, f"npt_{name}", value, mask, dtype)
        for name, value in (("tchain", self.tchain), ("pchain", self.pchain), ("tloop", self.tloop),
                            ("ploop", self.ploop)):
            set_system_param(batch, f"npt_{name}", value, mask, torch.int32)
        set_chain_rows(batch, "npt_eta", chain_width(self.tchain), mask)
        set_chain_rows(batch, "npt_p_eta", chain_width(self.tchain), mask)
        set_chain_rows(batch, "npt_xi", chain_width(self.pchain), mask)
        set_chain_rows(batch, "npt_p_xi", chain_width(self.pchain), mask)
        set_system_param(batch, "npt_eps", 0.0, mask, dtype)
        set_system_param(batch, "npt_p_eps", 0.0, mask, dtype)
        cell = batch.cell.to(dtype).clone()  # never an alias: the kernels update batch.cell in place
        for name, value in (("npt_p_cell", torch.zeros_like(cell)), ("npt_cell0", cell)):
            if batch.has_field(name) and batch[name].shape == (num, 3, 3) and batch[name].dtype == dtype:
                value = torch.where(mask[:, None, None], value, batch[name])
            batch.set_field(name, value.contiguous(), "system")
        for name, shape in (("_npt_maps", (num, 4, 3, 3)), ("_npt_scale", (num,))):
            if not batch.has_field(name) or batch[name].shape != shape or batch[name].dtype != dtype:
                batch.set_field(name, torch.zeros(shape, dtype=dtype, device=device), "system")
        if not batch.has_field("velocities") or batch.velocities is None:
            batch.set_field("velocities", torch.zeros_like(batch.positions), "atom")

    def velocity_temperature(self, batch):
        """``npt_temperature`` (K): the temperature of the velocity policy's Maxwell-Boltzmann draws."""
        return batch["npt_temperature"]

    def _check(self, batch, stage_index: int) -> None:
        """Once per batch structure: see :func:`check_barostat_batch`."""
        self._checked = check_barostat_batch(type(self).__name__, batch, stage_index, self._checked)

    # ----------------------------------------------------------------- step
    def _scalar(self, name: str, batch):
        return self._launch.scalar(name, warp_scalar(batch.dtype), getattr(ase.units, name))

    def _system_inputs(self, batch, stage_index: int, forces: bool) -> list:
        view = self._views
        inputs = [
            view("ptr", batch.ptr), view("stage", batch["stage"]), view("status", batch["status"]),
            int(stage_index), int(self.isotropic), self._scalar("fs", batch), self._scalar("kB", batch),
        ]
        inputs += [view(f"npt_{name}", batch[f"npt_{name}"]) for name in (
            "dt", "temperature", "tdamp", "tchain", "tloop", "pdamp", "pchain", "ploop", "pressure")]
        inputs.append(view("dof", system_dof(batch)))
        inputs.append(view("atomic_masses", batch.atomic_masses))
        if forces:
            inputs.append(view("forces", batch.forces, vector=True))
        inputs += [
            view("velocities", batch.velocities, vector=True), view("stress", batch.stress, matrix=True),
            view("cell", batch.cell, matrix=True), view("npt_cell0", batch["npt_cell0"], matrix=True),
            view("npt_eps", batch["npt_eps"]), view("npt_p_eps", batch["npt_p_eps"]),
            view("npt_p_cell", batch["npt_p_cell"], matrix=True), view("npt_eta", batch["npt_eta"]),
            view("npt_p_eta", batch["npt_p_eta"]), view("npt_xi", batch["npt_xi"]), view("npt_p_xi", batch["npt_p_xi"]),
            view("_npt_maps", batch["_npt_maps"], matrix=True), view("_npt_scale", batch["_npt_scale"]),
        ]
        return inputs

    def _atom_inputs(self, batch, stage_index: int) -> list:
        view = self._views
        return [
            view("batch_idx", batch.batch_idx), view("stage", batch["stage"]), view("status", batch["status"]),
            int(stage_index), self._scalar("fs", batch), view("npt_dt", batch["npt_dt"]),
            view("_npt_scale", batch["_npt_scale"]), view("_npt_maps", batch["_npt_maps"], matrix=True),
            view("atomic_masses", batch.atomic_masses), view("forces", batch.forces, vector=True),
            view("velocities", batch.velocities, vector=True),
        ]

    def pre_force(self, batch, stage_index: int) -> None:
        """Chains, cell-momentum half kick, particle half kick, drift and new cell, for active systems."""
        self._check(batch, stage_index)
        self._launch(nptk.npt_pre_system_kernel, batch.num_graphs, self._system_inputs(batch, stage_index, False),
                     batch.device, batch.dtype)
        inputs = self._atom_inputs(batch, stage_index)
        inputs.append(self._views("positions", batch.positions, vector=True))
        self._launch(nptk.npt_pre_atom_kernel, batch.num_nodes, inputs, batch.device, batch.dtype)

    def post_force(self, batch, stage_index: int) -> None:
        """Closing particle half kick, cell-momentum half kick and both chains with the new forces and stress."""
        self._launch(nptk.npt_post_system_kernel, batch.num_graphs, self._system_inputs(batch, stage_index, True),
                     batch.device, batch.dtype)
        self._launch(nptk.npt_post_atom_kernel, batch.num_nodes, self._atom_inputs(batch, stage_index), batch.device,
                     batch.dtype)

    # ----------------------------------------------------------------- observables
    @staticmethod
    def volume(batch) -> torch.Tensor:
        """Cell volume per system, Å^3 [B]."""
        return torch.linalg.det(batch.cell).abs()

    @staticmethod
    def kinetic_tensor(batch) -> torch.Tensor:
        """``sum_i m_i v_i v_i^T`` per system, eV [B, 3, 3]."""
        v = batch.velocities
        mv = batch.atomic_masses.to(batch.dtype)[:, None, None] * v[:, :, None] * v[:, None, :]
        out = torch.zeros(batch.num_graphs, 3, 3, dtype=batch.dtype, device=batch.device)
        return out.index_add_(0, batch.batch_idx.long(), mv)

    @classmethod
    def instantaneous_pressure(cls, batch) -> torch.Tensor:
        """Pressure per system including the kinetic term, eV/Å^3 [B] (``-tr(stress_total)/3``, as ASE)."""
        volume = cls.volume(batch)
        stress = batch.stress - cls.kinetic_tensor(batch) / volume[:, None, None]
        return -torch.diagonal(stress, dim1=1, dim2=2).sum(-1) / 3.0

    def _barostat_masses(self, batch):
        n = system_dof(batch, record=False) / 3.0  # N_f / 3 (N without constraints), as the kernels
        kT = ase.units.kB * batch["npt_temperature"]
        tau = batch["npt_pdamp"] * ase.units.fs
        w = ((3.0 * n + 3.0) if self.isotropic else (n + 1.0)) * kT * tau * tau
        return n, kT, w

    def conserved_energy(self, batch) -> torch.Tensor:
        """ASE's ``get_conserved_energy`` per system, eV [B]: potential + kinetic + chains + cell kinetic + P V.

        Uses the batch's current ``energies`` (last model evaluation), velocities, cell and
        the ``npt_*`` state of systems in this stage.
        """
        n, kT, w = self._barostat_masses(batch)
        masses = batch.atomic_masses.to(batch.dtype)
        kinetic = torch.zeros(batch.num_graphs, dtype=batch.dtype, device=batch.device)
        kinetic.index_add_(0, batch.batch_idx.long(), 0.5 * masses * (batch.velocities ** 2).sum(-1))
        thermostat = chain_energy(batch, "npt_eta", "npt_p_eta", "npt_tchain", batch["npt_temperature"],
                                  batch["npt_tdamp"], 3.0 * n)
        # The iso barostat chain weighs xi_0 by kT, the full one by 9 kT; both have R_0 = 9 kT pdamp^2.
        barostat = chain_energy(batch, "npt_xi", "npt_p_xi", "npt_pchain", batch["npt_temperature"],
                                batch["npt_pdamp"], 9.0)
        if self.isotropic:
            barostat = barostat - 8.0 * kT * batch["npt_xi"][:, 0]
            cell_kinetic = batch["npt_p_eps"] ** 2 / (2.0 * w)
            volume = batch["npt_cell0"].det().abs() * torch.exp(3.0 * batch["npt_eps"])
        else:
            cell_kinetic = (batch["npt_p_cell"] ** 2).sum((1, 2)) / (2.0 * w)
            volume = self.volume(batch)
        return (batch.energies.reshape(-1) + kinetic + thermostat + barostat + cell_kinetic
                + batch["npt_pressure"] * volume)


class IsotropicMTKNPT(MTKBase):
    """Isothermal-isobaric MD with isotropic cell fluctuations, as ASE's ``IsotropicMTKNPT``.

    The cell keeps its shape: ``h = h0 exp(eps)`` with ``h0`` the cell at stage entry.
    A lone system follows ``ase.md.nose_hoover_chain.IsotropicMTKNPT`` step for step in
    float64 (``tests/test_npt.py``).

    Parameters
    ----------
    model : callable
        Must compute the stress (``computes_stress``; e.g. :class:`~batchmd.models.lj.LennardJones`).
    dt : float or torch.Tensor
        Time step, fs (ASE: ``timestep = dt * ase.units.fs``).
    temperature : float or torch.Tensor
        Target temperature, K (> 0). ASE's ``temperature_K``.
    pressure : float or torch.Tensor
        External pressure, eV/Å^3 (ASE's ``pressure_au``; ``1 GPa = ase.units.GPa`` ≈
        0.00624 eV/Å^3). Default 0.
    tdamp, pdamp : float or torch.Tensor
        Thermostat and barostat time scales, fs (> 0); ASE suggests ~100 ``dt`` and ~1000
        ``dt``. (ASE takes them in ASE time units: ``tdamp * ase.units.fs``.)
    tchain, pchain : int or torch.Tensor
        Lengths of the thermostat and barostat chains (>= 1). Default 3, as ASE.
    tloop, ploop : int or torch.Tensor
        Sub-steps of each chain's integration (>= 1). Default 1, as ASE.
    n_steps, hooks, convergence_hook
        As for every :class:`~batchmd.dynamics.base.Dynamics`.
    velocities : str
        Velocity policy at stage entry (:mod:`batchmd.dynamics.velocities`; default
        ``"auto"``: Maxwell-Boltzmann at ``temperature`` after an optimiser or for systems
        without velocities, kept otherwise).
    random_seed : int, optional
        Seed of the Maxwell-Boltzmann draws; ``None`` draws one at construction.

    Raises
    ------
    ValueError
        Bad parameters; a model that declares ``computes_stress=False``; a batch without
        stress. Systems that are not fully periodic, have a zero-volume cell or carry
        ``FixAtoms`` never enter the stage: admission
        (:mod:`batchmd.dynamics.admission`, rules :data:`BAROSTAT_REQUIREMENTS`) refuses
        them up front (``ValueError`` naming the frame or system) or, served during a run,
        writes them as failed.

    Notes
    -----
    **State** (system fields, travelling with each system through refills): the parameters
    ``npt_dt``, ``npt_temperature``, ``npt_pressure``, ``npt_tdamp``, ``npt_pdamp`` (fs, K,
    eV/Å^3), ``npt_tchain``, ``npt_pchain``, ``npt_tloop``, ``npt_ploop`` (int32); the
    thermostat chain ``npt_eta``/``npt_p_eta`` and barostat chain ``npt_xi``/``npt_p_xi``
    ([B, width], each system using its own leading columns); the cell momentum
    ``npt_p_eps`` (isotropic, eV·ASE time) or ``npt_p_cell`` ([B, 3, 3], full cell); the
    log-volume coordinate ``npt_eps`` and entry cell ``npt_cell0`` (isotropic). Entering
    the stage resets all of them, as a new ASE integrator does. ``cell`` is updated in place
    every step; the model's neighbor list sees the changed cell and rebuilds. A system's own
    ``target_temperature`` (K) / ``target_pressure`` (eV/Å^3; ``atoms.info["temperature_K"]`` /
    ``["pressure_GPa"]``) replaces ``temperature`` / ``pressure`` for it
    (:func:`~batchmd.dynamics.base.system_target`).

    The pressure includes the kinetic term (ASE's ``get_stress(include_ideal_gas=True)``);
    degrees of freedom ``N_f`` are the system's ``dof`` field (:mod:`batchmd.dynamics.constraints`):
    ``3N`` without constraints, as in ASE (same steps), ``3N - 3`` with ``FixCom``, which
    batchmd supports (the centre of mass is held after every step; ASE refuses FixCom here).
    ``FixAtoms`` is refused, as in ASE. Positions are not wrapped. Per-system tensors should have the
    batch's dtype (a float32 pressure tensor in a float64 run carries float32 rounding).

    References: Martyna, Tobias, Klein, J. Chem. Phys. 101, 4177 (1994); Martyna, Klein,
    Tuckerman, J. Chem. Phys. 97, 2635 (1992); Tuckerman et al., J. Phys. A 39, 5629 (2006).
    """

    name = "npt_iso"
    method = "npt"
    isotropic = True


class MTKNPT(MTKBase):
    """Isothermal-isobaric MD with full (9 degrees of freedom) cell fluctuations, as ASE's ``MTKNPT``.

    The cell evolves as ``h <- h exp(dt p_cell / W)``. A lone system follows
    ``ase.md.nose_hoover_chain.MTKNPT`` step for step in float64 (``tests/test_npt.py``).
    Parameters, state and errors are those of :class:`IsotropicMTKNPT`; the cell momentum
    is ``npt_p_cell`` [B, 3, 3] (eV·ASE time) and ``W = (N + 1) kT pdamp^2``.

    The model's stress is symmetrised before use (as ASE's Voigt stress is), so the cell
    does not rotate.

    Known issue (shared with ASE's ``MTKNPT``, whose steps this reproduces): the barostat
    chain targets 9 cell degrees of freedom while a symmetric ``p_cell`` has 6, and the
    measured volume fluctuations of LJ argon are 3.6-4.6x those the equation of state
    predicts (``docs/ensembles.rst``). Use :class:`IsotropicMTKNPT` for equilibrium volume
    statistics.
    """

    name = "npt"
    method = "npt"
    isotropic = False


def check_pressure(owner: str, pressure):
    """Validate an external pressure (eV/Å^3): a finite number or a finite 1-D tensor; returns it.

    Beyond :data:`batchmd.dynamics.ranges.PRESSURE_MAX_GPA` in magnitude raises ``ValueError``;
    beyond ``PRESSURE_WARN_GPA`` warns (a unit slip, see :mod:`batchmd.dynamics.ranges`).
    """
    if isinstance(pressure, torch.Tensor):
        if pressure.dim() != 1 or not bool(torch.isfinite(pressure.detach().double().cpu()).all()):
            raise ValueError(f"{owner}: pressure must be a finite number or a finite 1-D tensor (eV/Å^3)")
        check_md_ranges(owner, pressure=pressure)
        return pressure
    if isinstance(pressure, bool) or not isinstance(pressure, (int, float)) or not np.isfinite(pressure):
        raise ValueError(f"{owner}: pressure must be a finite number (eV/Å^3), got {pressure!r}")
    check_md_ranges(owner, pressure=pressure)
    return float(pressure)


def check_barostat_batch(owner: str, batch, stage_index: int, checked):
    """The batch carries a stress (once per batch structure); returns the new ``checked`` key.

    The per-system rules of a barostat (fully periodic 3-D cell, no ``FixAtoms``;
    :data:`BAROSTAT_REQUIREMENTS`) are checked when a system enters the live
    batch, by :mod:`batchmd.dynamics.admission` (every entry point: first batch, refills,
    rebuilt batches, resumes), never here.

    Raises
    ------
    ValueError
        The batch has no stress.
    """
    stress = batch.stress if batch.has_field("stress") else None
    if stress is None:
        raise ValueError(f"{owner}: the batch has no stress; the model must compute it (a barostat needs "
                         "it) and the loop must ask for it (FusedStage does for this stage)")
    return (stress,)
