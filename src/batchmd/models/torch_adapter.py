"""Turn any ``torch.nn.Module`` that computes per-system energies into a batchmd model.

The wrapped module is called as ``module(batch)`` and returns per-system energies
(eV), shaped ``[num_graphs]`` or ``[num_graphs, 1]``, computed from ``batch.positions``
(Å) and, for periodic systems, ``batch.cell``. The adapter supplies forces
``F = -dE/dr`` (eV/Å) by autograd and, when ``compute_stress=True``, the stress
``sigma = (1/V) dE/d(epsilon)`` (eV/Å^3, ASE's sign convention) by differentiating with
respect to a homogeneous strain ``epsilon`` applied to both positions and cell.

Example
-------
>>> import torch
>>> from batchmd.models.torch_adapter import TorchModelAdapter
>>> class Springs(torch.nn.Module):
...     def forward(self, batch):
...         e = 0.5 * (batch.positions ** 2).sum(dim=1)
...         return torch.zeros(batch.num_graphs, dtype=e.dtype).index_add(0, batch.batch_idx.long(), e)
>>> model = TorchModelAdapter(Springs())
>>> # model(batch) -> {"energy": [B,1], "forces": [N,3]}

See ``examples/plot_custom_model.py``.
"""

from __future__ import annotations

import torch

from batchmd.models.base import Model

__all__ = ["TorchModelAdapter"]


class _StrainedView:
    """A read-only view of a batch whose positions and cell are replaced (for autograd)."""

    def __init__(self, batch, positions: torch.Tensor, cell: torch.Tensor) -> None:
        self._batch = batch
        self.positions = positions
        self.cell = cell

    def __getattr__(self, name):
        return getattr(self._batch, name)

    def __getitem__(self, name):
        if name in ("positions", "cell"):
            return getattr(self, name)
        return self._batch[name]


class TorchModelAdapter(Model):
    """Wrap a module computing per-system energies; forces (and stress) by autograd.

    Parameters
    ----------
    module : torch.nn.Module
        ``module(batch) -> energies`` with shape [num_graphs] or [num_graphs, 1] (eV).
    cutoff : float, optional
        Interaction range (Å), for information (the module builds its own neighbors).
    compute_stress : bool
        Also return ``"stress"`` [num_graphs, 3, 3] (eV/Å^3) for periodic systems
        (systems with a zero-volume cell get zero stress).

    Notes
    -----
    The module must compute energies from ``batch.positions`` and ``batch.cell`` as
    given (no ``.detach()``), so that gradients flow. Works on any device and dtype the
    module supports; the module is moved to the batch's dtype on first use.
    """

    needs_neighbors = False

    def __init__(self, module: torch.nn.Module, cutoff: float | None = None, compute_stress: bool = False) -> None:
        super().__init__()
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"TorchModelAdapter: expected a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.cutoff = cutoff
        self.computes_stress = bool(compute_stress)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """Energies [B,1] (eV), forces [N,3] (eV/Å) and optionally stress [B,3,3] (eV/Å^3)."""
        b = batch.num_graphs
        dtype, device = batch.dtype, batch.device
        with torch.enable_grad():
            positions = batch.positions.detach()
            cell = batch.cell.detach()
            inputs = []
            if self.computes_stress:
                strain = torch.zeros(b, 3, 3, dtype=dtype, device=device, requires_grad=True)
                deform = torch.eye(3, dtype=dtype, device=device) + strain
                # r' = r (I + eps) per system, h' = h (I + eps)  (rows are vectors)
                positions = positions.requires_grad_(True)
                strained_positions = torch.bmm(positions.unsqueeze(1), deform[batch.batch_idx.long()]).squeeze(1)
                strained_cell = torch.bmm(cell, deform)
                view = _StrainedView(batch, strained_positions, strained_cell)
                inputs = [positions, strain]
            else:
                positions = positions.requires_grad_(True)
                view = _StrainedView(batch, positions, cell)
                inputs = [positions]
            energy = self.module(view)
            if energy.dim() == 2 and energy.shape[1] == 1:
                energy = energy[:, 0]
            if energy.shape != (b,):
                raise ValueError(
                    f"TorchModelAdapter: the module returned energies of shape {tuple(energy.shape)}; "
                    f"expected [{b}] or [{b}, 1] (one per system)"
                )
            grads = torch.autograd.grad(energy.sum(), inputs, allow_unused=True)
        forces = -grads[0] if grads[0] is not None else torch.zeros_like(batch.positions)
        out = {"energy": energy.detach().reshape(b, 1).to(dtype), "forces": forces.detach().to(dtype)}
        if self.computes_stress:
            d_strain = grads[1] if grads[1] is not None else torch.zeros(b, 3, 3, dtype=dtype, device=device)
            volume = torch.linalg.det(cell).abs()
            safe = torch.where(volume > 0, volume, torch.ones_like(volume))
            stress = d_strain / safe[:, None, None]
            stress = torch.where((volume > 0)[:, None, None], stress, torch.zeros_like(stress))
            out["stress"] = stress.detach()
        return out
