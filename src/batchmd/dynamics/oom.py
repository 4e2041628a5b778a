"""Recovery from out-of-memory errors in :class:`~batchmd.dynamics.fused.FusedStage` (a mixin).

When the model's evaluation raises ``torch.OutOfMemoryError`` (CUDA's allocator; on CPU
a model may raise it too), the loop does not crash and loses nothing:

1. The failing size is remembered (:func:`batchmd.dynamics.budget.record_oom`, so later
   :func:`~batchmd.dynamics.budget.choose_budget` calls start lower) and a target of
   ``oom_shrink`` (0.7) times the failing atom count is set.
2. **Inflight runs: the live batch shrinks.** Systems that have not moved yet -- those
   that entered at the last refill point (still ``PENDING``) or, at the very first
   evaluation, the initial batch -- leave the batch, newest first, until it fits the
   target. They go back to the sampler's queue at their place in serving order
   (:meth:`~batchmd.dynamics.SizeAwareSampler.give_back`), as the very same samples
   with the same ``system_id``, and are served again when capacity frees up. The
   sampler's budgets shrink by the same factor (never below the largest sample still
   queued), so refills do not grow the batch back to the failing size.
3. **Whatever remains too large is evaluated in chunks**: consecutive systems, at most
   the target's atoms per model call (one system per call at worst), outputs
   concatenated. This is how a static batch, or a live batch whose systems have all
   moved, gets through the step. Once refills have shrunk the batch below the target,
   evaluations are single calls again.
4. The affected evaluation is retried. Systems that moved in this step keep their
   positions (the evaluation is what failed, not the move), so the step completes
   exactly as it would have: every system's trajectory is the same as without the
   error (a system's forces do not depend on which other systems share its batch).

If a single system does not fit, or the model writes into preallocated outputs
(``supports_out``, e.g. Lennard-Jones, which cannot be called on chunks), the error is
re-raised with the sizes involved. ``FusedStage(oom_retry=False)`` turns recovery off.

Example
-------
See ``tests/test_budget.py`` (a model that raises ``torch.OutOfMemoryError`` above N atoms)
and ``docs/budgets.rst``.
"""

from __future__ import annotations

import logging

import torch

from batchmd.dynamics.status import SystemStatus

__all__ = ["OOMRecovery", "chunked_call"]

log = logging.getLogger(__name__)


def _chunks(ptr: list[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive system ranges [lo, hi) of at most ``limit`` atoms (one system at least)."""
    out, lo = [], 0
    b = len(ptr) - 1
    while lo < b:
        hi = lo + 1
        while hi < b and ptr[hi + 1] - ptr[lo] <= limit:
            hi += 1
        out.append((lo, hi))
        lo = hi
    return out


def chunked_call(model, batch, limit: int) -> dict[str, torch.Tensor]:
    """Evaluate ``model`` on consecutive systems of ``batch``, at most ``limit`` atoms per call.

    Returns the outputs of one call on the whole batch (energy [B, 1], forces [N, 3],
    stress [B, 3, 3] when present), concatenated in system order.
    """
    ptr = batch.ptr.tolist()
    pieces = []
    for lo, hi in _chunks(ptr, int(limit)):
        if lo == 0 and hi == batch.num_graphs:
            return model(batch)
        sub = batch.index_select(torch.arange(lo, hi, device=batch.device))
        out = model(sub)
        pieces.append({k: v.detach() for k, v in out.items() if isinstance(v, torch.Tensor)})
    merged = {}
    for name in pieces[0]:
        parts = [p[name] for p in pieces]
        if name == "energy":
            parts = [p.reshape(-1, 1) for p in parts]
        merged[name] = torch.cat(parts, dim=0)
    return merged


class OOMRecovery:
    """Out-of-memory recovery for :class:`~batchmd.dynamics.fused.FusedStage` (see the module docstring).

    Uses the loop's ``model``, ``sampler``, ``stats``, ``_evaluate`` and the newcomers
    recorded at refill points (``_newcomers``: system_id -> sample).
    """

    oom_retry: bool = True
    oom_shrink: float = 0.7
    _eval_max_atoms: int | None = None

    def _call_model(self, batch):
        """One evaluation of a model that returns its outputs; in chunks after an OOM (see above)."""
        limit = self._eval_max_atoms
        if limit is None or batch.num_nodes <= limit:
            return self.model(batch)
        return chunked_call(self.model, batch, limit)

    def _evaluate_safely(self, batch, first: bool = False):
        """``_evaluate(batch)``, recovering from out-of-memory errors; returns the (possibly smaller) batch.

        ``first``: the batch's first evaluation (priming), when no system has moved yet.
        """
        while True:
            try:
                self._evaluate(batch)
                return batch
            except torch.OutOfMemoryError as err:
                if not self.oom_retry:
                    raise
                batch = self._shrink_after_oom(batch, first, err)

    def _unmoved(self, batch, first: bool) -> list[int]:
        """Slots of systems that may go back to the sampler: served at the last refill, not moved yet."""
        newcomers = getattr(self, "_newcomers", None)
        if self.sampler is None or not newcomers or not batch.has_field("system_id"):
            return []
        sids = batch["system_id"].reshape(-1).tolist()
        status = batch["status"].tolist() if batch.has_field("status") else [int(SystemStatus.PENDING)] * len(sids)
        return [s for s, (sid, st) in enumerate(zip(sids, status))
                if sid in newcomers and (first or st == int(SystemStatus.PENDING))]

    def _shrink_after_oom(self, batch, first: bool, err: BaseException):
        from batchmd.dynamics.budget import record_oom

        if batch.device.type == "cuda":
            torch.cuda.empty_cache()
        if getattr(self, "_layout", None) is not None:  # a padded batch: continue compact, without padding
            batch = self._unpad(batch)
        sizes = (batch.ptr[1:] - batch.ptr[:-1]).tolist()
        largest = max(sizes)
        failing = batch.num_nodes if self._eval_max_atoms is None else min(batch.num_nodes, self._eval_max_atoms)
        if failing <= largest:
            raise RuntimeError(
                f"FusedStage: out of memory evaluating a single system of {largest} atoms on {batch.device}; "
                "it cannot be run on this device with this model") from err
        target = max(int(failing * self.oom_shrink), largest)
        self.stats.oom_events += 1
        try:
            record_oom(self.model, batch.dtype, batch.device, failing)
        except Exception:  # the cache is a convenience; never let it mask the recovery
            log.debug("could not record the out-of-memory size", exc_info=True)
        evicted = []
        atoms = batch.num_nodes
        for slot in reversed(self._unmoved(batch, first)):
            if atoms <= target:
                break
            evicted.append(slot)
            atoms -= sizes[slot]
        if evicted:
            sids = batch["system_id"].reshape(-1).tolist()
            samples = [self._newcomers.pop(sids[s]) for s in evicted]
            self.sampler.give_back(samples)
            keep = torch.ones(batch.num_graphs, dtype=torch.bool)
            keep[evicted] = False
            batch = batch.index_select(keep.to(batch.device))
            self.stats.systems_returned += len(samples)
        if self.sampler is not None:
            self._shrink_sampler(target)
        if batch.num_nodes > target:
            if getattr(self.model, "supports_out", False):
                raise RuntimeError(
                    f"FusedStage: out of memory evaluating {failing} atoms; this model writes into preallocated "
                    f"outputs and cannot be evaluated in chunks: run with max_atoms <= {target}") from err
            self._eval_max_atoms = target
        log.warning("FusedStage: out of memory at %d atoms on %s; %d unmoved system(s) returned to the sampler, "
                    "evaluations now at most %d atoms per call", failing, batch.device, len(evicted), target)
        return batch

    def _shrink_sampler(self, target: int) -> None:
        sampler = self.sampler
        old = sampler.max_atoms
        floor_atoms, floor_edges = sampler.largest_remaining()
        sampler.max_atoms = max(min(old, target), floor_atoms, 1)
        if sampler.max_edges is not None:
            sampler.max_edges = max(int(sampler.max_edges * sampler.max_atoms / old), floor_edges)
        self.stats.max_atoms = sampler.max_atoms
