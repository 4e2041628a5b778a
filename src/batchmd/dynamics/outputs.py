"""Model outputs into the live batch, for :class:`~batchmd.dynamics.fused.FusedStage` (a mixin).

A model either returns its outputs (energy [B, 1] eV, forces [N, 3] eV/Å, stress [B, 3, 3]
eV/Å^3) and the loop points the batch's fields at them, or writes into the batch's own
preallocated tensors (``supports_out``, e.g. Lennard-Jones), which keeps the step free of
allocations and the loop's cached Warp views valid.
"""

from __future__ import annotations

import torch

__all__ = ["ModelOutputs"]


class ModelOutputs:
    """Output fields of the loop's model (uses ``model``, ``stages``, ``compute_stress``)."""

    @staticmethod
    def _store(batch, name: str, value: torch.Tensor, level: str) -> None:
        """Point a batch field at a model output (no copy; nothing to do if it already is that tensor).

        A model that returns the same preallocated output tensors every call keeps the
        step free of allocations, and the loop's cached Warp views stay valid.
        """
        if batch.has_field(name) and batch[name] is value:
            return
        batch.set_field(name, value.detach().contiguous(), level)

    def _stress_computed(self) -> bool:
        """Whether evaluations in this loop produce a stress (asked for, or needed by a stage)."""
        if getattr(self.model, "supports_out", False):
            wanted = self.compute_stress or any(getattr(stage, "needs_stress", False) for stage in self.stages)
            return wanted and bool(getattr(self.model, "computes_stress", False))
        return bool(getattr(self.model, "computes_stress", False))

    def _output_fields(self, batch) -> dict | None:
        """The batch's own output tensors, for models that write into them (``supports_out``)."""
        if not getattr(self.model, "supports_out", False):
            return None
        n, b, dtype, dev = batch.num_nodes, batch.num_graphs, batch.dtype, batch.device
        wanted = {"forces": ((n, 3), "atom"), "energies": ((b, 1), "system")}
        if self._stress_computed():
            wanted["stress"] = ((b, 3, 3), "system")

        out = {}
        self._outputs_kept = True  # every system's outputs are from its last evaluation
        for name, (shape, level) in wanted.items():
            current = batch[name] if batch.has_field(name) else None
            if current is None or tuple(current.shape) != shape or current.dtype != dtype or not current.is_contiguous():
                current = torch.zeros(shape, dtype=dtype, device=dev)
                batch.set_field(name, current, level)
                self._outputs_kept = False
            out["energy" if name == "energies" else name] = current
        return out
