"""Per-rank throughput metrics (JSON lines) and the end-of-run summary.

Each rank appends records to ``metrics/rank-RRRRR.jsonl`` every ``metrics_interval_s``
seconds and once at the end::

    {"time": ..., "rank": 1, "attempt": 2, "elapsed_s": 31.2,
     "systems_total": 500, "systems_done": 230, "progress": 0.46,
     "systems_committed": 192, "invalid_structures": 1,
     "atom_steps": 1.2e6, "atom_steps_per_second": 3.9e4, "window_atom_steps_per_second": 4.1e4,
     "occupancy": 0.93, "lag_progress": 0.05, "final": false}

``systems_done`` counts finished structures of the rank (committed earlier, committed now
and buffered); ``invalid_structures`` the ones that failed at run time (non-finite energy
or forces: status FAILED; structures rejected when sharding are in the dataset's
``invalid.jsonl`` and counted in the summary). ``occupancy`` is the mean fraction of the
live batch's atom budget in use. ``lag_progress`` is the fastest rank's progress minus this
rank's, read from the peers' ``rank-RRRRR.latest.json`` (no collective: ranks never wait
on each other). :func:`write_summary` (rank 0, after the end barrier) writes
``metrics/summary.json`` with each rank's finish time and its lag behind the fastest rank.

Example
-------
>>> # recorder = MetricsRecorder(layout, rank=0, world_size=2, attempt=1, systems_total=500, done_before=0)
>>> # recorder.record(stats, committed=10, buffered=3, failed=0)
"""

from __future__ import annotations

import json
import os
import time

from batchmd.campaign.durable import CorruptFileError, read_json, write_json

__all__ = ["MetricsRecorder", "write_summary", "SUMMARY_FIELDS"]

SUMMARY_FIELDS = ("elapsed_s", "systems_total", "systems_done", "atom_steps", "invalid_structures", "steps")
"""Per-rank numbers gathered at the end (in this order)."""


class MetricsRecorder:
    """Write one rank's metrics records.

    Parameters
    ----------
    layout : CampaignLayout
    rank, world_size, attempt : int
    systems_total : int
        Structures the rank owns in this attempt.
    done_before : int
        Of those, already committed by earlier attempts.
    interval_s : float
        Seconds between records written by :meth:`maybe_record`.
    """

    def __init__(self, layout, rank: int, world_size: int, attempt: int, systems_total: int, done_before: int,
                 interval_s: float = 30.0) -> None:
        self.layout, self.rank, self.world_size, self.attempt = layout, int(rank), int(world_size), int(attempt)
        self.systems_total, self.done_before = int(systems_total), int(done_before)
        self.interval_s = float(interval_s)
        self.start = time.perf_counter()
        self._last_time = self.start
        self._last_atom_steps = 0
        self._next = self.start + self.interval_s
        self.last: dict | None = None

    def _peer_progress(self) -> float | None:
        best = None
        for peer in range(self.world_size):
            if peer == self.rank:
                continue
            try:
                record = read_json(self.layout.metrics_latest(peer))
            except (OSError, CorruptFileError):
                continue
            if record.get("attempt") == self.attempt:
                best = record["progress"] if best is None else max(best, record["progress"])
        return best

    def record(self, stats, committed: int, buffered: int, failed: int, final: bool = False) -> dict:
        """Append one record built from ``stats`` (a :class:`~batchmd.dynamics.RunStats`)."""
        now = time.perf_counter()
        elapsed = now - self.start
        done = self.done_before + committed + buffered
        progress = done / self.systems_total if self.systems_total else 1.0
        window = now - self._last_time
        atom_steps = int(stats.atom_steps) if stats is not None else 0
        peer = self._peer_progress()
        record = {
            "time": time.time(),
            "rank": self.rank,
            "world_size": self.world_size,
            "attempt": self.attempt,
            "elapsed_s": elapsed,
            "systems_total": self.systems_total,
            "systems_done": done,
            "progress": progress,
            "systems_committed": self.done_before + committed,
            "invalid_structures": int(failed),
            "steps": int(stats.steps) if stats is not None else 0,
            "atom_steps": atom_steps,
            "atom_steps_per_second": atom_steps / elapsed if elapsed > 0 else 0.0,
            "window_atom_steps_per_second": (atom_steps - self._last_atom_steps) / window if window > 0 else 0.0,
            "occupancy": float(stats.mean_occupancy) if stats is not None else 0.0,
            "lag_progress": max(0.0, peer - progress) if peer is not None else 0.0,
            "final": bool(final),
        }
        os.makedirs(self.layout.metrics_dir, exist_ok=True)
        with open(self.layout.metrics(self.rank), "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
        write_json(self.layout.metrics_latest(self.rank), record)
        self._last_time, self._last_atom_steps = now, atom_steps
        self._next = now + self.interval_s
        self.last = record
        return record

    def due(self) -> bool:
        """Whether ``interval_s`` has passed since the last record."""
        return time.perf_counter() >= self._next


def write_summary(layout, per_rank: list[list[float]], attempt: int, num_invalid_input: int) -> dict:
    """Write ``metrics/summary.json`` from the gathered per-rank :data:`SUMMARY_FIELDS`.

    ``lag_s`` of a rank is how long after the fastest rank it finished (its idle-time
    cost to the allocation); ``imbalance`` is slowest over fastest elapsed time.
    """
    ranks = [dict(zip(SUMMARY_FIELDS, values)) for values in per_rank]
    fastest = min(r["elapsed_s"] for r in ranks)
    slowest = max(r["elapsed_s"] for r in ranks)
    for rank, entry in enumerate(ranks):
        for key in SUMMARY_FIELDS[1:]:
            entry[key] = int(entry[key])
        entry["rank"] = rank
        entry["lag_s"] = entry["elapsed_s"] - fastest
        entry["atom_steps_per_second"] = entry["atom_steps"] / entry["elapsed_s"] if entry["elapsed_s"] > 0 else 0.0
    total_atom_steps = sum(r["atom_steps"] for r in ranks)
    summary = {
        "attempt": int(attempt),
        "world_size": len(ranks),
        "elapsed_s": slowest,
        "systems_total": int(sum(r["systems_total"] for r in ranks)),
        "systems_done": int(sum(r["systems_done"] for r in ranks)),
        "invalid_structures_run": int(sum(r["invalid_structures"] for r in ranks)),
        "invalid_structures_input": int(num_invalid_input),
        "atom_steps": total_atom_steps,
        "atom_steps_per_second": total_atom_steps / slowest if slowest > 0 else 0.0,
        "imbalance": slowest / fastest if fastest > 0 else 1.0,
        "ranks": ranks,
    }
    write_json(layout.summary, summary)
    return summary
