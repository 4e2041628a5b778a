"""Batched Verlet neighbor list that keeps its state in the batch and rebuilds on the device.

Storage (why in the batch)
--------------------------
The per-atom list lives in ``_``-prefixed batch fields, so it travels with each system
through ``remove`` / ``append`` / ``replace_slots`` and survives inflight refills:

=========================  ================  ==========================================
``_nl_ref_positions``      [N, 3] float      positions at the last build (Å)
``_nl_ref_cell``           [B, 3, 3] float   cell at the last build (Å)
``_nl_cutoff``             [B] float         list cutoff ``cutoff + skin`` of the build (Å),
                                             negative for a half list
``_nl_neighbors``          [N, K] int32      *system-local* neighbor ``j``; ``-1 - j`` for a
                                             periodic image (same-image neighbors come first)
``_nl_images``             [N, K] int32      lattice image ``(n0, n1, n2)`` of image entries,
                                             packed as three 10-bit fields (``|n_d| <= 511``,
                                             see :func:`unpack_images`)
``_nl_count``              [N] int32         neighbor count; ``-count`` if the row overflowed K
                                             (or held an image beyond ``±511``)
``_nl_nbins``              [B, 3] int32      bin grid chosen on the host (0: not chosen yet)
=========================  ================  ==========================================

An image entry stands for ``x_j + n0 a + n1 b + n2 c`` (cell rows ``a, b, c``, Å); pair
kernels compute that shift at use time from the *current* cell. This equals the shift at
build time: a cell only changes in place (barostat, cell filter), and a system whose cell
differs from ``_nl_ref_cell`` is rebuilt by the skin check before any pair kernel reads its
list. Integers instead of Cartesian shifts cost 4 bytes per pair instead of 12 (float32) or
24 (float64), which matters because inflight refills copy every field row by row. An image
beyond ``±511`` per direction (a cell thinner than ``r_list / 509``, or unwrapped atoms
that diffused ~500 cells apart) marks the row like an overflow: that atom is evaluated
exactly by the bin walk (see :mod:`batchmd.kernels.neighbor_list`).

A system newly inserted in a slot arrives with NaN reference positions/cell/cutoff, so it
is rebuilt on its first evaluation; the other systems keep their lists.

Rebuild policy (no host synchronisation per step)
-------------------------------------------------
Each call launches a fixed sequence of kernels (see :mod:`batchmd.kernels.neighbor_list`):
a per-system flag is raised on the device when the list cutoff changed, when any atom moved
more than its skin margin since the build, or when the reference is NaN; the build kernels
early-exit for systems that are not flagged. The skin test is aware of strain: with the
reference cell ``h0`` and the current cell ``h`` (``M = h0^-1 h``, ``E = M - I``), an atom
must stay within ``(r_list (1 - |E|_F) - cutoff) / 2`` of its affinely moved reference
``x0 M`` (``skin / 2`` of ``x0`` when the cell is unchanged). Then a pair vector is
``d0 M`` plus at most twice that margin, so no pair beyond ``r_list`` at the build comes
within the cutoff. A barostat's small steps thus keep the lists (measured: MTK NPT on
LJ argon 5.8x faster than rebuilding at every cell change); a large strain, a changed
non-periodic cell or an overflowed row of a strained system rebuilds. The host only works when the
*batch structure* changes, detected by identity of the ``ptr``/``cell`` tensors (slot
operations return a new Batch with new tensors): it then validates the cells, chooses bin
counts for newcomers (bins of at least ``cutoff + skin``; one bin, i.e. the O(N^2) path
with images, for small cells) and writes the per-system bin tables into its scratch
buffers. Those only grow (x1.5 per size class), so a refill that does not outgrow them
allocates no scratch and keeps their Warp views. A cell changed in place (e.g. by a
barostat) needs no host work: widths and search ranges are recomputed on the device.

Overflow policy (never a missed pair)
-------------------------------------
The list has a fixed capacity ``K`` per atom, but the build always records the true count,
negated for a row that did not fit (so a row padded to a wider ``K`` by a slot operation
can never pass for complete). Such an atom is evaluated by walking its system's bins in the
build's order (slower, bitwise the same result); after a structure change its system is
rebuilt, since the bins are model buffers and do not travel with the batch. The host reads the device-side maximum count:
right after the build when the structure changed (a sync is allowed there), otherwise
*deferred*: the value is copied asynchronously after each build and inspected at the next
call once its CUDA event has completed (on CPU it is simply read). When it exceeds ``K``,
``K`` grows to ``1.25 * max + 8`` and every system is rebuilt once. The trade-off: steady
steps never wait for the device, at the price of some slow atoms for a step or two after
an unexpected density increase.

Per-call cost
-------------
Steady-state calls do no host work beyond identity checks: Warp views of persistent
tensors are cached, and the kernels are re-launched from recorded commands
(:class:`batchmd.runtime.LaunchCache`, a few µs each instead of ~50 µs for ``wp.launch``
of a generic kernel; after a refill only the changed arguments are re-packed). The launch sequence is the same every step (no data-dependent host branching),
so it is CUDA-graph capturable in principle; only the deferred overflow read happens on
the host, outside the captured work. Bin counts fixed at the last structure change stay
correct if a cell later grows in place (the device widens the bins), only slower.

Example
-------
>>> import torch
>>> from ase.build import bulk
>>> from batchmd.data import Batch
>>> from batchmd.models.neighbors import NeighborList
>>> batch = Batch.from_ase([bulk("Ar", "fcc", a=5.26, cubic=True)], dtype=torch.float64)
>>> nl = NeighborList(cutoff=8.5, skin=1.0, half=False)
>>> views = nl.update(batch)
>>> int(batch["_nl_count"][0])   # all images within 9.5 Å
86
"""

from __future__ import annotations

import math

import numpy as np
import torch
import warp as wp

from batchmd.kernels import neighbor_list as nlk
from batchmd.models.cell_geometry import frame_axis as _frame_axis, frame_widths  # noqa: F401 (re-exported)
from batchmd.runtime import LaunchCache, to_warp, warp_scalar

__all__ = ["FIELDS", "NeighborList", "unpack_images"]

# Bins are at least r_list / BINS_PER_CUTOFF wide; 2 visits ~(5/2)^3 = 15.6 r^3 of candidates
# per atom instead of 27 r^3 with bins of r_list (the search range adapts on the device).
BINS_PER_CUTOFF = 1

# Model scratch (not batch fields): name -> (size class, row shape, kind); see NeighborList._reserve.
_SCRATCH = {
    "rebuild": ("system", (), "int"),
    "affine": ("system", (3, 3), "mat"),
    "margin_sq": ("system", (), "float"),
    "nbins": ("system", (3,), "vec3i"),
    "bin_offset": ("system", (), "int"),
    "frame": ("system", (3, 3), "mat"),
    "lower": ("system", (3,), "vec"),
    "width": ("system", (3,), "vec"),
    "search": ("system", (3,), "vec3i"),
    "atom_bin": ("atom", (3,), "vec3i"),
    "atom_wrap": ("atom", (3,), "vec3i"),
    "atom_cell": ("atom", (), "int"),
    "wrapped": ("atom", (3,), "vec"),
    "bin_atoms": ("atom", (), "int"),
    "bin_start": ("bin", (), "int"),
    "bin_count": ("bin", (), "int"),
    "bin_system": ("bin", (), "int"),
    "max_count": (None, (), "int"),
}

FIELDS = ("_nl_ref_positions", "_nl_ref_cell", "_nl_cutoff", "_nl_neighbors", "_nl_images", "_nl_count")

IMAGE_BITS, IMAGE_BIAS = 10, 512  # must match batchmd.kernels.neighbor_list.pack_image


def unpack_images(packed: torch.Tensor) -> torch.Tensor:
    """Integer lattice images ``[..., 3]`` (int32) of packed ``_nl_images`` entries.

    Only meaningful for image entries (``_nl_neighbors < 0``) of complete rows.

    Example
    -------
    >>> unpack_images(torch.tensor([(511 << 20) | (512 << 10) | 1023], dtype=torch.int32))
    tensor([[ -1,   0, 511]], dtype=torch.int32)
    """
    mask = (1 << IMAGE_BITS) - 1
    parts = [(packed >> (2 * IMAGE_BITS)) & mask, (packed >> IMAGE_BITS) & mask, packed & mask]
    return (torch.stack(parts, dim=-1) - IMAGE_BIAS).to(torch.int32)


class NeighborList:
    """Batched Verlet neighbor list with a device-side skin check (state in ``_nl_*`` fields).

    Parameters
    ----------
    cutoff : float
        Interaction cutoff (Å); every pair with distance ``<= cutoff`` is listed.
    skin : float
        Verlet skin (Å); the list holds pairs within ``cutoff + skin`` and a system is
        rebuilt when one of its atoms moved more than ``skin / 2``. 0 rebuilds on any move.
    capacity : int, optional
        Initial neighbors per atom ``K`` (default: estimated from the densest periodic
        system). Grows automatically; a too small value is slower, never wrong.
    half : bool, optional
        Store each pair once (half bin stencil, ``j > i`` inside the atom's own bin) instead
        of from both atoms. Default: True on CPU, False on CUDA. Pair kernels that scatter
        into ``j`` are deterministic only where threads run in order (Warp's CPU backend);
        on CUDA the full list keeps one-thread-per-atom accumulation without atomics, and
        ``half=True`` with a batch on a GPU raises ``ValueError`` (the scatter would race).

    Attributes
    ----------
    rebuild : torch.Tensor
        [B] int32, 1 for systems rebuilt by the last :meth:`update` (device tensor).
    capacity : int
        Current ``K``.

    Example
    -------
    >>> nl = NeighborList(cutoff=8.5125, skin=1.0)
    >>> nl.update(batch)                     # doctest: +SKIP
    >>> batch["_nl_neighbors"].shape         # doctest: +SKIP
    torch.Size([N, K])
    """

    def __init__(self, cutoff: float, skin: float = 1.0, capacity: int | None = None,
                 half: bool | None = None) -> None:
        if not (isinstance(cutoff, (int, float)) and math.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"batchmd: neighbor-list cutoff must be a positive number (Å), got {cutoff!r}")
        if not (isinstance(skin, (int, float)) and math.isfinite(skin) and skin >= 0):
            raise ValueError(f"batchmd: neighbor-list skin must be >= 0 (Å), got {skin!r}")
        if capacity is not None and int(capacity) < 1:
            raise ValueError(f"batchmd: neighbor-list capacity must be >= 1, got {capacity!r}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.r_list = self.cutoff + self.skin
        self._initial_capacity = None if capacity is None else int(capacity)
        self.half_option = half
        # Bin tables: one serial counting sort per system (CPU: threads run in order anyway),
        # or five parallel kernels (GPUs; the same tables). None picks by device; tests force it.
        self.parallel_bins: bool | None = None
        self._total_bins = 0
        self.max_system_atoms = 0  # atoms of the largest system (host value, set at structure changes)
        self.half = False
        self.capacity = 0
        self._key = None
        self._views: dict[str, tuple[torch.Tensor, wp.array]] = {}
        self._pending_event = None
        self._host_count = None
        self._buf: dict[str, torch.Tensor] = {}
        self._w: dict[str, wp.array] = {}
        self._reserved = {"system": 0, "atom": 0, "bin": 0, "key": None}
        self.launch = LaunchCache()

    # ------------------------------------------------------------------ host setup
    def _setup(self, batch) -> None:
        """Validate cells, choose bin grids, fill the bin tables, grow buffers if needed (structure changed)."""
        device, dtype = batch.device, batch.dtype
        warp_scalar(dtype)
        n, b = batch.num_nodes, batch.num_graphs
        cell = batch.cell.detach().cpu().double().numpy()
        pbc = batch.pbc.detach().cpu().numpy().astype(bool)
        ptr = batch.ptr.detach().cpu().numpy().astype(np.int64)
        bad = ~np.isfinite(cell).all(axis=(1, 2))
        if bad.any():  # a system the loop failed (runaway guards) is never listed: only others must be finite
            failed = batch["status"].detach().cpu().numpy() == 3 if batch.has_field("status") else np.zeros(b, bool)
            if not (failed | ~bad).all():
                raise ValueError("batchmd: positions and cell must be finite")
            cell[bad] = np.eye(3)
        # Bin grids travel with their systems in ``_nl_nbins`` (0 = not chosen yet), so after
        # an inflight refill only the newcomers are sized on the host.
        if batch.has_field("_nl_nbins") and tuple(batch["_nl_nbins"].shape) == (b, 3):
            nbins = batch["_nl_nbins"].detach().cpu().numpy().astype(np.int32)
        else:
            nbins = np.zeros((b, 3), dtype=np.int32)
        densest = 0.0
        for s in np.nonzero((nbins <= 0).any(axis=1))[0]:
            nbins[s], density = self._bin_grid(batch, cell[s], pbc[s], int(ptr[s]), int(ptr[s + 1]))
            densest = max(densest, density)
        batch.set_field("_nl_nbins", torch.as_tensor(nbins, dtype=torch.int32, device=device).contiguous(), "system")
        self._host_nbins = nbins
        counts = nbins.prod(axis=1)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
        total_bins = int(counts.sum())

        self._reserve(n, b, total_bins, dtype, device)
        buf = self._buf
        buf["nbins"][:b].copy_(torch.from_numpy(nbins))  # per-system tables: live systems at the front
        buf["bin_offset"][:b].copy_(torch.from_numpy(offsets))
        buf["bin_system"][:total_bins].copy_(torch.from_numpy(np.repeat(np.arange(b, dtype=np.int32), counts)))
        self._total_bins = total_bins
        self.max_system_atoms = int(np.diff(ptr).max()) if b else 0
        buf["max_count"].zero_()
        self.rebuild = buf["rebuild"][:b]
        self._pending_event = None

        # Neighbor state fields: keep valid ones (they follow systems), create missing ones.
        existing = batch["_nl_neighbors"] if batch.has_field("_nl_neighbors") else None
        if existing is not None and existing.dtype == torch.int32 and all(batch.has_field(f) for f in FIELDS):
            capacity = existing.shape[1]
        else:
            estimate = densest * 4.0 / 3.0 * math.pi * self.r_list**3 * (0.5 if self._half_for(device) else 1.0)
            capacity = self._initial_capacity or max(16, int(1.25 * estimate) + 8)
            self._allocate_fields(batch, capacity)
        self.capacity = capacity
        self._key = (batch.ptr, batch.cell, batch.pbc, n, b, dtype, device)

    def _reserve(self, n: int, b: int, total_bins: int, dtype: torch.dtype, device: torch.device) -> None:
        """Scratch buffers for ``b`` systems, ``n`` atoms and ``total_bins`` bins, grown only when too small.

        Each size class (per system, per atom, per bin) keeps a capacity that grows
        geometrically (x1.5), so an inflight refill usually reuses the buffers *and* their
        Warp views: no allocation, and :class:`~batchmd.runtime.LaunchCache` sees the same
        view objects (nothing re-packed). Kernels are launched over the live sizes and index
        these by atom, system or bin, so the tail beyond them is never read; its stale
        content is harmless because every kernel that reads a system's scratch entries runs
        after that system's rebuild rewrote them (a system whose list overflowed is rebuilt
        after every structure change).
        """
        reserved, key = self._reserved, (dtype, device)
        changed = key != reserved["key"]
        need = {"system": b, "atom": n, "bin": total_bins}
        grow = {c for c in need if changed or need[c] > reserved[c]}
        if not grow:
            return
        for c in grow:
            reserved[c] = max(1, need[c], 0 if changed else int(1.5 * reserved[c]))
        reserved["key"] = key
        for name, (size_class, row, kind) in _SCRATCH.items():
            if changed or size_class in grow:
                t = torch.zeros((reserved[size_class] if size_class else 1, *row),
                                dtype=dtype if kind in ("vec", "mat", "float") else torch.int32, device=device)
                if name == "width":
                    t.fill_(1.0)
                self._buf[name] = t
                self._w[name] = (wp.from_torch(t, dtype=wp.vec3i) if kind == "vec3i"
                                 else to_warp(t, vector=kind == "vec", matrix=kind == "mat"))
        if changed:
            self._host_count = torch.zeros(1, dtype=torch.int32, pin_memory=device.type == "cuda")

    def _bin_grid(self, batch, cell: np.ndarray, pbc: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, float]:
        """Bins per direction for one system (validates its cell and positions) and its density (1/Å^3)."""
        pos = batch.positions[lo:hi].detach().cpu().double().numpy()
        if not np.isfinite(pos).all():
            raise ValueError("batchmd: positions and cell must be finite")
        widths = frame_widths(cell, pbc)
        natoms = hi - lo
        grid = np.ones(3, dtype=np.int32)
        for d in range(3):
            if pbc[d]:
                grid[d] = max(1, int(BINS_PER_CUTOFF * widths[d] // self.r_list))
            elif natoms > 1:
                extent = np.ptp(pos @ _frame_axis(cell, pbc, d))
                grid[d] = max(1, int(BINS_PER_CUTOFF * extent // self.r_list))
        while grid.prod() > max(8, 2 * natoms):  # never (many) more bins than atoms
            grid[int(np.argmax(grid))] //= 2
        density = natoms / abs(np.linalg.det(cell)) if pbc.all() else 0.0
        return grid, density

    def _parallel_bins_for(self, device: torch.device) -> bool:
        return self.parallel_bins if self.parallel_bins is not None else device.type != "cpu"

    def _half_for(self, device: torch.device) -> bool:
        if self.half_option and device.type != "cpu":
            # The pair kernels scatter reaction forces into j without atomics: exact on Warp's
            # CPU backend (threads in order), a data race on a GPU (measured on an H100:
            # forces off by 5e-2 eV/Å while energies agreed). Refuse rather than be wrong.
            raise ValueError(
                f"batchmd: half neighbor lists run on the CPU only (got a batch on {device}); "
                "use half_list=None (the default: a full list on GPUs) or half_list=False")
        return self.half_option if self.half_option is not None else device.type == "cpu"

    def _allocate_fields(self, batch, capacity: int) -> None:
        """(Re)create the ``_nl_*`` fields with capacity ``K``; every system must then rebuild."""
        n, b, device, dtype = batch.num_nodes, batch.num_graphs, batch.device, batch.dtype
        nan = float("nan")
        batch.set_field("_nl_ref_positions", torch.full((n, 3), nan, dtype=dtype, device=device), "atom")
        batch.set_field("_nl_ref_cell", torch.full((b, 3, 3), nan, dtype=dtype, device=device), "system")
        batch.set_field("_nl_cutoff", torch.full((b,), nan, dtype=dtype, device=device), "system")
        batch.set_field("_nl_neighbors", torch.zeros((n, capacity), dtype=torch.int32, device=device), "atom")
        batch.set_field("_nl_images", torch.zeros((n, capacity), dtype=torch.int32, device=device), "atom")
        batch.set_field("_nl_count", torch.zeros((n,), dtype=torch.int32, device=device), "atom")
        self.capacity = capacity

    def _view(self, name: str, tensor: torch.Tensor, **kw) -> wp.array:
        """Warp view of ``tensor``, cached while the tensor object stays the same."""
        hit = self._views.get(name)
        if hit is not None and hit[0] is tensor:
            return hit[1]
        view = to_warp(tensor, **kw)
        self._views[name] = (tensor, view)
        return view

    def views(self, batch) -> dict[str, wp.array]:
        """Warp views of the batch tensors and neighbor fields used by the kernels."""
        v = dict(self._w)
        v["x"] = self._view("x", batch.positions, vector=True)
        v["cell"] = self._view("cell", batch.cell, matrix=True)
        v["pbc"] = self._view("pbc", batch.pbc)
        v["ptr"] = self._view("ptr", batch.ptr)
        v["batch_idx"] = self._view("batch_idx", batch.batch_idx)
        v["ref_x"] = self._view("ref_x", batch["_nl_ref_positions"], vector=True)
        v["ref_cell"] = self._view("ref_cell", batch["_nl_ref_cell"], matrix=True)
        v["ref_cutoff"] = self._view("ref_cutoff", batch["_nl_cutoff"])
        v["neighbors"] = self._view("neighbors", batch["_nl_neighbors"])
        v["images"] = self._view("images", batch["_nl_images"])
        v["count"] = self._view("count", batch["_nl_count"])
        status = batch["status"] if batch.has_field("status") else None
        if status is not None and status.dtype == torch.int32 and tuple(status.shape) == (batch.num_graphs,):
            v["status"], v["skip_empty"] = self._view("status", status), 1  # EMPTY systems are never listed
        else:
            hit = self._views.get("no_status")
            if hit is None or hit[0].device != batch.device:
                none = torch.zeros(1, dtype=torch.int32, device=batch.device)
                self._views["no_status"] = (none, to_warp(none))
            v["status"], v["skip_empty"] = self._views["no_status"][1], 0
        return v

    # ------------------------------------------------------------------ per step
    def update(self, batch) -> dict[str, wp.array]:
        """Bring the list up to date for ``batch``; rebuild only flagged systems (on device).

        Parameters
        ----------
        batch : batchmd.data.Batch
            Positions (Å), cell, pbc; the ``_nl_*`` fields are created or updated in place.

        Returns
        -------
        dict of str -> warp.array
            Views used by pair kernels (``neighbors``, ``images``, ``count``, bin tables).

        Example
        -------
        >>> views = NeighborList(8.5, 1.0).update(batch)   # doctest: +SKIP
        """
        fresh = self.needs_setup(batch)
        if fresh:
            self._setup(batch)
            self.half = self._half_for(batch.device)
        elif self._overflowed():
            self._allocate_fields(batch, self._grown())
        v = self.views(batch)
        self._build(batch, v, force=False, check_overflow=fresh)
        if fresh and int(self._buf["max_count"][0]) > self.capacity:
            self._allocate_fields(batch, self._grown())
            v = self.views(batch)
            self._build(batch, v, force=True, check_overflow=False)
        if getattr(self, "count_rebuilds", False):  # opt-in diagnostics (batchmd -v): one device add per update
            if getattr(self, "rebuild_count", None) is None or self.rebuild_count.device != batch.device:
                self.rebuild_count = torch.zeros((), dtype=torch.int64, device=batch.device)
            self.rebuild_count += (self.rebuild != 0).sum()
        return v

    def needs_setup(self, batch) -> bool:
        """Whether the next :meth:`update` does host work first (a new batch structure, or new
        bin grids after :meth:`systems_replaced`): a replayed CUDA graph would skip it."""
        key = self._key
        return not (key is not None and batch.ptr is key[0] and batch.cell is key[1] and batch.pbc is key[2]
                    and batch.num_nodes == key[3] and batch.dtype == key[5])

    def systems_replaced(self, batch, systems: torch.Tensor) -> None:
        """Rows ``systems`` hold new systems (written in place): rebuild their lists.

        Their reference cutoff becomes NaN, so the next update rebuilds them on the device.
        Their bin grid (``_nl_nbins``) is chosen as for a fresh batch: when a new system's
        grid differs from its row's (another cell shape), the grids are re-chosen at the next
        update (host work, as after a structure change), so the pair order -- and every
        result, bitwise -- is the system's own whatever row it lands in. Reads the new
        systems' cells, pbc and positions on the host.

        Example
        -------
        >>> nl.systems_replaced(batch, torch.tensor([3, 7]))   # doctest: +SKIP
        """
        if not batch.has_field("_nl_cutoff"):
            return
        systems = systems.to(batch.device)
        batch["_nl_cutoff"].index_fill_(0, systems, float("nan"))
        host = getattr(self, "_host_nbins", None)
        rows = systems.tolist()
        if host is None or not batch.has_field("_nl_nbins") or len(host) != batch.num_graphs or not rows:
            return
        cell = batch.cell[systems].detach().cpu().double().numpy()
        pbc = batch.pbc[systems].detach().cpu().numpy().astype(bool)
        ptr = batch.ptr.detach().cpu().numpy().astype(np.int64)
        changed, grids = [], []
        for k, r in enumerate(rows):
            grid, _ = self._bin_grid(batch, cell[k], pbc[k], int(ptr[r]), int(ptr[r + 1]))
            if not np.array_equal(grid, host[r]):
                changed.append(r)
                grids.append(grid)
                host[r] = grid
        if changed:  # the new grids go in now; the next update lays out the bin tables again
            index = torch.tensor(changed, device=batch.device)
            batch["_nl_nbins"].index_copy_(0, index, torch.as_tensor(np.stack(grids), dtype=torch.int32,
                                                                     device=batch.device))
            self._key = None

    def grow_if_overflowed(self, batch) -> bool:
        """Grow ``K`` now if an earlier build overflowed it (one host read); True if it grew.

        For callers that replay captured builds (CUDA graphs), which skip the deferred check:
        the grown fields are new tensors, so such a caller sees a changed batch and captures
        again, and every system rebuilds at the next update. Until then overflowed rows stay
        exact (their atoms walk the bins).

        Example
        -------
        >>> nl.grow_if_overflowed(batch)   # doctest: +SKIP
        """
        if self.capacity and int(self._buf["max_count"][0]) > self.capacity:
            self._allocate_fields(batch, self._grown())
            self._pending_event = None
            return True
        return False

    def _grown(self) -> int:
        return int(1.25 * int(self._buf["max_count"][0])) + 8

    def _overflowed(self) -> bool:
        """Deferred overflow check: max count of earlier builds, read without waiting."""
        if self._buf["max_count"].device.type == "cpu":
            return int(self._buf["max_count"][0]) > self.capacity
        if torch.cuda.is_current_stream_capturing():
            return False  # no event queries inside a CUDA graph capture (see _build)
        event = self._pending_event
        if event is None or not event.query():
            return False
        self._pending_event = None
        return int(self._host_count[0]) > self.capacity

    def _build(self, batch, v: dict, force: bool, check_overflow: bool) -> None:
        device, T = batch.device, warp_scalar(batch.dtype)
        n, b = batch.num_nodes, batch.num_graphs
        launch, sc = self.launch, self.launch.scalar
        r_list = sc("r_list", T, self.r_list)
        code = sc("code", T, -self.r_list if self.half else self.r_list)
        launch(nlk.nl_flag_systems, b, [v["cell"], v["ref_cell"], v["ref_cutoff"], v["pbc"], code, r_list,
                                        sc("cutoff", T, self.cutoff), int(force), v["rebuild"], v["affine"],
                                        v["margin_sq"]], device, batch.dtype)
        launch(nlk.nl_flag_atoms, n, [v["x"], v["ref_x"], v["count"], v["batch_idx"], v["affine"], v["margin_sq"],
                                      self.capacity, int(check_overflow), v["rebuild"]], device, batch.dtype)
        launch(nlk.nl_frame, b, [v["x"], v["cell"], v["pbc"], v["ptr"], v["nbins"], r_list, code, v["rebuild"],
                                 v["frame"], v["lower"], v["width"], v["search"], v["ref_cell"], v["ref_cutoff"],
                                 v["status"], int(v["skip_empty"])],
               device, batch.dtype)
        launch(nlk.nl_bin_atoms, n, [v["x"], v["batch_idx"], v["pbc"], v["nbins"], v["bin_offset"], v["cell"],
                                     v["frame"], v["lower"], v["width"], v["rebuild"], v["atom_bin"], v["atom_wrap"],
                                     v["atom_cell"], v["wrapped"], v["ref_x"]], device, batch.dtype)
        if self._parallel_bins_for(device):
            nb = self._total_bins
            launch(nlk.nl_clear_bins, nb, [v["bin_system"], v["rebuild"], v["bin_count"]], device, batch.dtype)
            launch(nlk.nl_count_bins, n, [v["batch_idx"], v["atom_cell"], v["rebuild"], v["bin_count"]],
                   device, batch.dtype)
            launch(nlk.nl_scan_bins, b, [v["ptr"], v["nbins"], v["bin_offset"], v["rebuild"], v["bin_start"],
                                         v["bin_count"]], device, batch.dtype)
            launch(nlk.nl_fill_bins, n, [v["batch_idx"], v["atom_cell"], v["rebuild"], v["bin_start"],
                                         v["bin_count"], v["bin_atoms"]], device, batch.dtype)
            launch(nlk.nl_order_bins, nb, [v["bin_system"], v["rebuild"], v["bin_start"], v["bin_count"],
                                           v["bin_atoms"]], device, batch.dtype)
        else:
            launch(nlk.nl_sort_bins, b, [v["ptr"], v["nbins"], v["bin_offset"], v["atom_cell"], v["rebuild"],
                                         v["bin_start"], v["bin_count"], v["bin_atoms"]], device, batch.dtype)
        launch(nlk.nl_build, n, [v["batch_idx"], v["ptr"], v["cell"], v["pbc"], v["nbins"], v["bin_offset"],
                                 v["search"], v["atom_bin"], v["atom_wrap"], v["bin_start"], v["bin_count"],
                                 v["bin_atoms"], v["wrapped"], sc("r_list_sq", T, self.r_list**2), int(self.half),
                                 v["rebuild"], v["neighbors"], v["images"], v["count"], v["max_count"]], device, batch.dtype)
        if device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
            # Deferred overflow check. A captured CUDA graph replays the build without it: the
            # list cannot grow during replays, so whoever replays checks ``_buf["max_count"]``
            # against ``capacity`` between replays (a step outside the graph does it).
            self._host_count.copy_(self._buf["max_count"], non_blocking=True)
            self._pending_event = torch.cuda.Event()
            self._pending_event.record()
