"""The commit protocol that makes campaign results exactly-once.

A rank's finished systems are buffered in memory and committed in result shards:

1. write the shard under a temporary name in ``results/``, flush, ``fsync``;
2. rename it to its final name (``aAAAA-rRRRRR-SSSSSS.parquet``) and ``fsync`` the directory;
3. append ``{"file", "sha256", "rows", "min_index", "max_index", ...}`` as one checksummed
   line to the rank's commit log ``commits/rank-RRRRR.jsonl`` and ``fsync`` it.

Step 3 is the commit point. The set of done structures is *derived* from the committed
shards themselves (their ``index`` column), never kept separately, so it cannot disagree
with them:

- crash before step 3: the shard (temporary or renamed) is in no commit log; at the next
  start rank 0 deletes it (:func:`repair`) and its systems, not being done, run again;
- crash during step 3: the torn last line fails its checksum; :func:`repair` drops it;
- after step 3 the systems are done; a resume skips them, so none is committed twice.

A structure therefore ends up in exactly one committed shard. :func:`committed_records`
lists the committed shards; :func:`committed_indices` reads their ``index`` columns.

Example
-------
>>> # writer = ResultWriter(layout, rank=0, attempt=1, resolve=..., commit_every=64)
>>> # FusedStage(..., sinks=[writer]); ...; writer.commit()
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pyarrow as pa

from batchmd.campaign.durable import (
    TEMP_PREFIX,
    append_record,
    atomic_write_bytes,
    read_records,
    rewrite_records,
    sha256_file,
)
from batchmd.campaign.layout import CampaignLayout
from batchmd.campaign.results import batch_to_table, read_result_table
from batchmd.campaign.shards import write_table

__all__ = ["ResultWriter", "committed_records", "committed_indices", "repair"]


def committed_records(layout: CampaignLayout) -> list[dict]:
    """Commit records of every rank's log (torn last lines excluded), in log order."""
    records = []
    for path in layout.commit_logs():
        mine, _ = read_records(path)
        records.extend(mine)
    return records


def committed_indices(layout: CampaignLayout, verify: bool = True) -> np.ndarray:
    """Global indices present in committed result shards (sorted int64; checksums verified)."""
    parts = [
        read_result_table(layout.result_path(r["file"]), r["sha256"] if verify else None, columns=["index"])
        .column("index").to_numpy()
        for r in committed_records(layout)
    ]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def repair(layout: CampaignLayout) -> dict:
    """Make the output directory consistent after a crash; run by rank 0 before anyone writes.

    Drops torn last lines of commit logs, deletes result shards no commit log records
    and leftover temporary files. Raises if a committed shard is missing.

    Returns
    -------
    dict
        ``{"torn_lines": int, "orphans": [names]}``.
    """
    torn = 0
    for path in layout.commit_logs():
        records, torn_tail = read_records(path)
        if torn_tail:
            torn += 1
            rewrite_records(path, records)
    committed = {r["file"] for r in committed_records(layout)}
    orphans = []
    if os.path.isdir(layout.results_dir):
        for name in sorted(os.listdir(layout.results_dir)):
            if name.startswith(TEMP_PREFIX) or (name.endswith(".parquet") and name not in committed):
                os.remove(layout.result_path(name))
                orphans.append(name)
    for name in committed:
        if not os.path.exists(layout.result_path(name)):
            raise FileNotFoundError(f"{layout.result_path(name)} is recorded as committed but missing; "
                                    "the output directory was altered, refusing to resume")
    return {"torn_lines": torn, "orphans": orphans}


class ResultWriter:
    """Sink that buffers graduated systems and commits them in result shards.

    Parameters
    ----------
    layout : CampaignLayout
    rank, attempt : int
        Writer identity (in file names and rows).
    resolve : callable
        ``resolve(sample_index: numpy int64 array) -> (global_index array, list of meta dicts)``;
        maps the sampler's per-run ``sample_index`` to global input indices and input
        metadata (``source``, ``frame``, ``info``).
    commit_every : int
        Commit when this many systems are buffered.
    commit_interval_s : float
        Commit buffered systems older than this many seconds (checked on each write
        and by :meth:`maybe_commit`, which the campaign's hook calls between refills).

    Attributes
    ----------
    committed : int
        Systems committed by this writer.
    buffered_indices : list of int
        Global indices buffered, not yet committed.
    on_commit : list of callable
        Called as ``fn(record)`` after each commit.
    """

    def __init__(self, layout: CampaignLayout, rank: int, attempt: int, resolve, commit_every: int = 256,
                 commit_interval_s: float = 60.0) -> None:
        if int(commit_every) < 1 or commit_interval_s <= 0:
            raise ValueError("ResultWriter: commit_every must be >= 1 and commit_interval_s > 0")
        self.layout, self.rank, self.attempt = layout, int(rank), int(attempt)
        self.resolve = resolve
        self.commit_every, self.commit_interval_s = int(commit_every), float(commit_interval_s)
        self._tables: list[pa.Table] = []
        self.buffered_indices: list[int] = []
        self._oldest: float | None = None
        self._sequence = 0
        self.committed = 0
        self.num_failed = 0
        self.on_commit: list = []

    def __len__(self) -> int:
        """Systems committed so far."""
        return self.committed

    def write(self, batch) -> None:
        """Buffer the graduated systems of ``batch`` (a CPU Batch); commit if a bound is reached."""
        if batch.num_graphs == 0:
            return
        sample_index = batch["sample_index"].reshape(-1).cpu().numpy().astype(np.int64)
        index, meta = self.resolve(sample_index)
        self._tables.append(batch_to_table(batch, np.asarray(index, np.int64), meta, self.rank, self.attempt))
        self.buffered_indices.extend(int(i) for i in index)
        self.num_failed += int((batch["status"].reshape(-1) == 3).sum())
        if self._oldest is None:
            self._oldest = time.monotonic()
        self.maybe_commit()

    def maybe_commit(self) -> bool:
        """Commit if ``commit_every`` systems are buffered or the oldest waited ``commit_interval_s``."""
        if not self.buffered_indices:
            return False
        due = len(self.buffered_indices) >= self.commit_every
        due = due or (time.monotonic() - self._oldest) >= self.commit_interval_s
        if due:
            self.commit()
        return due

    def commit(self) -> dict | None:
        """Write, fsync, rename and record the buffered systems as one result shard; returns the record."""
        if not self._tables:
            return None
        table = pa.concat_tables(self._tables)
        name = self.layout.result_name(self.attempt, self.rank, self._sequence)
        path = self.layout.result_path(name)
        if os.path.exists(path):
            raise FileExistsError(f"{path} already exists; two writers share rank {self.rank} and attempt {self.attempt}")
        buffer = io.BytesIO()
        write_table(table, buffer, metadata={"batchmd_rank": self.rank, "batchmd_attempt": self.attempt})
        atomic_write_bytes(path, buffer.getvalue())
        index = table.column("index").to_numpy()
        record = {
            "file": name,
            "sha256": sha256_file(path),
            "rows": int(table.num_rows),
            "min_index": int(index.min()),
            "max_index": int(index.max()),
            "rank": self.rank,
            "attempt": self.attempt,
            "sequence": self._sequence,
            "time": time.time(),
        }
        append_record(self.layout.commit_log(self.rank), record)  # the commit point
        self._sequence += 1
        self.committed += int(table.num_rows)
        self._tables, self.buffered_indices, self._oldest = [], [], None
        for callback in self.on_commit:
            callback(record)
        return record
