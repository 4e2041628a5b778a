"""Padded live batches: inflight refills of any size written in place.

A refill that rebuilds the live batch (:meth:`~batchmd.data.Batch.select_and_append`)
allocates every field anew, so every Warp view, recorded launch, neighbor-list table and
captured CUDA graph has to be rebuilt after it. A *padded* live batch avoids that: its
tensors keep one shape for the whole run, and a refill only writes rows.

Layout
------
The batch has ``2 S`` system rows and ``N`` atom rows (``S`` slots, ``N`` the sampler's
atom budget), both fixed. Slot ``s`` owns

- system row ``2 s``: its system, or an EMPTY row (no system) when the slot is free;
- system row ``2 s + 1``: its *padding*, an EMPTY system holding the slot's spare atom rows.

Atoms stay contiguous per system and in system-row order (``ptr`` is monotone), so every
kernel works unchanged; systems may hold zero atoms. EMPTY systems
(``SystemStatus.EMPTY``, :class:`~batchmd.dynamics.SystemStatus`) are never evaluated (models that declare
``supports_empty_systems``, e.g. Lennard-Jones), never listed by the neighbor list, never
moved, graduated or returned.

Refill in place
---------------
At a refill point the graduated systems' slots become free. Free slots between two live
systems, together with the spare rows around them, form a *run* of free atom rows; the
sampler's earliest sample that fits the run (:meth:`SizeAwareSampler.request_replacement`)
goes to its first free slot, the next one after it, and so on (first fit, in slot order).
Only ``ptr``, ``batch_idx`` (recomputed on the device) and the newcomers' rows change;
survivors do not move, and the model refreshes its caches for the newcomers
(``systems_replaced``). Samples are thus served out of order when a smaller one fits a run
the next one does not; each system's trajectory does not depend on its slot, so results
are the same per system.

When fragmentation leaves at least ``compact_fraction`` of the atom budget free while
samples remain, the batch is *compacted*: live systems are gathered, the sampler's next
samples appended in serving order (as without padding), and the result laid out in slots
again (new tensors, once). A sample larger than every system row of the current layout is
only served by a compaction (the evaluation plans were sized for the largest row).

Example
-------
Used by :class:`~batchmd.dynamics.FusedStage` with ``refill_in_place=True`` and a model
that declares ``supports_empty_systems``::

    fused = FusedStage([fire], sampler=sampler, refill_in_place=True, refill_frequency=1)
"""

from __future__ import annotations

import numpy as np
import torch

from batchmd.data.slots import spread_systems, write_systems
from batchmd.dynamics.status import SystemStatus

__all__ = ["SlotLayout", "supports_padding"]

#: Compact the layout when this fraction of the atom budget is free after a refill (and samples remain).
COMPACT_FRACTION = 0.25
#: Edge (Å) of the cubic periodic cell given to padding rows (never used by any kernel).
PADDING_CELL = 10.0


def supports_padding(model, batch, sampler) -> bool:
    """Whether a padded layout can serve this run: the model skips EMPTY systems, no edges or
    edge budget, no atom-index fields, and the model refreshes its caches (``systems_replaced``)
    if the batch carries any."""
    if not getattr(model, "supports_empty_systems", False) or sampler is None or sampler.max_edges is not None:
        return False
    if batch.num_edges or any(spec.level == "edge" or spec.atom_index for spec in batch.specs.values()):
        return False
    caches = any(name.startswith("_") for name in batch.fields)
    return not caches or hasattr(model, "systems_replaced")


class SlotLayout:
    """Host-side plan of a padded live batch (see the module docstring).

    Parameters
    ----------
    num_slots : int
        ``S``: the most systems the batch can hold at once.
    num_atoms : int
        ``N``: atom rows (the atom budget).

    Attributes
    ----------
    ptr : numpy.ndarray
        [2S+1] int64 host mirror of ``batch.ptr``.
    live : numpy.ndarray
        [S] bool, slots holding a system that has not graduated.
    largest : int
        Largest system a slot may take in place (the largest system row at layout time).
    """

    def __init__(self, num_slots: int, num_atoms: int) -> None:
        self.num_slots = int(num_slots)
        self.num_atoms = int(num_atoms)
        self.ptr = np.zeros(2 * self.num_slots + 1, dtype=np.int64)
        self.live = np.zeros(self.num_slots, dtype=bool)
        self.largest = 0
        self._rows = None
        self._written = None  # ptr as last written to the device
        self.compactions = 0

    # ------------------------------------------------------------------ building
    @classmethod
    def lay_out(cls, batch, num_slots: int, num_atoms: int):
        """Lay a compact batch out in slots: ``(layout, padded batch)`` (new tensors).

        ``batch``'s systems take slots ``0 .. B-1`` in order with no spare rows; the free
        slots follow, and the last slot's padding holds the remaining ``N - n`` atom rows.
        """
        sizes = batch.num_atoms_per_system.tolist()
        k, used = len(sizes), int(sum(sizes))
        layout = cls(max(num_slots, k, 1), max(num_atoms, used))
        ptr, cursor = layout.ptr, 0
        for s in range(layout.num_slots):
            ptr[2 * s] = cursor
            if s < k:
                cursor += sizes[s]
            ptr[2 * s + 1] = cursor
        ptr[2 * layout.num_slots] = layout.num_atoms
        layout.live[:k] = True
        layout.largest = int(np.diff(ptr).max()) if len(ptr) > 1 else 0
        layout._written = ptr.copy()
        # Padding rows look like a valid periodic system to host-side checks (barostats, cell
        # filters); kernels never touch them (EMPTY).
        fill = {"status": int(SystemStatus.EMPTY), "system_id": -1, "sample_index": -1, "pbc": True,
                "cell": torch.eye(3, dtype=batch.dtype, device=batch.device) * PADDING_CELL}
        padded = spread_systems(batch, [2 * s for s in range(k)], ptr.tolist(), fill=fill)
        return layout, padded

    @property
    def live_rows(self) -> list[int]:
        """System rows of the live systems (in order)."""
        return [2 * s for s in np.nonzero(self.live)[0].tolist()]

    @property
    def live_atoms(self) -> int:
        """Atoms of the live systems."""
        starts = self.ptr[0:-1:2]
        ends = self.ptr[1::2]
        return int(((ends - starts) * self.live).sum())

    def unpad(self, batch):
        """The live systems as a compact Batch (new tensors)."""
        rows = torch.tensor(self.live_rows, dtype=torch.int64, device=batch.device)
        return batch.index_select(rows)

    # ------------------------------------------------------------------ refills
    def free(self, rows) -> None:
        """System rows ``rows`` (their systems graduated) free their slots."""
        for r in rows:
            self.live[int(r) // 2] = False

    def plan(self, request) -> list[tuple[int, int, object]]:
        """Place samples in free runs; returns ``[(slot, first atom row, sample)]`` and updates ``ptr``.

        ``request(max_atoms)`` returns the sampler's earliest sample of at most that many
        atoms, or None. Live systems keep their rows.
        """
        ptr, live, slots = self.ptr, self.live, self.num_slots
        placed = []
        s = 0
        while s < slots:
            if live[s]:
                s += 1
                continue
            t = s
            while t < slots and not live[t]:
                t += 1
            start = int(ptr[2 * s - 1]) if s > 0 else 0  # end of the previous live system
            end = int(ptr[2 * t]) if t < slots else self.num_atoms
            cursor, more = start, True
            for f in range(s, t):
                ptr[2 * f] = cursor
                sample = request(min(end - cursor, self.largest)) if more and end > cursor else None
                if sample is None:
                    more = False
                else:
                    n = int(sample.num_nodes)
                    placed.append((f, cursor, sample))
                    live[f] = True
                    cursor += n
                ptr[2 * f + 1] = cursor
            s = t
        return placed

    def needs_compaction(self, sampler) -> bool:
        """Whether fragmentation leaves too much of the budget free while samples remain."""
        if sampler.exhausted:
            return False
        free = self.num_atoms - self.live_atoms
        return free >= COMPACT_FRACTION * self.num_atoms and free >= sampler.smallest_remaining()

    def write(self, batch, placed, newcomers, freed_rows) -> torch.Tensor:
        """Apply a plan to the device batch: statuses of freed rows, ``ptr``, ``batch_idx``, newcomers' rows.

        Returns the system rows of the newcomers (LongTensor on the batch's device). Nothing
        is written when nothing changed (no row freed or placed, ``ptr`` as on the device).
        """
        device = batch.device
        if not placed and not freed_rows and self._written is not None and np.array_equal(self._written, self.ptr):
            return torch.zeros(0, dtype=torch.int64, device=device)
        self._written = self.ptr.copy()
        if freed_rows:
            batch["status"].index_fill_(0, torch.tensor(freed_rows, dtype=torch.int64, device=device),
                                        int(SystemStatus.EMPTY))
        batch.ptr.copy_(torch.from_numpy(self.ptr.astype(np.int32)))
        if self._rows is None or self._rows.device != device:
            self._rows = torch.arange(2 * self.num_slots, dtype=torch.int32, device=device)
        counts = (batch.ptr[1:] - batch.ptr[:-1]).long()
        batch.batch_idx.copy_(torch.repeat_interleave(self._rows, counts, output_size=self.num_atoms))
        rows = [2 * f for f, _, _ in placed]
        if placed:
            write_systems(batch, rows, [start for _, start, _ in placed], newcomers)
        return torch.tensor(rows, dtype=torch.int64, device=device)
