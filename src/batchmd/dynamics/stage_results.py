"""Per-stage outcomes of every system of a :class:`~batchmd.dynamics.FusedStage` run.

Each system goes through the stages in order; for each stage the loop records, on the
device (kernels in ``batchmd.kernels.stage_results``, no host synchronisation), the step at
which the system entered it, its largest force when it left it and, for MD stages, the
running mean of its instantaneous temperature. At graduation these become plain per-system fields of
the graduated systems (and so ``atoms.info`` keys of result frames), for stage ``k``:

``stage{k}_status``
    :class:`StageStatus` code: ``converged`` (an optimizer met its criterion),
    ``completed`` (an MD stage ran its steps, or an optimizer stage without a convergence
    criterion ran its ``n_steps``: it never converged, it stopped), ``out_of_steps`` (an
    optimizer with a criterion ran out of steps before meeting it), ``failed`` (non-finite energy or forces), ``skipped`` (an earlier stage ended
    the system's run, e.g. FIRE out of steps: NVT after it is skipped).
``stage{k}_steps``
    Steps taken in stage ``k``.
``stage{k}_fmax``
    Optimizer stages: the largest atomic force (eV/Å) when the stage ended (NaN if skipped).
``stage{k}_temperature``
    MD stages: mean instantaneous kinetic temperature (K, ``2 KE / (g kB)`` with ``g`` the
    system's degrees of freedom, ``3N - 3 N_fixed - 3 [fix_com]``, as ASE's
    ``get_temperature``; see :mod:`batchmd.dynamics.constraints`) over the stage's steps
    (NaN if skipped or no step was taken).

A system's ``status`` field keeps its :class:`~batchmd.dynamics.SystemStatus` code; in
result frames (:func:`batchmd.ase.results_to_atoms`) and files it is the name of the last
stage the system entered (``"converged"``, ``"completed"``, ...); :func:`status_name`
maps codes to names.

Example
-------
>>> from batchmd.dynamics.stage_results import StageStatus, status_name
>>> status_name(StageStatus.SKIPPED), status_name(1, md=True)
('skipped', 'completed')
"""

from __future__ import annotations

from enum import IntEnum

import torch

from batchmd.dynamics.status import SystemStatus

__all__ = ["StageStatus", "StageRecorder", "status_name", "status_names", "STAGE_FIELDS"]

#: Device fields ``[B, K]`` (system level) the recorder keeps during a run.
STAGE_FIELDS = ("stage_start", "stage_exit_fmax", "stage_tsum")


class StageStatus(IntEnum):
    """Outcome of one stage for one system (codes 1-3 are those of :class:`SystemStatus`)."""

    CONVERGED = 1
    OUT_OF_STEPS = 2
    FAILED = 3
    SKIPPED = 5
    COMPLETED = 6


def status_name(code, md: bool = False) -> str:
    """The name of a status code: ``converged``, ``completed``, ``out_of_steps``, ``failed``, ``skipped``.

    ``md=True``: a CONVERGED code of a stage that ends by running its steps (MD, or an
    optimizer without a convergence criterion) is ``completed``. A name is returned unchanged.
    """
    if isinstance(code, str):
        return code
    code = int(code)
    if code == StageStatus.CONVERGED and md:
        return "completed"
    if code == SystemStatus.ACTIVE:
        return "active"
    if code == SystemStatus.PENDING:
        return "pending"
    return StageStatus(code).name.lower()


def status_names(batch) -> list[str]:
    """Each system's ``status`` as a name, in batch order (one host read).

    Example: ``status_names(FIRE(model, ...).run(batch))`` -> ``["converged", "out_of_steps"]``.
    A CONVERGED system whose last stage was MD or an optimizer without a convergence
    criterion reads ``converged`` here (the batch's ``converged`` field is False for it,
    see :meth:`StageRecorder.converged`); the per-stage fields ``stage{k}_status`` (see :class:`StageRecorder`)
    say ``completed`` for it.
    """
    return [status_name(code) for code in batch["status"].reshape(-1).tolist()]


class StageRecorder:
    """Keeps the per-stage fields of a FusedStage's live batch and expands them at graduation.

    Parameters
    ----------
    stages : list of Dynamics
        The FusedStage's stages; a stage is an optimizer when ``stage.is_optimizer``.
    """

    def __init__(self, stages) -> None:
        from batchmd.kernels import stage_results as srk
        from batchmd.runtime import CachedLaunch

        self.num_stages = len(stages)
        self._stages = list(stages)
        self.is_md = [not getattr(s, "is_optimizer", False) for s in stages]
        from batchmd.dynamics.base import stage_method

        self.names = [stage_method(s) for s in stages]  # the CLI's method names (stage{k}_method)
        self._launch_temperature = CachedLaunch(srk.accumulate_md_temperature_overloads)
        self._launch_entry = CachedLaunch(srk.record_stage_entry_overloads)
        self._tables: dict = {}

    @property
    def completes(self) -> list[bool]:
        """Per stage: whether a system that ends it normally *completed* it rather than converged.

        MD stages (they run their steps) and optimizer stages without a convergence criterion
        (``convergence_hook=None``: they stop after ``n_steps``, as ASE's ``run(steps=n)``
        without ``fmax``, which reports not converged). Read at each use: a stage's criterion
        is its ``convergence_hook`` at run time.
        """
        return [md or s.convergence_hook is None for md, s in zip(self.is_md, self._stages)]

    def converged(self, status: torch.Tensor) -> torch.Tensor:
        """Per system: whether it *converged*: ``status`` CONVERGED and every optimizer stage has a criterion.

        ``status``: int32 ``[B]`` or ``[B, 1]`` :class:`~batchmd.dynamics.SystemStatus` codes
        (a CONVERGED system ended every stage normally, so each criterion was met). False for
        pipelines without an optimizer (MD only) or with an optimizer stage without a
        convergence criterion (it ran its ``n_steps`` and stopped). Same device and shape as
        ``status``, bool. The ``converged`` field of returned and graduated batches and the
        ``converged`` key of result frames (:mod:`batchmd.ase_results`) agree with it.
        """
        optimizers = [not md for md in self.is_md]
        honest = any(optimizers) and not any(o and c for o, c in zip(optimizers, self.completes))
        return (status == int(SystemStatus.CONVERGED)) & honest

    def ensure_fields(self, batch, fresh: bool = False) -> None:
        """Create the ``[B, K]`` fields (zeros; NaN exit fmax) if missing, of another width, or ``fresh``."""
        b, k, dev = batch.num_graphs, self.num_stages, batch.device
        for name in STAGE_FIELDS:
            dtype = torch.int32 if name == "stage_start" else batch.dtype
            if not fresh and batch.has_field(name) and tuple(batch[name].shape) == (b, k) \
                    and batch[name].dtype == dtype:
                continue
            if name == "stage_exit_fmax":
                value = torch.full((b, k), float("nan"), dtype=dtype, device=dev)
            else:
                value = torch.zeros(b, k, dtype=dtype, device=dev)
            batch.set_field(name, value, "system")

    def _md_table(self, device):
        hit = self._tables.get(device)
        if hit is None:
            from batchmd.runtime import to_warp

            table = torch.tensor([int(m) for m in self.is_md], dtype=torch.int32, device=device)
            hit = (table, to_warp(table))
            self._tables[device] = hit
        return hit[1]

    def before_advance(self, batch, views, increment: bool) -> None:
        """Add this step's temperature of systems that moved in an MD stage (before the status update)."""
        if not increment or not any(self.is_md) or not batch.has_field("velocities") or batch.velocities is None:
            return
        from ase.units import kB

        from batchmd.dynamics.constraints import system_dof

        self._launch_temperature(batch.dtype, batch.num_graphs, [
            1, views("ptr", batch.ptr), views("velocities", batch.velocities, vector=True),
            views("masses", batch.atomic_masses), views("dof", system_dof(batch)), views("stage", batch["stage"]),
            views("status", batch["status"]),
            views("stage_steps", batch["stage_steps"]), self._md_table(batch.device), self.num_stages, float(kB), views("stage_tsum", batch["stage_tsum"].view(-1)),
        ], batch.device)

    def after_advance(self, batch, views, entered) -> None:
        """Record entry step and previous stage's exit fmax of systems that just changed stage."""
        if self.num_stages < 2:
            return
        self._launch_entry(batch.dtype, batch.num_graphs, [
            views("entered", entered), views("stage", batch["stage"]), views("n_steps", batch["n_steps"]),
            views("fmax", batch["fmax"]), self.num_stages, views("stage_start", batch["stage_start"].view(-1)),
            views("stage_exit_fmax", batch["stage_exit_fmax"].view(-1)),
        ], batch.device)

    def expand(self, graduated):
        """The graduated (host) batch with its ``[B, K]`` fields replaced by per-stage scalar fields.

        Adds ``stage{k}_status`` (int32 :class:`StageStatus`), ``stage{k}_steps`` (int32),
        ``stage{k}_fmax`` (optimizers) or ``stage{k}_temperature`` (MD), float64.
        """
        if not all(graduated.has_field(name) for name in STAGE_FIELDS):
            return graduated
        final = graduated["stage"].reshape(-1).long()
        status = graduated["status"].reshape(-1)
        total = graduated["n_steps"].reshape(-1)
        start = graduated["stage_start"].long()
        exit_fmax = graduated["stage_exit_fmax"].to(torch.float64)
        tsum = graduated["stage_tsum"]
        fmax_now = graduated["fmax"].reshape(-1).to(torch.float64)
        n = final.numel()
        completes = self.completes
        for k in range(self.num_stages):
            before, at = final > k, final == k
            code = torch.full((n,), int(StageStatus.SKIPPED), dtype=torch.int32)
            code[before] = int(StageStatus.CONVERGED)
            code[at] = status[at].to(torch.int32)
            if completes[k]:  # MD, or an optimizer without a criterion: it ran its steps
                code[code == int(StageStatus.CONVERGED)] = int(StageStatus.COMPLETED)
            end = start[:, k + 1] if k + 1 < self.num_stages else total.long()
            steps = torch.where(before, end - start[:, k], torch.zeros_like(end))
            steps = torch.where(at, total.long() - start[:, k], steps).to(torch.int32)
            graduated.set_field(f"stage{k}_status", code, "system")
            graduated.set_field(f"stage{k}_steps", steps, "system")
            if self.is_md[k]:
                mean = tsum[:, k].to(torch.float64)
                mean = torch.where((before | at) & (steps > 0), mean, torch.full_like(mean, float("nan")))
                graduated.set_field(f"stage{k}_temperature", mean, "system")
            else:
                value = torch.where(before, exit_fmax[:, k], torch.full_like(fmax_now, float("nan")))
                value = torch.where(at, fmax_now, value)
                graduated.set_field(f"stage{k}_fmax", value, "system")
        return graduated.without_fields(names=STAGE_FIELDS)
