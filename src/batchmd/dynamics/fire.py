"""FIRE relaxation, batched, reproducing ``ase.optimize.FIRE`` step for step.

Example
-------
>>> from batchmd.dynamics.fire import FIRE
>>> opt = FIRE(model, dt=0.1, maxstep=0.2)                      # doctest: +SKIP
>>> opt.init_state(batch, torch.ones(batch.num_graphs, dtype=torch.bool))  # doctest: +SKIP
>>> opt.pre_force(batch, 0)   # one FIRE step with batch.forces  # doctest: +SKIP

``tests/test_fire.py`` drives the protocol step by step against ASE.
"""

from __future__ import annotations

import torch

from batchmd.dynamics.base import Dynamics, set_system_param
from batchmd.kernels import cell_filter as cfk
from batchmd.kernels.fire import fire_atom_kernel_overloads, fire_system_kernel_overloads
from batchmd.runtime import CachedLaunch, LaunchCache, WarpViewCache

__all__ = ["FIRE"]

# Per-system state fields, in kernel argument order.
_STATE = ("fire_dt", "fire_alpha", "fire_nsteps")
# Per-system parameter fields: (field name, constructor argument, integer?)
_PARAMS = (
    ("fire_maxstep", "maxstep", False),
    ("fire_dtmax", "dtmax", False),
    ("fire_nmin", "Nmin", True),
    ("fire_finc", "finc", False),
    ("fire_fdec", "fdec", False),
    ("fire_astart", "astart", False),
    ("fire_fa", "fa", False),
)


class FIRE(Dynamics):
    """Batched FIRE optimiser with ASE's parameters, defaults and units.

    Each system follows ``ase.optimize.FIRE`` exactly (same first step, mixing with
    norms over the whole system, ``Nsteps`` counting, ``dt`` growth only when
    ``Nsteps > Nmin``, clipping of the whole-system step norm to ``maxstep``; masses
    are not used). In float64 a lone system reproduces ASE's positions to ~1e-12 Å.

    Parameters
    ----------
    model : callable
        ``model(batch) -> {"energy", "forces", ...}``; called by the loop, not here.
    dt : float or torch.Tensor
        Initial FIRE time step in **ASE internal time units** (as ``ase.optimize.FIRE``;
        not fs: FIRE is an optimiser and its "time" is fictitious). Default 0.1.
    maxstep : float or torch.Tensor
        Largest step norm of a whole system per iteration, Å. Default 0.2.
    dtmax : float or torch.Tensor
        Largest time step (ASE time units). Default 1.0.
    Nmin : int or torch.Tensor
        Downhill steps before ``dt`` may grow. Default 5.
    finc, fdec : float or torch.Tensor
        ``dt`` growth / reset factors. Defaults 1.1, 0.5.
    astart, fa : float or torch.Tensor
        Initial mixing parameter ``a`` (also its value after an uphill reset) and its
        decay factor. Defaults 0.1, 0.99.
    convergence_hook : object, optional
        Convergence criterion used by the loop (e.g. on ``fmax``).
    n_steps : int, optional
        Step budget of the stage.
    hooks : list, optional
        Hooks run by the loop.
    cell_filter : FrechetCellFilter or UnitCellFilter, optional
        Relax the cell too: FIRE runs over the filter's ``N + 3`` rows per system, as
        ``ase.optimize.FIRE(FrechetCellFilter(atoms))`` (see
        :mod:`batchmd.dynamics.cell_filter`); a force criterion then applies to the filter's
        rows. The model must compute the stress. The cell rows' FIRE velocity is the system
        field ``fire_cell_velocities`` [B, 3, 3].

    Notes
    -----
    Every parameter may be a float (all systems) or a 1-D tensor of length
    ``batch.num_graphs``. :meth:`init_state` copies the values of the systems it
    (re)initialises into system fields ``fire_maxstep``, ``fire_dtmax``, ``fire_nmin``
    (int32), ``fire_finc``, ``fire_fdec``, ``fire_astart``, ``fire_fa``; a tensor is
    indexed by slot at that moment. From then on the values travel with their system
    through slot operations. The state fields are ``fire_dt``, ``fire_alpha`` and
    ``fire_nsteps`` (int32, ``-1`` until the system's first step), plus the atom field
    ``fire_velocities`` (FIRE's fictitious velocities, Å per ASE time unit with mass 1,
    zeroed by :meth:`init_state`). They are optimiser state, never the physical
    ``velocities`` (which become ``momenta`` in outputs): FIRE leaves ``velocities`` as it
    found them, like ``ase.optimize.FIRE``, and an MD stage entered after FIRE applies its
    velocity policy (:mod:`batchmd.dynamics.velocities`).

    The whole FIRE step runs in :meth:`pre_force`, using ``batch.forces`` evaluated at
    the current positions by the previous model call (the loop's prime, or the
    previous step), so that after the model call positions, forces and energies of a
    system are consistent for the convergence check. :meth:`post_force` does nothing.
    Two kernel launches per step: a per-system reduction + parameter update, then a
    per-atom update.
    """

    name = "fire"
    method = "fire"
    is_optimizer = True

    def __init__(
        self,
        model,
        dt=0.1,
        maxstep=0.2,
        dtmax=1.0,
        Nmin=5,
        finc=1.1,
        fdec=0.5,
        astart=0.1,
        fa=0.99,
        convergence_hook=None,
        n_steps=None,
        hooks=None,
        cell_filter=None,
    ):
        if cell_filter is not None:
            convergence_hook = cell_filter.wrap_convergence(convergence_hook)
        super().__init__(model, n_steps=n_steps, convergence_hook=convergence_hook, hooks=hooks)
        self.cell_filter = cell_filter
        self.dt = dt
        self.maxstep = maxstep
        self.dtmax = dtmax
        self.Nmin = Nmin
        self.finc = finc
        self.fdec = fdec
        self.astart = astart
        self.fa = fa
        self._views = WarpViewCache()
        self._launch_system = CachedLaunch(fire_system_kernel_overloads)
        self._launch_atoms = CachedLaunch(fire_atom_kernel_overloads)
        self._coef = None
        self._launch_filter = LaunchCache()
        self._cell_scratch = None

    @property
    def needs_stress(self) -> bool:
        """Whether the model must compute the stress (with a cell filter)."""
        return self.cell_filter is not None

    def requirements(self):
        """With a cell filter: a fully periodic 3-D cell and the stress (FixAtoms and FixCom allowed, as in ASE)."""
        from batchmd.dynamics.admission import Requirements

        if self.cell_filter is None:
            return Requirements()
        return Requirements(needs_pbc=True, needs_stress=True, role=f"a {type(self.cell_filter).__name__}")

    def init_state(self, batch, mask: torch.Tensor) -> None:
        """Reset FIRE's state (and copy its parameters) for the systems where ``mask`` is True.

        Parameters
        ----------
        batch : batchmd.data.Batch
            Gets/updates system fields ``fire_*`` and atom field ``fire_velocities``.
        mask : torch.Tensor
            bool ``[B]`` on the batch device.
        """
        dtype = batch.positions.dtype
        set_system_param(batch, "fire_dt", self.dt, mask, dtype)
        set_system_param(batch, "fire_alpha", self.astart, mask, dtype)
        set_system_param(batch, "fire_nsteps", -1, mask, torch.int32)
        for field, attr, is_int in _PARAMS:
            set_system_param(batch, field, getattr(self, attr), mask, torch.int32 if is_int else dtype)
        atom_mask = mask[batch.batch_idx.long()].unsqueeze(-1)
        current = batch["fire_velocities"] if batch.has_field("fire_velocities") else None
        if current is None or current.shape != batch.positions.shape or current.dtype != dtype:
            velocities = torch.zeros_like(batch.positions)
        else:
            velocities = torch.where(atom_mask, torch.zeros((), dtype=dtype, device=mask.device), current)
        batch.set_field("fire_velocities", velocities.contiguous(), "atom")
        if self.cell_filter is not None:
            self.cell_filter.init_state(batch, mask)
            zero = torch.zeros(batch.num_graphs, 3, 3, dtype=dtype, device=mask.device)
            if batch.has_field("fire_cell_velocities") and batch["fire_cell_velocities"].shape == zero.shape:
                zero = torch.where(mask.view(-1, 1, 1), zero, batch["fire_cell_velocities"])
            batch.set_field("fire_cell_velocities", zero.contiguous(), "system")

    def pre_force(self, batch, stage_index: int) -> None:
        """One FIRE step for the active systems of stage ``stage_index`` (forces at current positions)."""
        view = self._views
        positions = batch.positions
        dtype, device, num = positions.dtype, positions.device, batch.num_graphs
        coef = self._coef
        if coef is None or coef.shape[0] != num or coef.dtype != dtype or coef.device != device:
            self._coef = torch.empty(num, 3, dtype=dtype, device=device)
        stage = view("stage", batch["stage"])
        status = view("status", batch["status"])
        velocities = view("fire_velocities", batch["fire_velocities"], vector=True)
        forces = view("forces", batch.forces, vector=True)
        coef = view("_coef", self._coef, vector=True)
        if self.cell_filter is not None:
            self._filter_step(batch, stage_index, stage, status, velocities, forces, coef)
            return
        inputs = [view("ptr", batch.ptr), stage, status, int(stage_index), velocities, forces]
        inputs += [view(name, batch[name]) for name in _STATE]
        inputs += [view(field, batch[field]) for field, _, _ in _PARAMS]
        inputs.append(coef)
        self._launch_system(dtype, num, inputs, device)
        n_atoms = positions.shape[0]
        positions = view("positions", positions, vector=True)
        inputs = [view("batch_idx", batch.batch_idx), stage, status, int(stage_index), coef, forces, velocities]
        self._launch_atoms(dtype, n_atoms, inputs + [positions], device)

    def _filter_step(self, batch, stage_index, stage, status, velocities, forces, coef) -> None:
        """FIRE over the cell filter's rows: filter kernel, per-system FIRE + cell move, per-atom move."""
        view = self._views
        sc = self.cell_filter.compute(batch, stage_index)["w"]
        num, dtype, device = batch.num_graphs, batch.positions.dtype, batch.device
        if self._cell_scratch is None or self._cell_scratch.shape[0] != num or self._cell_scratch.dtype != dtype \
                or self._cell_scratch.device != device:
            self._cell_scratch = torch.zeros(num, 3, 3, dtype=dtype, device=device)
        transform = view("_transform", self._cell_scratch, matrix=True)
        inputs = [view("ptr", batch.ptr), stage, status, int(stage_index), view("filter_kind", batch["filter_kind"]),
                  velocities, forces, sc["deform"], sc["cell_x"], sc["cell_f"],
                  view("fire_cell_velocities", batch["fire_cell_velocities"], matrix=True),
                  view("filter_ref_cell", batch["filter_ref_cell"], matrix=True),
                  view("filter_mask", batch["filter_mask"], matrix=True), view("filter_factor", batch["filter_factor"])]
        inputs += [view(name, batch[name]) for name in _STATE]
        inputs += [view(field, batch[field]) for field, _, _ in _PARAMS]
        inputs += [view("cell", batch.cell, matrix=True), transform, coef]
        self._launch_filter(cfk.fire_filter_system_kernel, num, inputs, device, dtype)
        inputs = [view("batch_idx", batch.batch_idx), stage, status, int(stage_index), coef, sc["deform"],
                  sc["inv_deform"], transform, forces, velocities, view("positions", batch.positions, vector=True)]
        self._launch_filter(cfk.fire_filter_atom_kernel, batch.positions.shape[0], inputs, device, dtype)

    def post_force(self, batch, stage_index: int) -> None:
        """With a cell filter: report ASE's ``fmax`` through the filter in the loop's ``fmax`` field.

        Otherwise nothing: FIRE's whole step runs in :meth:`pre_force`.
        """
        if self.cell_filter is not None and batch.has_field("fmax"):
            self.cell_filter.compute(batch, stage_index, active_only=False, report=True)
