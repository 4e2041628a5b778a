"""The base class every dynamics method (FIRE, NVE, NVTLangevin) derives from.

A method is a *stage*: it owns its per-system state (kept in batch fields so that it
follows each system through refills) and two Warp-kernel halves of a step, one before
and one after the single model evaluation of the step. The loop that drives stages,
checks convergence and graduates systems is :class:`~batchmd.dynamics.fused.FusedStage`;
a lone method's :meth:`Dynamics.run` is a one-stage FusedStage.

Example
-------
>>> from batchmd.dynamics import FIRE, NVTLangevin, ConvergenceHook
>>> # relax = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05))
>>> # relaxed = relax.run(batch, n_steps=500)
>>> # pipeline = relax + NVTLangevin(model, dt=2.0, temperature=300.0, friction=0.01, n_steps=100)

See ``examples/plot_relaxation.py`` and ``examples/inflight_batching.py``.
"""

from __future__ import annotations

import torch

__all__ = ["Dynamics", "check_parameter", "set_system_param", "stage_method", "system_target"]


class Dynamics:
    """A dynamics method usable alone or as a stage of a :class:`FusedStage`.

    Parameters
    ----------
    model : callable
        ``model(batch) -> {"energy": [B,1] eV, "forces": [N,3] eV/Å, ...}``.
    n_steps : int, optional
        Per-system step budget in this stage. For a stage with a convergence criterion,
        running out of steps graduates the system as OUT_OF_STEPS; for a stage without
        one (MD), it is the normal end of the stage.
    convergence_hook : ConvergenceHook, optional
        Per-system criterion ending the stage (converged systems stop moving).
    hooks : list of Hook, optional
        Hooks of this stage (see :mod:`batchmd.dynamics.hooks`).

    Notes
    -----
    Subclasses implement :meth:`init_state`, :meth:`pre_force` and :meth:`post_force`.
    """

    # Short name used in messages and in the prefix of state fields.
    name = "dynamics"
    #: The method's name as ``batchmd`` CLI stages and pipeline files spell it (``fire``, ``nvt``,
    #: ...): ``stage{k}_method`` of result frames and the keys of ``RunStats.stage_counts``.
    method = None
    #: True for optimisers (FIRE, LBFGS, cell filters): their velocities are fictitious state,
    #: kept in their own fields, and an MD stage entered after one applies its velocity policy.
    is_optimizer = False
    #: MD stages: how velocities are set at stage entry ("auto", "maxwell_boltzmann", "zero",
    #: "keep"; see :mod:`batchmd.dynamics.velocities`). None: the stage does not use velocities.
    velocity_policy = None
    #: Seed of the stage's random streams (Maxwell-Boltzmann draws, thermostat noise).
    random_seed = 0

    def velocity_temperature(self, batch):
        """Per-system temperature (K, ``[B]`` tensor) of Maxwell-Boltzmann draws, or None (start from rest).

        Called after :meth:`init_state`, so it may read the stage's own parameter fields.
        """
        return None

    #: Whether the stage reads the per-system ``stress`` (barostats, cell filters); the loop
    #: then asks the model for it at every evaluation.
    needs_stress = False

    def requirements(self):
        """What a system needs to enter this stage (:class:`~batchmd.dynamics.admission.Requirements`).

        Checked on the host by :mod:`batchmd.dynamics.admission` when a system enters a live
        batch (at every entry point), for every stage it will meet. The default asks for
        nothing but the stress when the stage declares ``needs_stress``.
        """
        from batchmd.dynamics.admission import Requirements

        return Requirements(needs_stress=bool(self.needs_stress))

    def __init__(self, model, n_steps: int | None = None, convergence_hook=None, hooks=None) -> None:
        if n_steps is not None:
            if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 0:
                raise ValueError(f"{type(self).__name__}: n_steps must be a non-negative integer or None, got {n_steps!r}")
            n_steps = int(n_steps)
        if model is None:
            raise ValueError(f"{type(self).__name__}: a model is required")
        self.model = model
        self.n_steps = n_steps
        self.convergence_hook = convergence_hook
        self.hooks = list(hooks) if hooks is not None else []
        self._solo = None

    # ----------------------------------------------------------------- stage protocol
    def init_state(self, batch, mask: torch.Tensor) -> None:
        """Create (if missing) and reset this method's state for systems where ``mask`` [B] is True."""

    def pre_force(self, batch, stage_index: int) -> None:
        """First half of a step for systems in stage ``stage_index`` (before the model call)."""

    def post_force(self, batch, stage_index: int) -> None:
        """Second half of a step for systems in stage ``stage_index`` (after the model call)."""

    # ----------------------------------------------------------------- running alone
    def _solo_loop(self):
        if self._solo is None:
            from batchmd.dynamics.fused import FusedStage

            self._solo = FusedStage(sub_stages=[(0, self)])
        return self._solo

    def run(self, batch, n_steps: int | None = None, check_frequency: int = 10, resume: bool = False):
        """Advance every system of ``batch`` until all have graduated or ``n_steps`` is spent.

        Forces are computed before the first step. Per-system step counters, ``status``
        and ``converged`` are left in the batch, which is returned. Every system starts
        this method afresh (a returned batch runs again), unless ``resume=True``
        continues it where an earlier ``run(n_steps=...)`` of this method stopped
        (see :meth:`FusedStage.run <batchmd.dynamics.FusedStage.run>`).

        Parameters
        ----------
        batch : Batch
            The systems to advance (modified in place where possible; use the return value).
        n_steps : int, optional
            Loop iterations at most (default: until every system graduates; a method with
            neither a convergence criterion nor ``n_steps`` needs this).
        check_frequency : int
            Steps between host checks for "all graduated" (the only host synchronisation).
        """
        loop = self._solo_loop()
        loop.refill_frequency = int(check_frequency)
        return loop.run(batch, n_steps=n_steps, resume=resume)

    def step(self, batch):
        """Advance ``batch`` by one step (priming forces and state on first use); returns the batch."""
        return self._solo_loop().step(batch)

    def __add__(self, other):
        from batchmd.dynamics.fused import FusedStage

        return FusedStage(sub_stages=[(0, self)]) + other

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_steps={self.n_steps}, convergence_hook={self.convergence_hook!r})"


def check_parameter(owner: str, name: str, value, allow_zero: bool = False):
    """Validate a stage's float parameter at construction: a finite number or a 1-D real tensor.

    Numpy scalars become floats. Raises ``ValueError`` in one line naming the stage and the
    parameter (e.g. ``NVTLangevin: temperature must be a finite number >= 0, got '300'``) for a
    string, a bool, a non-finite value, a value <= 0 (< 0 with ``allow_zero``) or a tensor that
    is not 1-D (see :func:`batchmd.dynamics.nose_hoover.check_positive`).
    """
    from batchmd.dynamics.nose_hoover import check_positive

    if hasattr(value, "dtype") and not isinstance(value, torch.Tensor) and getattr(value, "shape", None) == ():
        value = value.item()  # numpy scalars
    return check_positive(owner, name, value, allow_zero=allow_zero)


def set_system_param(batch, name, value, mask, dtype):
    """Write a per-system parameter field for the systems selected by ``mask``.

    Parameters
    ----------
    batch : batchmd.data.Batch
        Receives system field ``name`` (``[B]``).
    name : str
        Field name, e.g. ``"fire_dtmax"``.
    value : float, int or torch.Tensor
        Scalar (every selected system) or 1-D tensor of length ``batch.num_graphs``
        (indexed by slot: system ``s`` gets ``value[s]``).
    mask : torch.Tensor
        bool ``[B]`` on the batch device; other systems keep their value. If the field
        does not exist yet, every system gets ``value``.
    dtype : torch.dtype
        Storage dtype of the field.

    Device-side only (``torch.where``); no host synchronisation.
    """
    num = batch.num_graphs
    if isinstance(value, torch.Tensor):
        new = value.to(device=mask.device, dtype=dtype)
        if new.dim() != 1 or new.shape[0] != num:
            raise ValueError(f"batchmd: per-system parameter {name!r} needs shape [{num}], got {tuple(new.shape)}")
    else:
        new = torch.full((num,), value, dtype=dtype, device=mask.device)
    if batch.has_field(name) and batch[name].shape == (num,):
        new = torch.where(mask, new, batch[name].to(dtype))
    batch.set_field(name, new.contiguous(), "system")


def system_target(batch, field, value, dtype):
    """The stage's ``value`` replaced, system by system, by the batch's per-sample ``field``.

    Parameters
    ----------
    batch : batchmd.data.Batch
        May carry the system field ``field`` (``target_temperature`` K, ``target_pressure``
        eV/Å^3; NaN for systems that do not bring one, see :mod:`batchmd.data.fields`).
    field : str
        Name of the per-sample field.
    value : float, torch.Tensor [B] or None
        The stage's own parameter (a tensor is indexed by slot, as in :func:`set_system_param`).
        None: zero where the system has no target of its own.
    dtype : torch.dtype
        Floating dtype of the result.

    Returns
    -------
    float or torch.Tensor
        ``value`` unchanged when the batch has no such field; else a ``[B]`` tensor: the
        system's own target where it is finite, ``value`` elsewhere. Device-side only.
    """
    if not batch.has_field(field):
        return value
    own = batch[field].reshape(-1).to(dtype)
    if isinstance(value, torch.Tensor):
        stage = value.to(device=own.device, dtype=dtype).reshape(-1)
    else:
        stage = torch.full_like(own, 0.0 if value is None else float(value))
    return torch.where(torch.isfinite(own), own, stage)


def stage_method(stage) -> str:
    """The name of a stage's method, as ``batchmd`` CLI stages and pipeline files spell it.

    ``fire``, ``lbfgs``, ``nvt`` (Langevin), ``nvt-nose-hoover``, ``npt`` (MTK, isotropic or
    full cell), ``npt-crescale``, ``nve``: the ``stage{k}_method`` info key of result frames
    (:func:`batchmd.ase.results_to_atoms`) and the keys of ``RunStats.stage_counts``
    (``"0:fire"``). A stage class without a ``method`` gives its lower-case class name.
    """
    return getattr(stage, "method", None) or type(stage).__name__.lower()
