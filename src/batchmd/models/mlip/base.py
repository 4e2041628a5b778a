"""The adapter contract for edge-based machine-learned potentials (MLIPs).

An MLIP adapter is a :class:`GraphModel`: it declares its ``cutoff`` (Å) and the elements it
covers, and implements one method, :meth:`GraphModel.compute_energy`, mapping a
:class:`Graph` (a chunk of the batch with its edge list, on the model's device and dtype) to
per-system energies (eV). Everything else is shared here:

- the edge list (:class:`~batchmd.models.edges.EdgeNeighborList`: full list, pairs with
  ``|r_ij| < cutoff``, Verlet skin reuse);
- the element-coverage check (:meth:`~batchmd.models.Model.check_species`) whenever the
  batch's systems change;
- dtype and device: the wrapped module follows the batch (``module.to(batch.dtype,
  batch.device)`` on first use, again if either changes); results are returned in the
  batch's dtype on the batch's device;
- forces ``F = -dE/dx`` and stress ``sigma = (1/V) dE/d(eps)`` (eV/Å^3, ASE's sign: what
  ``atoms.get_stress(voigt=False)`` reports) by one autograd pass through positions and a
  symmetric strain ``eps`` applied to positions and cell (Knuth, Carbogno et al.,
  Comput. Phys. Commun. 190, 33 (2015); the scheme of MACE's and SevenNet's own stress);
  systems whose cell has zero volume (no cell) get zero stress;
- chunked evaluation: the batch is evaluated in consecutive chunks of whole systems of at
  most ``chunk_atoms`` atoms (default per device, see :data:`DEFAULT_CHUNK_ATOMS`), so one huge
  collated graph never loses to a loop where large edge tensors are allocation-bound (CPU).
  Per-system results do not depend on chunking beyond floating-point summation order.

What :meth:`GraphModel.compute_energy` receives
-------------------------------------------------
A :class:`Graph` with (``N`` atoms, ``B`` systems, ``E`` edges of the chunk; indices local to it)

=====================  ====================  ===================================================
``positions``          [N, 3] float, Å       strained positions; differentiable (do not detach)
``cell``               [B, 3, 3] float, Å    strained cells (rows are lattice vectors)
``pbc``                [B, 3] bool
``atomic_numbers``     [N] int64
``batch``              [N] int64             system of each atom
``ptr``                [B+1] int64           atom offsets
``edge_index``         [2, E] int64          ``(i, j)``, ASE's convention (MACE: sender, receiver)
``unit_shifts``        [E, 3] int64          lattice images of ``j``
``shifts``             [E, 3] float, Å       ``unit_shifts @ cell[s]``, differentiable
``edge_vectors``       [E, 3] float, Å       ``x_j - x_i + shifts``, differentiable (computed on first access)
``num_graphs``         int                   ``B``
``system_fields``      dict of [B] tensors   the batch's system fields named in the adapter's
                                             ``system_inputs`` (e.g. ``charge``, ``spin``), None
                                             where the batch has no such field
=====================  ====================  ===================================================

It returns energies [B] (eV), built from those tensors so gradients flow. That is the whole
contract: a new MLIP is a subclass with ``cutoff``, ``supported_numbers``, a constructor that
loads the package's module, and ``compute_energy`` translating the graph to the package's
input format (see ``docs/mlip.rst`` for a worked example, and
:mod:`batchmd.models.mlip.sevennet` / :mod:`batchmd.models.mlip.mace`).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from batchmd.models.base import Model
from batchmd.models.edges import EdgeNeighborList, Edges

__all__ = ["DEFAULT_CHUNK_ATOMS", "Graph", "GraphModel", "file_sha256", "first_line"]

#: Atoms per evaluation chunk by device type (None: the whole batch at once). Measured on the
#: 2-core CPU machine (``benchmarks/mlip_step_split.py --chunks``, small MACE, 512 atoms): one
#: graph 525 ms per step, chunks of 256 / 128 / 64 atoms 674 / 625 / 858 ms; so CPU chunks are
#: large (they only bound the size of one collated graph), GPUs take the whole batch.
DEFAULT_CHUNK_ATOMS = {"cpu": 1024, "cuda": None}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (identifies a model file in output metadata)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def first_line(error: BaseException) -> str:
    """``"TypeName: first line of the message"`` of an exception (for one-line load errors)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


@dataclass
class Graph:
    """One chunk of a batch as a graph (see the module docstring for shapes and units).

    ``edge_vectors`` is computed on first access (``x_j - x_i + shifts``, differentiable):
    models that build their own vectors from ``positions`` and ``shifts`` (MACE) never pay
    for it. Read it inside :meth:`GraphModel.compute_energy` (where gradients are recorded).
    """

    positions: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    atomic_numbers: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    edge_index: torch.Tensor
    unit_shifts: torch.Tensor
    shifts: torch.Tensor
    num_graphs: int
    system_fields: dict = field(default_factory=dict)
    _edge_vectors: torch.Tensor | None = field(default=None, repr=False)

    @property
    def edge_vectors(self) -> torch.Tensor:
        """[E, 3] float, Å: ``positions[j] - positions[i] + shifts`` (computed once, on first use)."""
        if self._edge_vectors is None:
            i, j = self.edge_index
            self._edge_vectors = self.positions[j] - self.positions[i] + self.shifts
        return self._edge_vectors


class GraphModel(Model):
    """Base class of MLIP adapters: edges, species check, dtype/device, autograd forces and stress, chunks.

    Parameters
    ----------
    module : torch.nn.Module
        The package's network (kept in ``self.module``; moved to the batch's dtype/device).
    cutoff : float
        Interaction cutoff (Å).
    supported_numbers : iterable of int or None
        Elements the model covers (None: any).
    skin : float
        Verlet skin of the edge list (Å).
    compute_stress : bool
        Return ``"stress"`` [B, 3, 3] eV/Å^3 (one extra gradient; default True).
    chunk_atoms : int, optional
        Largest number of atoms per evaluation (whole systems; a system larger than this is
        evaluated alone). Default by device type: :data:`DEFAULT_CHUNK_ATOMS`.
    device, dtype : optional
        Move the module now (otherwise on first use, following the batch).

    Subclasses implement :meth:`compute_energy`.
    """

    needs_neighbors = True
    torch_compute = True
    #: Names of per-system batch fields the adapter reads (``graph.system_fields``), e.g.
    #: ``("charge", "spin")`` from ``atoms.info`` (fairchem's UMA).
    system_inputs: tuple[str, ...] = ()

    def __init__(self, module: torch.nn.Module, cutoff: float, supported_numbers=None, skin: float = 1.0,
                 compute_stress: bool = True, chunk_atoms: int | None = None, device=None, dtype=None,
                 name: str | None = None) -> None:
        super().__init__()
        self.module = module
        self.cutoff = float(cutoff)
        self.supported_numbers = None if supported_numbers is None else frozenset(int(z) for z in supported_numbers)
        self.computes_stress = bool(compute_stress)
        if chunk_atoms is not None and int(chunk_atoms) < 1:
            raise ValueError(f"batchmd: chunk_atoms must be >= 1 or None, got {chunk_atoms!r}")
        self.chunk_atoms = chunk_atoms
        self.neighbors = EdgeNeighborList(cutoff=self.cutoff, skin=skin, half=False)
        self._model_name = name
        self._info: dict[str, str] = {}
        self._placed: tuple | None = None
        self._checked = None
        # Optional phase timer (benchmarks/mlip_step_split.py): a callable ``timer(phase)``
        # returning a context manager, phases "neighbors", "graph", "forward", "backward", and
        # "adapter" (inside "forward": an adapter's own graph assembly, e.g. CHGNet's bond graph,
        # M3GNet's line graph, metatomic's per-structure Systems).
        self.timer = None
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        if device is not None or dtype is not None:
            self._place(torch.device(device) if device is not None else next(self._tensors()).device,
                        dtype or next(self._tensors()).dtype)

    # ---------------------------------------------------------------- contract
    def compute_energy(self, graph: Graph) -> torch.Tensor:  # pragma: no cover - interface
        """Per-system energies [B] (eV) of ``graph``, differentiable w.r.t. its positions and cell."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_energy(graph)")

    def model_info(self) -> dict[str, str]:
        """``{"model": name, "model_cutoff": Å, ...}`` plus ``model_file``/``model_sha256`` for models from a file."""
        info = {"model": self.model_name, "model_cutoff": f"{self.cutoff:g}"}
        info.update({f"model_{key}": value for key, value in self._info.items()})  # never a user's own keys
        return info

    # ---------------------------------------------------------------- plumbing
    def _tensors(self):
        yield from self.module.parameters()
        yield from self.module.buffers()
        yield torch.zeros(())

    def _place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the module to ``device``/``dtype`` (floating tensors only) once per change."""
        key = (device, dtype)
        if self._placed != key:
            self.module.to(device=device, dtype=dtype)
            self._placed = key

    def systems_replaced(self, batch, systems: torch.Tensor) -> None:
        """In-place refills: rebuild those systems' edges and re-check species."""
        self.neighbors.systems_replaced(batch, systems)
        self._checked = None

    def _chunks(self, batch) -> list[tuple[int, int]]:
        limit = self.chunk_atoms if self.chunk_atoms is not None else DEFAULT_CHUNK_ATOMS.get(batch.device.type)
        b = batch.num_graphs
        if limit is None or batch.num_nodes <= limit:
            return [(0, b)]
        ptr = batch.ptr.tolist()
        chunks, start = [], 0
        for s in range(1, b + 1):
            if ptr[s] - ptr[start] > limit and s - 1 > start:
                chunks.append((start, s - 1))
                start = s - 1
        chunks.append((start, b))
        return chunks

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """Energies [B,1] (eV), forces [N,3] (eV/Å) and stress [B,3,3] (eV/Å^3) of ``batch``.

        Raises
        ------
        UnsupportedSpeciesError
            The batch holds an element the model does not cover (one line, by symbol).
        """
        if self._checked is not batch.atomic_numbers:
            self.check_species(batch.atomic_numbers)
            self._checked = batch.atomic_numbers
        self._place(batch.device, batch.dtype)
        with self._phase("neighbors"):
            edges = self.neighbors.update(batch)
        chunks = self._chunks(batch)
        fields = {name: (batch[name] if name in batch else None) for name in self.system_inputs}
        if len(chunks) == 1:
            return self._evaluate(batch.positions, batch.cell, batch.pbc, batch.atomic_numbers, batch.batch_idx,
                                  batch.ptr, edges, fields)
        ptr = batch.ptr.tolist()
        parts = []
        for a, b in chunks:
            lo, hi = ptr[a], ptr[b]
            sub = edges.select_systems(a, b, ptr)
            parts.append(self._evaluate(batch.positions[lo:hi], batch.cell[a:b], batch.pbc[a:b],
                                        batch.atomic_numbers[lo:hi], batch.batch_idx[lo:hi] - a,
                                        batch.ptr[a:b + 1] - lo, sub,
                                        {k: (v[a:b] if v is not None else None) for k, v in fields.items()}))
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _phase(self, name: str):
        return self.timer(name) if self.timer is not None else contextlib.nullcontext()

    def _evaluate(self, positions, cell, pbc, numbers, batch_idx, ptr, edges: Edges,
                  fields: dict | None = None) -> dict[str, torch.Tensor]:
        b = cell.shape[0]
        dtype, device = positions.dtype, positions.device
        batch_idx = batch_idx.long()
        phase = self._phase("graph")
        with torch.enable_grad():
            phase.__enter__()
            pos = positions.detach().requires_grad_(True)
            inputs = [pos]
            cell_ = cell.detach()
            if self.computes_stress:
                strain = torch.zeros((b, 3, 3), dtype=dtype, device=device, requires_grad=True)
                sym = 0.5 * (strain + strain.transpose(1, 2))
                pos_ = pos + torch.bmm(pos.unsqueeze(1), sym[batch_idx]).squeeze(1)
                cell_ = cell_ + torch.bmm(cell_, sym)
                inputs.append(strain)
            else:
                pos_ = pos
            shifts = edges.shifts(cell_, batch_idx)
            graph = Graph(positions=pos_, cell=cell_, pbc=pbc, atomic_numbers=numbers.long(), batch=batch_idx,
                          ptr=ptr.long(), edge_index=edges.edge_index, unit_shifts=edges.unit_shifts, shifts=shifts,
                          num_graphs=b, system_fields=fields or {})
            phase.__exit__(None, None, None)
            with self._phase("forward"):
                energy = self.compute_energy(graph).reshape(-1)
            if energy.shape[0] != b:
                raise ValueError(f"batchmd: {self.model_name}.compute_energy returned {energy.shape[0]} energies "
                                 f"for {b} systems")
            with self._phase("backward"):
                grads = torch.autograd.grad(energy.sum(), inputs, allow_unused=True)
        forces = -grads[0] if grads[0] is not None else torch.zeros_like(positions)
        out = {"energy": energy.detach().to(dtype).reshape(b, 1), "forces": forces.detach().to(dtype)}
        if self.computes_stress:
            d = grads[1] if grads[1] is not None else torch.zeros((b, 3, 3), dtype=dtype, device=device)
            volume = torch.linalg.det(cell).abs()
            periodic = volume > 0  # like the ASE calculators: any full-rank cell (a slab with vacuum too)
            safe = torch.where(periodic, volume, torch.ones_like(volume))
            out["stress"] = torch.where(periodic[:, None, None], d / safe[:, None, None], torch.zeros_like(d)).detach()
        return out
