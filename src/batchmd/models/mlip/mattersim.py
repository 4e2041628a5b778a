"""MatterSim (``mattersim``) M3GNet potentials as batched batchmd models.

MatterSim (Yang et al., arXiv:2405.04967) ships an M3GNet (Chen & Ong, Nat. Comput. Sci. 2,
718 (2022)) trained on Microsoft's MatterSim data. ``load_model("mattersim:PATH")`` loads a
checkpoint (e.g. ``mattersim-v1.0.0-1M.pth`` fetched yourself; batchmd never downloads) with
``mattersim.forcefield.potential.Potential.from_checkpoint`` and keeps its ``M3Gnet`` network.

Graph. M3GNet takes the edge list *and* three-body (bond-pair) lists. batchmd builds both from
its own edge list, in torch, on the batch's device: ``edge_index`` = ``(i, j)`` with
``pbc_offsets`` = ``unit_shifts`` (M3GNet's ``vec = x_i - x_j - offsets @ cell``, the negated
bond vector; angles are unchanged); edges sorted by their centre ``i``; the three-body list holds,
for every centre, every ordered pair of distinct bonds no longer than ``threebody_cutoff``
(MatterSim's ``compute_threebody_indices``), selected from the current geometry at each call.
The network computes in float32 (its one-hot embedding is ``.float()``); batchmd casts
positions and cell to float32 inside the autograd graph, so forces and stress come from
:class:`~batchmd.models.mlip.base.GraphModel` in the batch's dtype at float32 accuracy.
"""

from __future__ import annotations

import os
import warnings

import torch

from batchmd.models.mlip.base import GraphModel, file_sha256, first_line
from batchmd.models.registry import require_package

__all__ = ["MatterSimModel", "random_mattersim", "three_body_pairs"]


def three_body_pairs(center: torch.Tensor, valid: torch.Tensor, num_bonds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ordered pairs of distinct valid bonds sharing a centre (bonds sorted by centre).

    Parameters
    ----------
    center : [E] int64
        Centre atom of each bond, non-decreasing.
    valid : [E] bool
        Bonds within the three-body cutoff.
    num_bonds : int
        ``E``.

    Returns
    -------
    pairs : [T, 2] int64
        ``(bond_ij, bond_ik)``, grouped by ``bond_ij`` in increasing order.
    per_bond : [E] int64
        Number of pairs whose first bond is each bond (0 for invalid bonds).
    """
    device = center.device
    bonds = torch.nonzero(valid).reshape(-1)
    per_bond = torch.zeros(num_bonds, dtype=torch.long, device=device)
    if bonds.numel() == 0:
        return torch.zeros((0, 2), dtype=torch.long, device=device), per_bond
    c = center[bonds]
    counts = torch.bincount(c)
    starts = torch.cumsum(counts, 0) - counts
    n = counts[c] - 1                                   # partners of each valid bond
    position = torch.arange(bonds.numel(), device=device) - starts[c]   # its place in its centre's group
    first = torch.repeat_interleave(torch.arange(bonds.numel(), device=device), n)
    offsets = torch.cumsum(n, 0) - n
    r = torch.arange(first.numel(), device=device) - offsets[first]
    q = r + (r >= position[first]).long()               # skip the bond itself
    second = starts[c[first]] + q
    per_bond[bonds] = n
    return torch.stack((bonds[first], bonds[second]), dim=1), per_bond


class MatterSimModel(GraphModel):
    """A MatterSim M3GNet network evaluated on batchmd batches (float32 network, see the module docstring).

    Parameters
    ----------
    module : mattersim.forcefield.m3gnet.m3gnet.M3Gnet
        The network (``Potential.model``), with ``model_args`` holding ``cutoff`` and
        ``threebody_cutoff``.
    **kwargs
        :class:`~batchmd.models.mlip.base.GraphModel` options.
    """

    def __init__(self, module, name: str = "MatterSim", **kwargs) -> None:
        args = dict(getattr(module, "model_args", {}) or {})
        cutoff = float(args.get("cutoff", 5.0))
        self.threebody_cutoff = float(args.get("threebody_cutoff", 4.0))
        max_z = int(args.get("max_z", getattr(module, "max_z", 94)))
        kwargs.pop("dtype", None)  # the network stays float32
        super().__init__(module, cutoff=cutoff, supported_numbers=range(1, max_z + 1), name=name, **kwargs)

    def _place(self, device, dtype) -> None:
        super()._place(device, torch.float32)

    @classmethod
    def from_file(cls, path: str, **kwargs) -> MatterSimModel:
        """Load a MatterSim checkpoint (``.pth``).

        Raises
        ------
        MissingExtraError
            ``mattersim`` is not installed (``pip install 'batchmd[mattersim]'``).
        FileNotFoundError
            No such file.
        ValueError
            mattersim cannot load it.
        """
        require_package("mattersim", "mattersim", "MatterSim models")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"batchmd: MatterSim checkpoint {path!r} not found")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from mattersim.forcefield.potential import Potential

                potential = Potential.from_checkpoint(load_path=path, device="cpu", load_training_state=False)
        except Exception as err:
            raise ValueError(f"batchmd: {path!r} is not a MatterSim checkpoint (mattersim could not load it: "
                             f"{first_line(err)})") from err
        model = cls(potential.model, name=f"MatterSim({os.path.basename(path)})", **kwargs)
        model._info = {"file": os.path.abspath(path), "sha256": file_sha256(path)}
        return model

    def compute_energy(self, graph) -> torch.Tensor:
        """Per-system energies [B] (eV) from M3GNet on ``graph`` (three-body lists built here)."""
        i, j = graph.edge_index
        order = torch.argsort(i, stable=True)
        i, j = i[order], j[order]
        pos = graph.positions.float()
        cell = graph.cell.float()
        offsets = graph.unit_shifts[order].float()
        b = graph.num_graphs
        edge_system = graph.batch[i]
        with torch.no_grad():
            length = (pos[j] - pos[i] + torch.einsum("ei,eij->ej", offsets, cell[edge_system])).norm(dim=1)
        pairs, per_bond = three_body_pairs(i, length <= self.threebody_cutoff, i.numel())
        data = {
            "atom_pos": pos,
            "cell": cell,
            "pbc_offsets": offsets,
            "atom_attr": graph.atomic_numbers.float().unsqueeze(-1),
            "edge_index": torch.stack((i, j)),
            "three_body_indices": pairs,
            "num_three_body": torch.bincount(edge_system[pairs[:, 0]], minlength=b) if pairs.numel() else
            torch.zeros(b, dtype=torch.long, device=pos.device),
            "num_bonds": torch.bincount(edge_system, minlength=b),
            "num_triple_ij": per_bond.unsqueeze(-1),
            "num_atoms": graph.ptr[1:] - graph.ptr[:-1],
            "num_graphs": b,
            "batch": graph.batch,
            "bond_index_bias": torch.zeros((pairs.shape[0], 1), dtype=torch.long, device=pos.device),
        }
        return self.module(data).reshape(-1)


def random_mattersim(cutoff: float = 5.0, threebody_cutoff: float = 4.0, seed: int = 0):
    """A small M3GNet with random weights wrapped in MatterSim's ``Potential`` (tests; not physical)."""
    require_package("mattersim", "mattersim", "MatterSim models")
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet
    from mattersim.forcefield.potential import Potential

    torch.manual_seed(seed)
    model = M3Gnet(num_blocks=2, units=16, max_l=2, max_n=3, cutoff=cutoff, threebody_cutoff=threebody_cutoff,
                   device="cpu")
    return Potential(model, device="cpu").eval()
