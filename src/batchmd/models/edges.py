"""The public batched neighbor list: a COO edge list for a whole batch, on its device.

:class:`EdgeNeighborList` is the component graph models (MLIPs) and any user code consume:

>>> import torch
>>> from ase.build import bulk
>>> from batchmd.data import Batch
>>> from batchmd.models.edges import EdgeNeighborList
>>> batch = Batch.from_ase([bulk("Si", "diamond", a=5.43), bulk("Cu", "fcc", a=3.61)], dtype=torch.float64)
>>> edges = EdgeNeighborList(cutoff=5.0).update(batch)
>>> edges.edge_index.shape[0], edges.unit_shifts.shape[1], edges.edge_ptr.tolist()
(2, 3, [0, 56, 98])

Conventions (ASE's ``neighbor_list("ijS")``)
--------------------------------------------
- ``edge_index`` int64 [2, E]: ``edge_index[0] = i`` (the centre atom), ``edge_index[1] = j``
  (its neighbor), global atom indices of the batch. Edges are grouped by ``i`` in ascending
  order, hence by system: ``edge_ptr`` [B+1] gives each system's range.
- ``unit_shifts`` int64 [E, 3]: the lattice image ``n`` of ``j``, so that
  ``r_ij = x_j - x_i + n @ cell[s]`` (Å) points from ``i`` to ``j``. MACE calls ``i`` the
  sender and ``j`` the receiver (``x[receiver] - x[sender] + shift``); SevenNet calls them
  ``edge_index[0]`` and ``edge_index[1]`` with ``edge_vec = pos[1] - pos[0] + shift``; both map 1:1.
- A pair is listed when ``|r_ij| < cutoff`` (strict, as ASE). A *full* list holds both
  ``(i, j, n)`` and ``(j, i, -n)``; a *half* list one of them (``i < j``, or for an atom's own
  periodic image ``n`` lexicographically positive).
- Optional ``vectors`` [E, 3] and ``lengths`` [E] (Å, batch dtype) computed in the kernel;
  they carry no autograd graph: models that need forces by autograd call
  :meth:`Edges.edge_vectors` with positions and cell that require grad.

Periodic, mixed and non-periodic systems, cells smaller than the cutoff (several images of
one atom, including its own), skewed and unwrapped cells, per-system cutoffs: all as in
:class:`~batchmd.models.neighbors.NeighborList`, which this builds on.

Cost and synchronisation
------------------------
Each :meth:`EdgeNeighborList.update` runs the Verlet list's device-side skin check (rebuild
only systems in which an atom moved more than ``skin / 2`` or whose cell changed), then two
launches of ``batchmd.kernels.edge_list.edge_atoms`` (count, write) around a prefix sum.
The only host synchronisation is reading the edge count ``E`` (8 bytes) to allocate the
output: torch needs it for the shapes of everything downstream, so any graph model pays it
anyway. Rows that overflowed the list's capacity are re-walked over the cell list (never a
lost pair) and the list grows for later steps (see the neighbor list's overflow policy).
Why this implementation and not ``nvalchemi-toolkit-ops``: ``docs/mlip.rst``. Budgets by
edges: :func:`batchmd.dynamics.sampler.estimate_num_edges`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from batchmd.kernels import edge_list as elk
from batchmd.models.neighbors import NeighborList
from batchmd.runtime import LaunchCache, WarpViewCache, to_warp, warp_scalar

__all__ = ["EdgeNeighborList", "Edges"]


@dataclass
class Edges:
    """A batch's edge list (see the module docstring for conventions).

    Attributes
    ----------
    edge_index : torch.Tensor
        [2, E] int64, ``(i, j)``.
    unit_shifts : torch.Tensor
        [E, 3] int64 lattice images of ``j``.
    edge_ptr : torch.Tensor
        [B+1] int64, edges of system ``s`` are ``edge_ptr[s]:edge_ptr[s+1]``.
    atom_ptr : torch.Tensor
        [N+1] int64, edges of atom ``i`` are ``atom_ptr[i]:atom_ptr[i+1]``.
    vectors, lengths : torch.Tensor or None
        [E, 3] and [E] (Å), without autograd graph; None unless requested.
    """

    edge_index: torch.Tensor
    unit_shifts: torch.Tensor
    edge_ptr: torch.Tensor
    atom_ptr: torch.Tensor
    vectors: torch.Tensor | None = None
    lengths: torch.Tensor | None = None

    @property
    def num_edges(self) -> int:
        """``E``."""
        return int(self.edge_index.shape[1])

    def shifts(self, cell: torch.Tensor, batch_idx: torch.Tensor) -> torch.Tensor:
        """Cartesian shifts ``n @ cell[s]`` [E, 3] (Å), differentiable through ``cell`` [B, 3, 3]."""
        owner = batch_idx.long()[self.edge_index[0]]
        return torch.bmm(self.unit_shifts.to(cell.dtype).unsqueeze(1), cell[owner]).squeeze(1)

    def edge_vectors(self, positions: torch.Tensor, cell: torch.Tensor, batch_idx: torch.Tensor) -> torch.Tensor:
        """``r_ij = x_j - x_i + n @ cell[s]`` [E, 3] (Å), differentiable through positions and cell."""
        i, j = self.edge_index
        return positions[j] - positions[i] + self.shifts(cell, batch_idx)

    def select_systems(self, start: int, stop: int, ptr: list[int]) -> Edges:
        """The edges of systems ``start .. stop-1``, atoms renumbered from the first one.

        ``ptr`` is the batch's atom pointer as a host list (``batch.ptr.tolist()``).
        Costs one host read of the two edge offsets.
        """
        a0, a1 = ptr[start], ptr[stop]
        lo, hi = (int(x) for x in self.atom_ptr[[a0, a1]].tolist())
        return Edges(self.edge_index[:, lo:hi] - a0, self.unit_shifts[lo:hi], self.edge_ptr[start:stop + 1] - lo,
                     self.atom_ptr[a0:a1 + 1] - lo,
                     None if self.vectors is None else self.vectors[lo:hi],
                     None if self.lengths is None else self.lengths[lo:hi])


class EdgeNeighborList:
    """Batched COO neighbor list with Verlet-skin reuse, built on the Warp cell list.

    Parameters
    ----------
    cutoff : float
        Largest cutoff (Å); pairs with ``|r_ij| < cutoff`` are listed. Per-system cutoffs
        (each ``<= cutoff``) can be given to :meth:`update`.
    skin : float
        Verlet skin (Å): the underlying rows hold pairs within ``cutoff + skin`` and a system
        is rebuilt only when one of its atoms moved more than ``skin / 2`` or its cell changed.
    half : bool
        One edge per pair instead of both directions (for pair potentials). Default False.
    vectors : bool
        Also return ``vectors`` [E,3] and ``lengths`` [E] (no autograd graph).
    capacity : int, optional
        Initial candidates per atom of the Verlet rows (grows automatically, never loses pairs).

    Notes
    -----
    State lives in the batch's ``_nl_*`` fields (it follows systems through inflight refills),
    so one instance serves one live batch at a time. Call :meth:`systems_replaced` after
    in-place refills, as for :class:`~batchmd.models.neighbors.NeighborList`.

    Example
    -------
    >>> nl = EdgeNeighborList(cutoff=5.0, skin=1.0)
    >>> edges = nl.update(batch)                         # doctest: +SKIP
    >>> r = edges.edge_vectors(batch.positions, batch.cell, batch.batch_idx)   # doctest: +SKIP
    """

    def __init__(self, cutoff: float, skin: float = 1.0, half: bool = False, vectors: bool = False,
                 capacity: int | None = None) -> None:
        self.nl = NeighborList(cutoff=cutoff, skin=skin, capacity=capacity, half=False)
        self.cutoff = self.nl.cutoff
        self.skin = self.nl.skin
        self.half = bool(half)
        self.want_vectors = bool(vectors)
        self.launch = LaunchCache()
        self._wv = WarpViewCache()
        self._counts: torch.Tensor | None = None
        self._cutoffs_key = None
        self._cutoffs: torch.Tensor | None = None
        self._dummy: dict = {}

    def systems_replaced(self, batch, systems: torch.Tensor) -> None:
        """Slots ``systems`` were overwritten in place: rebuild their rows at the next update."""
        self.nl.systems_replaced(batch, systems)

    def grow_if_overflowed(self, batch) -> bool:
        """Grow the rows' capacity now if a build overflowed (one host read); see NeighborList."""
        return self.nl.grow_if_overflowed(batch)

    def _cutoff_tensor(self, batch, cutoffs) -> torch.Tensor:
        b, dtype, device = batch.num_graphs, batch.dtype, batch.device
        if cutoffs is None:
            key = (b, dtype, device)
            if self._cutoffs_key != key:
                self._cutoffs = torch.full((b,), self.cutoff, dtype=dtype, device=device)
                self._cutoffs_key = key
            return self._cutoffs
        if isinstance(cutoffs, (int, float)):
            cutoffs = torch.full((b,), float(cutoffs), dtype=dtype, device=device)
        cutoffs = torch.as_tensor(cutoffs).to(device=device, dtype=dtype).reshape(-1)
        if cutoffs.shape[0] != b:
            raise ValueError(f"batchmd: per-system cutoffs need {b} values (one per system), got {cutoffs.shape[0]}")
        if self._cutoffs_key is not cutoffs:  # validate a new tensor once (one host read)
            bad = ~((cutoffs > 0) & (cutoffs <= self.cutoff))
            if bool(bad.any()):
                raise ValueError(f"batchmd: per-system cutoffs must lie in (0, {self.cutoff}] Å (the list's cutoff)")
            self._cutoffs_key, self._cutoffs = cutoffs, cutoffs
        return cutoffs

    def _empty(self, dtype, device, kind):
        key = (dtype, device, kind)
        if key not in self._dummy:
            shape = (1, 3) if kind == "vec" else (1,)
            t = torch.zeros(shape, dtype=dtype, device=device)
            self._dummy[key] = (t, to_warp(t, vector=kind == "vec"))
        return self._dummy[key][1]

    def update(self, batch, cutoffs=None) -> Edges:
        """The batch's edges now (rebuilding the Verlet rows of systems that need it).

        Parameters
        ----------
        batch : batchmd.data.Batch
            Positions (Å), cell (Å), pbc; ``_nl_*`` fields are created/updated in place.
        cutoffs : float or torch.Tensor, optional
            Per-system cutoffs [B] (Å), each in ``(0, cutoff]``; default ``cutoff`` for all.

        Returns
        -------
        Edges

        Raises
        ------
        ValueError
            Non-finite positions or cell, degenerate periodic cell, bad per-system cutoffs.
        """
        n, device, dtype = batch.num_nodes, batch.device, batch.dtype
        v = self.nl.update(batch)
        rc = self._cutoff_tensor(batch, cutoffs)
        if self._counts is None or self._counts.shape[0] < n or self._counts.device != device:
            size = max(n, int(1.5 * (0 if self._counts is None else self._counts.shape[0])))
            self._counts = torch.zeros(size, dtype=torch.int32, device=device)
            self._offsets = torch.zeros(size + 1, dtype=torch.int64, device=device)
            self._wc = to_warp(self._counts)
            self._wo = to_warp(self._offsets)
        counts, offsets = self._counts[:n], self._offsets[: n + 1]
        T = warp_scalar(dtype)
        wv = self._wv
        common = [v["x"], v["batch_idx"], v["ptr"], v["cell"], v["neighbors"], v["images"], v["count"],
                  wv("cutoffs", rc), int(self.half), v["status"], int(v["skip_empty"])]
        walk = [v["pbc"], v["nbins"], v["bin_offset"], v["search"], v["atom_bin"], v["atom_wrap"],
                v["bin_start"], v["bin_count"], v["bin_atoms"], v["wrapped"],
                self.launch.scalar("r_list_sq", T, self.nl.r_list ** 2)]
        ei_dummy = self._dummy_index(device)
        vec_dummy, len_dummy = self._empty(dtype, device, "vec"), self._empty(dtype, device, "scalar")
        self.launch(elk.edge_atoms, n, common + [0, 0] + walk + [self._wc, self._wo, ei_dummy[0], ei_dummy[1],
                                                                  vec_dummy, len_dummy], device, dtype)
        torch.cumsum(counts, 0, out=offsets[1:])
        total = int(offsets[n])  # the one host read: E, for the output shapes
        edge_index = torch.empty((2, total), dtype=torch.int64, device=device)
        unit_shifts = torch.empty((total, 3), dtype=torch.int64, device=device)
        vectors = lengths = None
        if self.want_vectors:
            vectors = torch.empty((total, 3), dtype=dtype, device=device)
            lengths = torch.empty((total,), dtype=dtype, device=device)
        if total:
            wvec = to_warp(vectors, vector=True) if vectors is not None else vec_dummy
            wlen = to_warp(lengths) if lengths is not None else len_dummy
            self.launch(elk.edge_atoms, n, common + [1, int(self.want_vectors)] + walk
                        + [self._wc, self._wo, to_warp(edge_index), to_warp(unit_shifts), wvec, wlen], device, dtype)
        edge_ptr = offsets.index_select(0, batch.ptr.long())
        return Edges(edge_index, unit_shifts, edge_ptr, offsets.clone(), vectors, lengths)

    def _dummy_index(self, device):
        key = ("index", device)
        if key not in self._dummy:
            a = torch.zeros((2, 1), dtype=torch.int64, device=device)
            b = torch.zeros((1, 3), dtype=torch.int64, device=device)
            self._dummy[key] = (a, b, to_warp(a), to_warp(b))
        return self._dummy[key][2:]

