"""DemoModelWrapper: a small torch network for examples and tests (no neighbor list).

Energy (eV) of a system of atoms with positions r_i (Å) and atomic numbers Z_i::

    E = sum_{i<j} [ Morse(r_ij) + scale * MLP(rbf(r_ij)) * (w(Z_i) + w(Z_j)) ] + sum_i e(Z_i)

A Morse pair term (well depth 1 eV at 1.5 Å, finite at r = 0) gives every system a
minimum, so FIRE converges from random positions; a small randomly initialised MLP of
Gaussian radial features, weighted by learnable per-element scalars, makes it a neural
network. Forces are -dE/dr by autograd. All pairs within each system interact (no
cutoff, no periodic images): cost O(N^2) over the batch, for demos with up to a few
thousand atoms in the live batch.

Example
-------
>>> import torch
>>> from batchmd.models.demo import DemoModelWrapper
>>> torch.manual_seed(42)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = DemoModelWrapper()
>>> # out = model(batch); out["energy"] is [B, 1] eV, out["forces"] is [N, 3] eV/Å

Used by ``examples/inflight_batching.py`` (the seed tutorial).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DemoModelWrapper"]

_MAX_NODES = 20000


class DemoModelWrapper(nn.Module):
    """A small neural-network potential for demos: Morse baseline plus an MLP correction.

    Parameters
    ----------
    hidden : int
        Width of the MLP.
    num_rbf : int
        Gaussian radial basis functions between 0 and ``rbf_max`` Å.
    rbf_max : float
        Largest centre of the radial basis (Å).
    scale : float
        Weight of the MLP correction relative to the Morse term (eV).
    max_z : int
        Largest atomic number accepted.

    Attributes
    ----------
    cutoff : None
        No neighbor list is needed.
    needs_neighbors : bool
        False.
    computes_stress : bool
        False.
    """

    cutoff = None
    needs_neighbors = False
    computes_stress = False

    def __init__(self, hidden: int = 16, num_rbf: int = 8, rbf_max: float = 4.0, scale: float = 0.1, max_z: int = 118):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, rbf_max, num_rbf))
        self.width = rbf_max / num_rbf
        self.mlp = nn.Sequential(nn.Linear(num_rbf, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.element_weight = nn.Embedding(max_z + 1, 1)
        self.element_energy = nn.Embedding(max_z + 1, 1)
        nn.init.normal_(self.element_weight.weight, mean=1.0, std=0.1)
        nn.init.normal_(self.element_energy.weight, mean=0.0, std=0.1)
        self.scale = float(scale)
        self.max_z = int(max_z)
        self.morse_depth, self.morse_a, self.morse_r0 = 1.0, 1.5, 1.5

    def energy(self, positions: torch.Tensor, numbers: torch.Tensor, batch_idx: torch.Tensor, num_graphs: int):
        """Per-system energies [B] (eV) of the given positions (Å); differentiable."""
        n = positions.shape[0]
        dtype = positions.dtype
        i, j = torch.triu_indices(n, n, offset=1, device=positions.device)
        same = batch_idx[i] == batch_idx[j]
        i, j = i[same], j[same]
        rij = positions[j] - positions[i]
        r = torch.sqrt((rij * rij).sum(dim=1) + 1e-12)
        morse = self.morse_depth * (1.0 - torch.exp(-self.morse_a * (r - self.morse_r0))) ** 2 - self.morse_depth
        rbf = torch.exp(-(((r[:, None] - self.centers.to(dtype)) / self.width) ** 2))
        mlp = self.mlp.to(dtype)(rbf).squeeze(-1)
        w = self.element_weight.to(dtype)(numbers).squeeze(-1)
        pair = morse + self.scale * torch.tanh(mlp) * (w[i] + w[j])
        energy = torch.zeros(num_graphs, dtype=dtype, device=positions.device)
        energy.index_add_(0, batch_idx[i], pair)
        energy.index_add_(0, batch_idx, self.element_energy.to(dtype)(numbers).squeeze(-1))
        return energy

    def forward(self, batch) -> dict:
        """Energies [B,1] (eV) and forces [N,3] (eV/Å) of every system of ``batch``."""
        if batch.num_nodes > _MAX_NODES:
            raise ValueError(
                f"DemoModelWrapper: {batch.num_nodes} atoms in the batch; the demo model is O(N^2) and "
                f"accepts at most {_MAX_NODES}"
            )
        numbers = batch.atomic_numbers.long()
        if numbers.numel() and (int(numbers.max()) > self.max_z or int(numbers.min()) < 0):
            raise ValueError(f"DemoModelWrapper: atomic numbers must lie in 0..{self.max_z}")
        batch_idx = batch.batch_idx.long()
        with torch.enable_grad():
            positions = batch.positions.detach().requires_grad_(True)
            energy = self.energy(positions, numbers, batch_idx, batch.num_graphs)
            (grad,) = torch.autograd.grad(energy.sum(), positions)
        return {"energy": energy.detach().reshape(-1, 1), "forces": -grad.detach()}
