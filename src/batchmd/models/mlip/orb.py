"""ORB v3 conservative models (``orb-models``) as batched batchmd models.

ORB v3 (Rhodes et al., arXiv:2504.06231 (2025)) is an attention-gated graph network over a
*k-nearest-neighbour* graph: each atom sends messages to at most ``max_num_neighbors`` of its
nearest neighbours within 6 Å (20 for the ``-20-`` models, 120, "effectively unlimited", for
the ``-inf-`` ones), plus a ZBL pair repulsion. Its pretrained weights are downloaded by
``orb_models`` from Orbital's bucket; batchmd never downloads: fetch the ``.ckpt`` yourself
and pass it by path, ``load_model("orb:/models/orb-v3-conservative-inf-omat-20250404.ckpt")``
(the architecture is read from the file name, or named: ``orb:orb-v3-conservative-20-omat=PATH``).

The adapter builds ORB's input (``orb_models.forcefield.base.AtomGraphs``) from batchmd's
batched edge list: for every sender atom the ``max_num_neighbors`` nearest of its edges
(all edges ``|r| < 6 Å``, ranked by length, ties by edge order), ``vectors = x_j - x_i + shift``
(ORB's sender/receiver convention is batchmd's ``(i, j)``), ``unit_shifts``, the one-hot
element embedding and per-system node and edge counts; then it calls the network
(``model.model``), the energy head (denormalised, with its reference energies) and the ZBL
term exactly as ``ConservativeForcefieldRegressor.forward`` does. Forces and stress come from
:class:`~batchmd.models.mlip.base.GraphModel`'s autograd pass, which is ORB's own scheme
(symmetric strain on positions and cell, ``stress = (1/V) dE/d(strain)``), so results equal
``ORBCalculator`` to round-off (tests/test_mlip_orb.py) wherever the k-nearest selection is
unambiguous. Where several neighbours sit at exactly the k-th distance (an unrattled
crystal), which of them ORB keeps depends on its KD-tree's order; batchmd keeps the first in
its edge order, so energies of such ties can differ from ORB's calculator (both are valid
evaluations of a graph that is not unique).

Only conservative models (energy gradients) are supported: direct models (``orb-v3-direct-*``,
``orb-v2``) predict forces with a separate head, which batchmd's energy contract cannot
express; models conditioned on charge and spin (``orb-v3-conservative-omol``) are refused too.

Example
-------
>>> from batchmd.models import load_model
>>> model = load_model("orb:/data/orb-v3-conservative-inf-omat-20250404.ckpt")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings

import torch

from batchmd.models.mlip.base import GraphModel, file_sha256, first_line
from batchmd.models.registry import require_package

__all__ = ["ORBModel", "ORB_V3_CONSERVATIVE", "knn_edges"]

#: ORB v3 conservative models: name -> (max_num_neighbors, download URL of the weights).
ORB_V3_CONSERVATIVE = {
    f"orb-v3-conservative-{k}-{data}": (
        20 if k == "20" else 120,
        f"https://orbitalmaterials-public-models.s3.us-west-1.amazonaws.com/forcefields/orb-v3/"
        f"orb-v3-conservative-{k}-{data}-20250404.ckpt")
    for k in ("20", "inf") for data in ("omat", "mpa")
}


def _import():
    require_package("orb_models", "orb", "ORB models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from orb_models.forcefield import base, pretrained
        from orb_models.forcefield.atomic_system import SystemConfig
    return base, pretrained, SystemConfig


def knn_edges(lengths: torch.Tensor, senders: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` shortest edges of every sender (ORB's k-nearest-neighbour graph).

    Parameters
    ----------
    lengths : torch.Tensor
        [E] edge lengths (Å), no gradient needed.
    senders : torch.Tensor
        [E] int64 sender atom of each edge.
    k : int
        Largest number of edges kept per sender.

    Returns
    -------
    torch.Tensor
        [E'] int64 kept edge indices, grouped by sender, ascending length within a sender
        (ties keep the edge order). All edges when no sender has more than ``k``.
    """
    e = lengths.shape[0]
    if e == 0:
        return torch.zeros(0, dtype=torch.long, device=lengths.device)
    by_length = torch.sort(lengths, stable=True).indices
    order = by_length[torch.sort(senders[by_length], stable=True).indices]
    s = senders[order]
    counts = torch.bincount(s)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(e, device=lengths.device) - start[s]
    return order[rank < k]


class ORBModel(GraphModel):
    """An ORB v3 conservative network evaluated on batchmd batches.

    Parameters
    ----------
    module : orb_models.forcefield.conservative_regressor.ConservativeForcefieldRegressor
        The network with its heads (e.g. ``orb_models.forcefield.pretrained.
        orb_v3_conservative_architecture(system_config=...)`` with weights loaded).
    max_num_neighbors : int, optional
        Neighbours per atom (default: the module's ``system_config.max_num_neighbors``).
    **kwargs
        :class:`~batchmd.models.mlip.base.GraphModel` options (``skin``, ``compute_stress``,
        ``chunk_atoms``, ``device``, ``dtype``).

    Elements: Z = 1-117 (ORB's one-hot table has 118 classes indexed by Z); cutoff: the
    module's ``system_config.radius`` (6 Å).

    Raises
    ------
    ValueError
        A direct (non-conservative) model, a model conditioned on charge and spin, or no
        ``system_config`` and no ``max_num_neighbors``.
    """

    def __init__(self, module, max_num_neighbors: int | None = None, name: str = "ORB", **kwargs) -> None:
        base, _, _ = _import()
        self._atom_graphs = base.AtomGraphs
        if not hasattr(module, "grad_forces_name") or "energy" not in getattr(module, "heads", {}):
            raise ValueError(f"batchmd: {type(module).__name__} is not an ORB conservative model (forces from energy "
                             "gradients); ORB direct models predict forces with a separate head and are not supported")
        if getattr(module.model, "conditioner", None) is not None:
            raise ValueError("batchmd: ORB models conditioned on total charge and spin (orb-v3-conservative-omol) "
                             "are not supported yet")
        config = getattr(module, "system_config", None)
        if config is None and max_num_neighbors is None:
            raise ValueError("batchmd: the ORB module has no system_config; pass max_num_neighbors")
        self.max_num_neighbors = int(max_num_neighbors if max_num_neighbors is not None else config.max_num_neighbors)
        radius = float(config.radius) if config is not None else 6.0
        super().__init__(module, cutoff=radius, supported_numbers=range(1, 118), name=name, **kwargs)

    @classmethod
    def from_file(cls, spec: str, **kwargs) -> ORBModel:
        """Load ORB v3 conservative weights from a local ``.ckpt`` file.

        ``spec`` is a path whose file name contains one of :data:`ORB_V3_CONSERVATIVE`'s
        names (as Orbital names its files), or ``NAME=PATH``.

        Raises
        ------
        MissingExtraError
            ``orb-models`` is not installed (``pip install 'batchmd[orb]'``).
        FileNotFoundError
            No such file (a bare model name says where to download it: batchmd never downloads).
        ValueError
            Unknown architecture, or the file does not hold its weights.
        """
        _, pretrained, system_config = _import()
        name, path = None, spec
        if "=" in spec and spec.split("=", 1)[0].lower() in ORB_V3_CONSERVATIVE:
            name, path = spec.split("=", 1)
            name = name.lower()
        if not os.path.isfile(path):
            key = spec.lower().removesuffix(".ckpt")
            if key in ORB_V3_CONSERVATIVE or name is not None:
                url = ORB_V3_CONSERVATIVE[name or key][1]
                raise FileNotFoundError(f"batchmd: ORB weights must be present locally (batchmd never downloads); "
                                        f"fetch {url} and pass orb:PATH")
            raise FileNotFoundError(f"batchmd: ORB checkpoint {path!r} not found")
        if name is None:
            base_name = os.path.basename(path).lower()
            matches = [n for n in ORB_V3_CONSERVATIVE if n in base_name]
            if not matches:
                if "direct" in base_name or "orb-v2" in base_name or "omol" in base_name:
                    raise ValueError(f"batchmd: {os.path.basename(path)!r} is an ORB direct or charge/spin model; "
                                     "only orb-v3-conservative-{20,inf}-{omat,mpa} are supported")
                raise ValueError(f"batchmd: cannot tell the ORB architecture of {os.path.basename(path)!r} from its "
                                 f"name; pass orb:NAME=PATH with NAME one of {', '.join(ORB_V3_CONSERVATIVE)}")
            name = max(matches, key=len)
        k = ORB_V3_CONSERVATIVE[name][0]
        config = system_config(radius=6.0, max_num_neighbors=k)
        module = pretrained.orb_v3_conservative_architecture(device="cpu", system_config=config)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            module.load_state_dict(state, strict=True)
        except Exception as err:  # not a torch file, another architecture's weights, ...
            raise ValueError(f"batchmd: {path!r} does not hold {name} weights (loading failed: "
                             f"{first_line(err)})") from err
        model = cls(module, name=name, **kwargs)
        model._info = {"file": os.path.abspath(path), "sha256": file_sha256(path)}
        return model

    def compute_energy(self, graph) -> torch.Tensor:
        """Per-system energies [B] (eV) from ORB's network, energy head and ZBL term on ``graph``."""
        net = self.module
        vectors = graph.edge_vectors
        senders, receivers = graph.edge_index
        b, n = graph.num_graphs, graph.positions.shape[0]
        with torch.no_grad(), self._phase("adapter"):  # index building: batchmd's time, not the network's
            keep = knn_edges(torch.linalg.vector_norm(vectors.detach(), dim=1), senders, self.max_num_neighbors)
        senders, receivers, vectors = senders[keep], receivers[keep], vectors[keep]
        n_node = graph.ptr[1:] - graph.ptr[:-1]
        n_edge = torch.bincount(graph.batch[senders], minlength=b)
        dtype = vectors.dtype
        batch = self._atom_graphs(
            senders=senders, receivers=receivers, n_node=n_node, n_edge=n_edge,
            node_features={
                "positions": graph.positions,
                "atomic_numbers": graph.atomic_numbers,
                "atomic_numbers_embedding": torch.nn.functional.one_hot(graph.atomic_numbers, 118).to(dtype),
                "atom_identity": torch.arange(n, device=senders.device) - graph.ptr[graph.batch],
            },
            edge_features={"vectors": vectors, "unit_shifts": graph.unit_shifts[keep].to(dtype)},
            system_features={"cell": graph.cell, "pbc": graph.pbc},
            node_targets=None, edge_targets=None, system_targets=None, system_id=None, fix_atoms=None, tags=None,
            radius=self.cutoff, max_num_neighbors=torch.full((b,), self.max_num_neighbors, device=senders.device),
        )
        node_features = net.model(batch)["node_features"]
        head = net.heads[net.energy_name]
        energy = head.denormalize(head(node_features, batch), batch)
        if net.pair_repulsion:
            energy = energy + net.pair_repulsion_fn(batch)["energy"]
        return energy
