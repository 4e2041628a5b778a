"""LBFGS relaxation, batched, reproducing ``ase.optimize.LBFGS`` step for step.

Example
-------
>>> from batchmd.dynamics import LBFGS, ConvergenceHook, FrechetCellFilter
>>> relax = LBFGS(model, convergence_hook=ConvergenceHook.from_forces(0.01))          # doctest: +SKIP
>>> relaxed = relax.run(batch, n_steps=500)                                            # doctest: +SKIP
>>> cell_relax = LBFGS(model, cell_filter=FrechetCellFilter(scalar_pressure=0.005),
...                    convergence_hook=ConvergenceHook.from_forces(0.01))            # doctest: +SKIP

``tests/test_lbfgs.py`` drives it step by step against ASE, with and without cell filters.
"""

from __future__ import annotations

import torch

from batchmd.dynamics.base import Dynamics, set_system_param
from batchmd.kernels.lbfgs import lbfgs_system_kernel
from batchmd.runtime import LaunchCache, WarpViewCache

__all__ = ["LBFGS"]


def _check_scalar(name, value, low, high=None):
    if isinstance(value, torch.Tensor):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value:
        raise ValueError(f"batchmd: LBFGS {name} must be a number, got {value!r}")
    if value <= low or (high is not None and value > high):
        raise ValueError(f"batchmd: LBFGS {name} must be in ({low}, {high if high is not None else 'inf'}], got {value!r}")


class LBFGS(Dynamics):
    """Batched limited-memory BFGS with ASE's parameters, defaults and units.

    Each system follows ``ase.optimize.LBFGS`` (no line search) exactly: the first step is
    ``f / alpha``; later steps come from the two-loop recursion over the last ``memory``
    pairs ``(s, y)`` with the initial inverse Hessian ``I / alpha``; the whole step is scaled
    so that its longest row (one atom, or one cell row with a filter) is at most ``maxstep``,
    then multiplied by ``damping``. In float64 a lone system reproduces ASE's positions to
    ~1e-12 Å. Curvature is not checked (as in ASE): ``rho = 1 / (y·s)`` is used as is.

    Parameters
    ----------
    model : callable
        ``model(batch) -> {"energy", "forces"[, "stress"]}``; called by the loop, not here.
    maxstep : float or torch.Tensor
        Longest row of a step, Å. Default 0.2. Values above 1 Å raise ``ValueError`` (as ASE).
    memory : int or torch.Tensor
        Number of stored ``(s, y)`` pairs. Default 100 (ASE's). The history costs
        ``2 * memory * 3`` floats per atom (4.8 kB/atom in float64 at 100).
    damping : float or torch.Tensor
        Factor on every step. Default 1.0.
    alpha : float or torch.Tensor
        Initial Hessian guess, eV/Å^2 (the initial inverse Hessian is ``I / alpha``). Default 70.
    convergence_hook : ConvergenceHook, optional
        E.g. ``ConvergenceHook.from_forces(0.05)``; with a cell filter it applies to the
        filter's rows, as ASE's ``fmax`` through a filter.
    n_steps : int, optional
        Step budget of the stage.
    hooks : list, optional
        Hooks run by the loop.
    cell_filter : FrechetCellFilter or UnitCellFilter, optional
        Relax the cell too (:mod:`batchmd.dynamics.cell_filter`); the model must compute the stress.

    Notes
    -----
    Parameters may be floats (all systems) or ``[B]`` tensors (indexed by slot when a system
    enters the stage); they are copied into system fields ``lbfgs_maxstep``,
    ``lbfgs_memory`` (int32), ``lbfgs_damping``, ``lbfgs_alpha`` and travel with their system.
    State: ``lbfgs_iteration`` [B] int32 and, as ``_``-prefixed fields (internal state: they
    travel with their system through refills but are left out of results), ``_lbfgs_x0`` /
    ``_lbfgs_f0`` [N, 3], the history ``_lbfgs_s`` / ``_lbfgs_y`` [N, M, 3] and ``_lbfgs_rho``
    [B, M] (``M`` the largest memory), and with a filter ``_lbfgs_cell_x0`` / ``_lbfgs_cell_f0``
    [B, 3, 3], ``_lbfgs_cell_s`` / ``_lbfgs_cell_y`` [B, M, 3, 3]. One kernel launch per step
    (plus the filter's): one thread per system runs the whole recursion over its atoms in order (deterministic and batch invariant; a very
    large single system is better served by ASE-like per-system parallel reductions).
    """

    name = "lbfgs"
    method = "lbfgs"
    is_optimizer = True

    def __init__(self, model, maxstep=0.2, memory=100, damping=1.0, alpha=70.0, convergence_hook=None,
                 n_steps=None, hooks=None, cell_filter=None):
        _check_scalar("maxstep", maxstep, 0.0, 1.0)
        _check_scalar("damping", damping, 0.0)
        _check_scalar("alpha", alpha, 0.0)
        if isinstance(memory, torch.Tensor):
            if memory.numel() == 0 or int(memory.min()) < 1:
                raise ValueError("batchmd: LBFGS memory must be >= 1")
            self._memory_max = int(memory.max())
        else:
            if isinstance(memory, bool) or int(memory) != memory or memory < 1:
                raise ValueError(f"batchmd: LBFGS memory must be an integer >= 1, got {memory!r}")
            self._memory_max = int(memory)
        if cell_filter is not None:
            convergence_hook = cell_filter.wrap_convergence(convergence_hook)
        super().__init__(model, n_steps=n_steps, convergence_hook=convergence_hook, hooks=hooks)
        self.maxstep = maxstep
        self.memory = memory
        self.damping = damping
        self.alpha = alpha
        self.cell_filter = cell_filter
        self._views = WarpViewCache()
        self._launch = LaunchCache()
        self._scratch = None

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

    def _history_field(self, batch, name, shape, level, mask_rows, value=0.0, dtype=None):
        """Create (or resize) a state field; zero (``value``) the rows selected by ``mask_rows``."""
        dtype = dtype or batch.positions.dtype
        dev = batch.device
        if batch.has_field(name) and tuple(batch[name].shape) == shape and batch[name].dtype == dtype:
            current = batch[name]
            fill = torch.full((), value, dtype=dtype, device=dev)
            view = mask_rows.view(-1, *([1] * (len(shape) - 1)))
            new = torch.where(view, fill, current)
        else:
            new = torch.full(shape, value, dtype=dtype, device=dev)
        batch.set_field(name, new.contiguous(), level)

    def init_state(self, batch, mask: torch.Tensor) -> None:
        """Reset LBFGS's history (and copy its parameters) for the systems where ``mask`` [B] is True."""
        dtype = batch.positions.dtype
        n, b, m = batch.num_nodes, batch.num_graphs, self._memory_max
        set_system_param(batch, "lbfgs_maxstep", self.maxstep, mask, dtype)
        set_system_param(batch, "lbfgs_damping", self.damping, mask, dtype)
        set_system_param(batch, "lbfgs_alpha", self.alpha, mask, dtype)
        set_system_param(batch, "lbfgs_memory", self.memory, mask, torch.int32)
        set_system_param(batch, "lbfgs_iteration", 0, mask, torch.int32)
        atoms = mask[batch.batch_idx.long()]
        for name in ("_lbfgs_x0", "_lbfgs_f0"):
            self._history_field(batch, name, (n, 3), "atom", atoms)
        for name in ("_lbfgs_s", "_lbfgs_y"):
            self._history_field(batch, name, (n, m, 3), "atom", atoms)
        self._history_field(batch, "_lbfgs_rho", (b, m), "system", mask)
        if self.cell_filter is not None:
            self.cell_filter.init_state(batch, mask)
            for name in ("_lbfgs_cell_x0", "_lbfgs_cell_f0"):
                self._history_field(batch, name, (b, 3, 3), "system", mask)
            for name in ("_lbfgs_cell_s", "_lbfgs_cell_y"):
                self._history_field(batch, name, (b, m, 3, 3), "system", mask)

    def _buffers(self, batch) -> dict:
        n, b, m, dtype, dev = batch.num_nodes, batch.num_graphs, self._memory_max, batch.positions.dtype, batch.device
        key = (n, b, dtype, dev)
        sc = self._scratch
        if sc is None or sc["key"] != key:
            sc = {"key": key, "direction": torch.zeros(n, 3, dtype=dtype, device=dev),
                  "a": torch.zeros(b, m, dtype=dtype, device=dev)}
            if self.cell_filter is None:  # placeholders for the unused cell arguments
                sc["mat"] = torch.zeros(b, 3, 3, dtype=dtype, device=dev)
                sc["mat_hist"] = torch.zeros(b, m, 3, 3, dtype=dtype, device=dev)
                sc["kind"] = torch.zeros(b, dtype=torch.int32, device=dev)
                sc["factor"] = torch.ones(b, dtype=dtype, device=dev)
            self._scratch = sc
        return sc

    def pre_force(self, batch, stage_index: int) -> None:
        """One LBFGS step for the active systems of stage ``stage_index`` (forces at current positions)."""
        v = self._views
        sc = self._buffers(batch)
        if self.cell_filter is not None:
            w = self.cell_filter.compute(batch, stage_index)["w"]
            cell = [1, v("filter_kind", batch["filter_kind"]), w["deform"], w["inv_deform"], w["cell_x"], w["cell_f"],
                    v("filter_ref_cell", batch["filter_ref_cell"], matrix=True),
                    v("filter_mask", batch["filter_mask"], matrix=True), v("filter_factor", batch["filter_factor"])]
            cell_state = [v(name, batch["_lbfgs_" + name], matrix=True)
                          for name in ("cell_x0", "cell_f0", "cell_s", "cell_y")]
        else:
            mat = v("_mat", sc["mat"], matrix=True)
            cell = [0, v("_kind", sc["kind"]), mat, mat, mat, mat, mat, mat, v("_factor", sc["factor"])]
            hist = v("_mat_hist", sc["mat_hist"], matrix=True)
            cell_state = [mat, mat, hist, hist]
        inputs = [v("ptr", batch.ptr), v("stage", batch["stage"]), v("status", batch["status"]), int(stage_index)]
        inputs += cell
        inputs += [v("cell", batch.cell, matrix=True), v("positions", batch.positions, vector=True),
                   v("forces", batch.forces, vector=True), v("x0", batch["_lbfgs_x0"], vector=True),
                   v("f0", batch["_lbfgs_f0"], vector=True), v("s", batch["_lbfgs_s"], vector=True),
                   v("y", batch["_lbfgs_y"], vector=True)]
        inputs += cell_state
        inputs += [v("rho", batch["_lbfgs_rho"]), v("_a", sc["a"])]
        inputs += [v(name, batch["lbfgs_" + name]) for name in ("iteration", "memory", "maxstep", "damping", "alpha")]
        inputs.append(v("_direction", sc["direction"], vector=True))
        self._launch(lbfgs_system_kernel, batch.num_graphs, inputs, batch.device, batch.positions.dtype)

    def post_force(self, batch, stage_index: int) -> None:
        """With a cell filter: report ASE's ``fmax`` through the filter in the loop's ``fmax`` field.

        Otherwise nothing: LBFGS's whole step runs in :meth:`pre_force`.
        """
        if self.cell_filter is not None and batch.has_field("fmax"):
            self.cell_filter.compute(batch, stage_index, active_only=False, report=True)
