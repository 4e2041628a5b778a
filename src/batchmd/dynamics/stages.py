"""The stage list of a :class:`~batchmd.dynamics.FusedStage` and the no-progress warning.

Example
-------
>>> from batchmd.dynamics.stages import NoProgressWarning
>>> issubclass(NoProgressWarning, UserWarning)
True
"""

from __future__ import annotations

import warnings

import torch

from batchmd.runtime import to_warp

__all__ = ["NoProgressWarning", "normalise_stages", "stage_tables", "warn_if_idle"]


class NoProgressWarning(UserWarning):
    """A run advanced no system (all converged at their first evaluation, failed, or had no budget)."""


def normalise_stages(sub_stages) -> list:
    """The stages of ``sub_stages`` (Dynamics, or ``(index, Dynamics)`` pairs numbered 0, 1, ...) as a list.

    Raises
    ------
    ValueError
        Indices out of order, a malformed pair, or no stage.
    TypeError
        An entry that is not a dynamics stage.
    """
    stages = []
    for position, item in enumerate(sub_stages):
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(f"FusedStage: sub_stages entries are (index, stage) pairs, got {item!r}")
            index, stage = item
            if index != position:
                raise ValueError(
                    f"FusedStage: stage indices must be 0, 1, 2, ... in order; entry {position} has index {index}"
                )
        else:
            stage = item
        if not all(hasattr(stage, name) for name in ("init_state", "pre_force", "post_force", "model")):
            raise TypeError(f"FusedStage: {stage!r} is not a dynamics stage (FIRE, NVE, NVTLangevin, ...)")
        stages.append(stage)
    if not stages:
        raise ValueError("FusedStage: at least one stage is required")
    return stages


def warn_if_idle(stats, n_steps) -> None:
    """Warn (:class:`NoProgressWarning`) when a run advanced no system: never a silent no-op.

    ``stats`` is the run's :class:`~batchmd.dynamics.RunStats`; an explicit ``n_steps=0`` is
    not warned about.
    """
    if stats.atom_steps or n_steps == 0 or not (stats.systems_graduated or stats.steps):
        return
    warnings.warn(
        f"FusedStage.run: no system took a step: {stats.systems_graduated} systems graduated at their first "
        f"evaluation ({stats.systems_converged} already met their stage's criterion, {stats.systems_failed} "
        f"failed, {stats.systems_out_of_steps} had no step budget left)",
        NoProgressWarning,
        stacklevel=4,
    )


def stage_tables(stages, device) -> dict:
    """Per-stage device tables of a FusedStage: step budgets, convergence criteria, fmax thresholds.

    ``budget`` (int32, -1: none), ``criterion`` (int32, 1 if the stage has a convergence
    hook), ``fmax`` (float64 eV/Å, -1: not an fmax criterion folded into the force
    statistics), ``md`` (bool, stages with a velocity policy), their Warp views, and the
    ``custom`` hooks evaluated on the host side as ``(stage index, hook)``.
    """
    budget = [-1 if s.n_steps is None else s.n_steps for s in stages]
    crit = [0 if s.convergence_hook is None else 1 for s in stages]
    fmax = []
    custom = []
    for k, stage in enumerate(stages):
        hook = stage.convergence_hook
        if hook is not None and getattr(hook, "field", None) == "fmax" and getattr(hook, "predicate", 1) is None:
            fmax.append(float(hook.threshold))  # folded into the force-statistics kernel
        else:
            fmax.append(-1.0)
            if hook is not None:
                custom.append((k, hook))
    budget_t = torch.tensor(budget, dtype=torch.int32, device=device)
    crit_t = torch.tensor(crit, dtype=torch.int32, device=device)
    fmax_t = torch.tensor(fmax, dtype=torch.float64, device=device)
    return {
        "md": torch.tensor([s.velocity_policy is not None for s in stages], dtype=torch.bool,
                           device=device),
        "device": device,
        "custom": custom,
        "tensors": (budget_t, crit_t, fmax_t),
        "w_budget": to_warp(budget_t),
        "w_criterion": to_warp(crit_t),
        "w_fmax": to_warp(fmax_t),
    }
