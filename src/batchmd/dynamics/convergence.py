"""Per-system convergence criteria.

A :class:`ConvergenceHook` maps a live :class:`~batchmd.data.Batch` to a bool tensor
``[num_graphs]`` on the batch's device: True where the system has converged. It never
synchronises with the host.

Example
-------
>>> from batchmd.dynamics import ConvergenceHook
>>> hook = ConvergenceHook.from_forces(threshold=0.05)   # max |F_i| <= 0.05 eV/Å
>>> hook.threshold
0.05

See ``examples/plot_relaxation.py`` for a full relaxation.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["ConvergenceHook"]

_REDUCTIONS = ("max", "min", "mean", "sum")


class ConvergenceHook:
    """A per-system convergence criterion on any batch field.

    Parameters
    ----------
    field : str
        Name of the batch field the criterion reads (e.g. ``"fmax"``, ``"energies"``).
        The special field ``"fmax"`` is the maximum per-atom force norm in eV/Å,
        maintained by the dynamics loop after every force evaluation.
    threshold : float
        The system converges when the reduced value is ``<= threshold`` (same units as
        the field).
    reduce : {"max", "min", "mean", "sum"}
        How an atom-level field is reduced to one value per system (after taking the
        row norm of vector fields when ``norm=True``). Ignored for system-level fields.
    norm : bool
        Take the Euclidean norm over the last dimension first (for vector fields).
    predicate : callable, optional
        Fully custom criterion ``predicate(batch) -> bool tensor [num_graphs]``; when given,
        ``field`` and ``threshold`` are only used for display.

    Notes
    -----
    ``from_forces(threshold)`` is ``max_i |F_i| <= threshold``. ASE's optimizers test
    ``< fmax``; the two differ only for a force norm exactly equal to the threshold.
    """

    def __init__(
        self,
        field: str,
        threshold: float,
        reduce: str = "max",
        norm: bool = False,
        predicate: Callable | None = None,
    ) -> None:
        if reduce not in _REDUCTIONS:
            raise ValueError(f"ConvergenceHook: reduce must be one of {_REDUCTIONS}, got {reduce!r}")
        if predicate is None and not float(threshold) == float(threshold):
            raise ValueError("ConvergenceHook: threshold is NaN")
        self.field = field
        self.threshold = float(threshold)
        self.reduce = reduce
        self.norm = norm
        self.predicate = predicate

    @classmethod
    def from_forces(cls, threshold: float) -> "ConvergenceHook":
        """Converged when the maximum per-atom force norm is ``<= threshold`` (eV/Å)."""
        if threshold <= 0:
            raise ValueError(f"ConvergenceHook.from_forces: threshold must be > 0 eV/Å, got {threshold}")
        return cls("fmax", threshold)

    @classmethod
    def from_field(cls, field: str, threshold: float, reduce: str = "max", norm: bool = False) -> "ConvergenceHook":
        """Converged when ``reduce(field)`` per system is ``<= threshold``.

        Example: ``ConvergenceHook.from_field("velocities", 1e-3, reduce="max", norm=True)``.
        """
        return cls(field, threshold, reduce=reduce, norm=norm)

    def __call__(self, batch) -> torch.Tensor:
        """Return a bool tensor ``[num_graphs]``: True where the system has converged."""
        if self.predicate is not None:
            out = self.predicate(batch)
            return out.reshape(-1).to(torch.bool)
        values = batch[self.field]
        if values is None:
            raise ValueError(f"ConvergenceHook: the batch has no field {self.field!r}")
        level = batch.fields.get(self.field, "system") if self.field != "fmax" else "system"
        if self.norm:
            values = torch.linalg.vector_norm(values, dim=-1)
        if level == "atom":
            values = values.reshape(values.shape[0], -1)
            values = values.amax(dim=1) if self.reduce == "max" else values.sum(dim=1)
            out = torch.zeros(batch.num_graphs, dtype=values.dtype, device=values.device)
            index = batch.batch_idx.long()
            if self.reduce in ("max", "min"):
                fill = float("-inf") if self.reduce == "max" else float("inf")
                out.fill_(fill)
                out.scatter_reduce_(0, index, values, reduce="amax" if self.reduce == "max" else "amin")
            else:
                out.index_add_(0, index, values)
                if self.reduce == "mean":
                    counts = (batch.ptr[1:] - batch.ptr[:-1]).to(values.dtype)
                    out = out / counts
            values = out
        else:
            values = values.reshape(batch.num_graphs, -1)
            if values.shape[1] > 1:
                values = getattr(values, "amax" if self.reduce == "max" else self.reduce)(dim=1)
                if isinstance(values, tuple):
                    values = values[0]
            values = values.reshape(-1)
        return values <= self.threshold

    def __repr__(self) -> str:
        if self.field == "fmax":
            return f"ConvergenceHook.from_forces(threshold={self.threshold})"
        return f"ConvergenceHook(field={self.field!r}, threshold={self.threshold}, reduce={self.reduce!r})"
