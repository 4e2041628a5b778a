"""CHGNet (``chgnet``) as a batched batchmd model; its pretrained weights ship inside the package.

CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)) is a graph network over an *atom
graph* (directed pairs within 6 Å for 0.3.0, bond features shared by the two directions of a
pair) and a *bond graph* (pairs of bonds shorter than 3 Å meeting at an atom, i.e. the
three-body angles). Its pretrained models ``0.3.0`` (default, MPtrj), ``0.2.0`` and ``r2scan``
are stored in the ``chgnet`` wheel, so ``load_model("chgnet")`` works offline.

The adapter feeds CHGNet's network (``CHGNet._compute``) from batchmd's batched edge list,
without CHGNet's own graph construction (pymatgen's neighbor list and a C/Python graph
builder, per structure on the host): every step, in torch, on the batch's device,

- ``directed2undirected``: each directed edge ``(i, j, n)`` is paired with its reverse
  ``(j, i, -n)`` by a canonical integer key (``torch.unique``), the undirected bond that
  CHGNet's bond features live on; ``undirected2directed`` picks one direction per bond;
- the bond graph: all ordered pairs of distinct directed edges with the same centre atom that
  are both shorter than the bond-graph cutoff (CHGNet's ``Graph.line_graph_adjacency_list``),
  built from the per-atom edge groups (edges are grouped by centre atom);
- bond bases (``bond_basis_expansion``'s radial Bessel bases of the bond lengths), angle
  bases (``angle_basis_expansion`` of the two unit bond vectors, CHGNet's sign
  ``x_i - (x_j + shift)``), the composition model's energy (its ``_get_energy`` on
  the element counts).

The network returns per-atom energies (``is_intensive``); the adapter returns eV per
structure (times the atom count, plus the composition model's per-structure energy, as
``CHGNetCalculator`` reports). Forces and stress come from
:class:`~batchmd.models.mlip.base.GraphModel`'s autograd pass: CHGNet's own stress is
``(1/V) dE/d(strain)`` with the strain applied as ``lattice @ (1 + strain)``, in GPa, and
``CHGNetCalculator`` converts it to eV/Å^3 with ``ase.units.GPa``; the two agree to
round-off (tests/test_mlip_chgnet.py). Magnetic moments and charges (CHGNet's ``m`` output)
are not computed.

Pair selection differs from CHGNet's only at exactly the cutoffs (batchmd lists
``|r| < 6 Å``, pymatgen ``<=``; the bond graph uses ``< 3 Å`` for both bonds, CHGNet ``<=``
for one), where the smooth cutoff functions are zero.

Example
-------
>>> from batchmd.models import load_model
>>> model = load_model("chgnet")                 # CHGNet 0.3.0 from the chgnet wheel   # doctest: +SKIP
>>> model = load_model("chgnet:r2scan", dtype=torch.float64)                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import torch

from batchmd.models.mlip.base import GraphModel, file_sha256, first_line
from batchmd.models.registry import require_package

__all__ = ["CHGNetModel", "PRETRAINED", "bond_graph", "pair_directed_edges"]

#: Pretrained CHGNet models stored in the ``chgnet`` package (``CHGNet.load(model_name=...)``).
PRETRAINED = ("0.3.0", "0.2.0", "r2scan")


def _import():
    require_package("chgnet", "chgnet", "CHGNet models")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from chgnet.model.model import CHGNet, BatchedGraph
    return CHGNet, BatchedGraph


def _lex_positive(shifts: torch.Tensor) -> torch.Tensor:
    a, b, c = shifts.unbind(1)
    return (a > 0) | ((a == 0) & ((b > 0) | ((b == 0) & (c > 0))))


def pair_directed_edges(edge_index: torch.Tensor, unit_shifts: torch.Tensor, num_nodes: int):
    """Pair each directed edge ``(i, j, n)`` with its reverse ``(j, i, -n)``.

    Parameters
    ----------
    edge_index : torch.Tensor
        [2, E] int64 ``(i, j)``.
    unit_shifts : torch.Tensor
        [E, 3] int64 lattice images of ``j``.
    num_nodes : int
        ``N`` (atoms in the graph).

    Returns
    -------
    directed2undirected : torch.Tensor
        [E] int64, the undirected bond of each directed edge (``U`` bonds, numbered by
        their canonical key).
    undirected2directed : torch.Tensor
        [U] int64, the lowest-numbered directed edge of each bond.

    A directed edge whose reverse is missing (possible only for a pair at exactly the
    cutoff) is a bond of its own. The key ``(min, max, canonical shift)`` is one int64;
    batches where it could overflow fall back to ``torch.unique(dim=0)`` on rows.
    """
    i, j = edge_index
    e = i.shape[0]
    device = i.device
    if e == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    forward = (i < j) | ((i == j) & _lex_positive(unit_shifts))
    a = torch.where(forward, i, j)
    b = torch.where(forward, j, i)
    n = torch.where(forward[:, None], unit_shifts, -unit_shifts)
    m = int(unit_shifts.abs().max()) + 1
    side = 2 * m + 1
    if num_nodes * num_nodes * side ** 3 < 2 ** 62:
        code = ((n[:, 0] + m) * side + (n[:, 1] + m)) * side + (n[:, 2] + m)
        key = (a * num_nodes + b) * side ** 3 + code
        bonds, d2u = torch.unique(key, return_inverse=True)
    else:  # pragma: no cover - astronomically large graphs
        bonds, d2u = torch.unique(torch.cat([a[:, None], b[:, None], n], 1), dim=0, return_inverse=True)
    u = bonds.shape[0]
    u2d = torch.full((u,), e, dtype=torch.long, device=device)
    u2d = u2d.scatter_reduce(0, d2u, torch.arange(e, device=device), reduce="amin")
    return d2u, u2d


def bond_graph(centers: torch.Tensor, short: torch.Tensor, num_nodes: int):
    """Ordered pairs of distinct short edges sharing a centre atom (CHGNet's bond graph).

    Parameters
    ----------
    centers : torch.Tensor
        [E] int64 centre atom of each directed edge.
    short : torch.Tensor
        [E] bool, edges shorter than the bond-graph cutoff.
    num_nodes : int
        ``N``.

    Returns
    -------
    first, second : torch.Tensor
        [A] int64 directed-edge indices of the two bonds of each angle (``first != second``,
        same centre), grouped by centre atom.
    """
    s_idx = torch.nonzero(short).reshape(-1)
    s_idx = s_idx[torch.sort(centers[s_idx], stable=True).indices]   # grouped by centre (batchmd's edges already are)
    c = centers[s_idx]
    counts = torch.bincount(c, minlength=num_nodes)
    starts = torch.cumsum(counts, 0) - counts               # first short edge of each atom
    rep = counts[c]                                         # partners of each short edge (self included)
    total = int(rep.sum()) if rep.numel() else 0
    pos1 = torch.repeat_interleave(torch.arange(s_idx.shape[0], device=c.device), rep, output_size=total)
    base = torch.cumsum(rep, 0) - rep
    offset = torch.arange(total, device=c.device) - torch.repeat_interleave(base, rep, output_size=total)
    pos2 = starts[c[pos1]] + offset
    keep = pos2 != pos1
    return s_idx[pos1[keep]], s_idx[pos2[keep]]


class CHGNetModel(GraphModel):
    """A CHGNet network (e.g. the pretrained 0.3.0) evaluated on batchmd batches.

    Parameters
    ----------
    module : chgnet.model.CHGNet
        The network (``CHGNet.load()``, ``CHGNet.from_file(path)`` or a new ``CHGNet(...)``).
    **kwargs
        :class:`~batchmd.models.mlip.base.GraphModel` options (``skin``, ``compute_stress``,
        ``chunk_atoms``, ``device``, ``dtype``).

    Use :meth:`from_pretrained` (or ``load_model("chgnet")`` / ``load_model("chgnet:PATH")``).
    Elements: Z = 1-94 (CHGNet's embedding table). Cutoff: the atom-graph cutoff (Å).

    Raises
    ------
    ValueError
        A network whose read-out is not ``mlp_first`` (per-atom energies summed), the only
        form CHGNet's pretrained models use and whose energy is extensive.
    """

    def __init__(self, module, name: str = "CHGNet", **kwargs) -> None:
        _, batched_graph = _import()
        self._batched_graph = batched_graph
        if not getattr(module, "mlp_first", False):
            raise ValueError("batchmd: only CHGNet networks with mlp_first=True (per-atom energies summed) are "
                             "supported; this one pools atom features first")
        converter = module.graph_converter
        self.bond_cutoff = float(converter.bond_graph_cutoff)
        numbers = range(1, module.atom_embedding.embedding.num_embeddings + 1)
        super().__init__(module, cutoff=float(converter.atom_graph_cutoff), supported_numbers=numbers, name=name,
                         **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "0.3.0", **kwargs) -> CHGNetModel:
        """Load a pretrained CHGNet by name (``"0.3.0"``, ``"0.2.0"``, ``"r2scan"``) or a saved file.

        Raises
        ------
        MissingExtraError
            ``chgnet`` is not installed (``pip install 'batchmd[chgnet]'``).
        FileNotFoundError
            Neither a file nor a pretrained name.
        ValueError
            The file is not a CHGNet checkpoint.
        """
        chgnet_cls, _ = _import()
        quiet = contextlib.redirect_stdout(io.StringIO())
        if name_or_path in PRETRAINED:
            with quiet, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = chgnet_cls.load(model_name=name_or_path, use_device="cpu", verbose=False)
            import chgnet.model.model as chgnet_model_module

            path = os.path.join(os.path.dirname(chgnet_model_module.__file__), "..", "pretrained", name_or_path)
            files = sorted(f for f in os.listdir(path) if f.endswith(".pth.tar"))
            path = os.path.normpath(os.path.join(path, files[0])) if files else None
            name = f"CHGNet-{name_or_path}"
        elif os.path.isfile(name_or_path):
            path = name_or_path
            try:
                with quiet, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    module = chgnet_cls.from_file(path)
            except Exception as err:  # not a torch file, another model's checkpoint, ...
                raise ValueError(f"batchmd: {path!r} is not a CHGNet checkpoint (chgnet could not load it: "
                                 f"{first_line(err)})") from err
            name = f"CHGNet({os.path.basename(path)})"
        else:
            raise FileNotFoundError(f"batchmd: CHGNet model {name_or_path!r} is neither a file nor a pretrained "
                                    f"name shipped with chgnet ({', '.join(PRETRAINED)})")
        model = cls(module, name=name, **kwargs)
        if path is not None:
            model._info = {"file": os.path.abspath(path), "sha256": file_sha256(path)}
        return model

    def compute_energy(self, graph) -> torch.Tensor:
        """Per-system energies [B] (eV) from CHGNet's network on ``graph``."""
        net = self.module
        n, b = graph.positions.shape[0], graph.num_graphs
        i, j = graph.edge_index
        vectors = graph.edge_vectors                          # x_j - x_i + shift
        lengths = torch.linalg.vector_norm(vectors, dim=1)
        with torch.no_grad(), self._phase("adapter"):  # index building: batchmd's time, not the network's
            d2u, u2d = pair_directed_edges(graph.edge_index, graph.unit_shifts, n)
            first, second = bond_graph(i, lengths.detach() < self.bond_cutoff, n)
        unit = -vectors / lengths[:, None]                    # CHGNet's bond vector: centre - neighbour
        bond_lengths = lengths[u2d]
        encoder = net.bond_basis_expansion
        angle_bases = net.angle_basis_expansion(unit[first], unit[second])
        atom_graph = graph.edge_index.t()
        g = self._batched_graph(
            atomic_numbers=graph.atomic_numbers,
            bond_bases_ag=encoder.rbf_expansion_ag(bond_lengths),
            bond_bases_bg=encoder.rbf_expansion_bg(bond_lengths),
            angle_bases=angle_bases,
            batched_atom_graph=atom_graph,
            batched_bond_graph=torch.stack([i[first], d2u[first], d2u[second]], dim=1),
            atom_owners=graph.batch,
            directed2undirected=d2u,
            atom_positions=[], strains=[], volumes=graph.cell.new_zeros(0),
        )
        energy = net._compute(g)["e"]                         # eV/atom when is_intensive
        counts = (graph.ptr[1:] - graph.ptr[:-1]).to(energy.dtype)
        if net.is_intensive:
            energy = energy * counts
        if net.composition_model is not None:
            comp = net.composition_model
            intensive = getattr(comp, "is_intensive", net.is_intensive)
            feas = torch.zeros((b, getattr(comp, "max_num_elements", 94)), dtype=energy.dtype, device=energy.device)
            feas.index_put_((graph.batch, graph.atomic_numbers - 1), torch.ones_like(graph.batch, dtype=energy.dtype),
                            accumulate=True)               # element counts per system
            comp_energy = comp._get_energy(feas / counts[:, None] if intensive else feas)
            energy = energy + (comp_energy * counts if intensive else comp_energy)
        return energy
