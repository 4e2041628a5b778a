"""Where a campaign keeps its files (one output directory, shared by every rank).

::

    OUTDIR/
      campaign.json                  the run's contract (checksummed JSON; written once)
      attempts.jsonl                 one checksummed line per start or resume
      results/aAAAA-rRRRRR-SSSSSS.parquet   result shards (attempt, rank, sequence)
      commits/rank-RRRRR.jsonl       per-rank commit log: the committed result shards
      checkpoints/rank-RRRRR.json    per-rank checkpoint (contract + cursor), checksummed
      metrics/rank-RRRRR.jsonl       per-rank metrics, JSON lines
      metrics/summary.json           end-of-run summary over ranks

On a cluster OUTDIR must be on a filesystem every node sees (NFS, Lustre, GPFS...).
Each rank writes only its own ``commits``, ``checkpoints`` and ``metrics`` files and
result shards with its own rank in the name; rank 0 alone writes ``campaign.json`` and
``attempts.jsonl`` (before the start barrier).

Example
-------
>>> from batchmd.campaign.layout import CampaignLayout
>>> CampaignLayout("/tmp/run").commit_log(3)
'/tmp/run/commits/rank-00003.jsonl'
"""

from __future__ import annotations

import os

__all__ = ["CampaignLayout"]


class CampaignLayout:
    """Paths of a campaign's files under ``outdir``.

    Parameters
    ----------
    outdir : path
        The campaign's output directory.
    """

    def __init__(self, outdir) -> None:
        self.root = os.path.abspath(os.fspath(outdir))

    @property
    def contract(self) -> str:
        """``campaign.json``."""
        return os.path.join(self.root, "campaign.json")

    @property
    def attempts(self) -> str:
        """``attempts.jsonl``."""
        return os.path.join(self.root, "attempts.jsonl")

    @property
    def results_dir(self) -> str:
        """Directory of result shards."""
        return os.path.join(self.root, "results")

    @property
    def commits_dir(self) -> str:
        """Directory of commit logs."""
        return os.path.join(self.root, "commits")

    @property
    def metrics_dir(self) -> str:
        """Directory of metrics files."""
        return os.path.join(self.root, "metrics")

    def result_name(self, attempt: int, rank: int, sequence: int) -> str:
        """File name of a result shard."""
        return f"a{attempt:04d}-r{rank:05d}-{sequence:06d}.parquet"

    def result_path(self, name: str) -> str:
        """Path of result shard ``name``."""
        return os.path.join(self.results_dir, name)

    def commit_log(self, rank: int) -> str:
        """Commit log of ``rank``."""
        return os.path.join(self.commits_dir, f"rank-{rank:05d}.jsonl")

    def checkpoint(self, rank: int) -> str:
        """Checkpoint of ``rank``."""
        return os.path.join(self.root, "checkpoints", f"rank-{rank:05d}.json")

    def metrics(self, rank: int) -> str:
        """Metrics log of ``rank``."""
        return os.path.join(self.metrics_dir, f"rank-{rank:05d}.jsonl")

    def metrics_latest(self, rank: int) -> str:
        """Latest metrics record of ``rank`` (read by peers to compute lag)."""
        return os.path.join(self.metrics_dir, f"rank-{rank:05d}.latest.json")

    @property
    def summary(self) -> str:
        """End-of-run summary."""
        return os.path.join(self.metrics_dir, "summary.json")

    def commit_logs(self) -> list[str]:
        """Every commit log present, sorted."""
        if not os.path.isdir(self.commits_dir):
            return []
        return sorted(os.path.join(self.commits_dir, f) for f in os.listdir(self.commits_dir) if f.endswith(".jsonl"))

    def make_dirs(self) -> None:
        """Create the directory tree."""
        for sub in ("results", "commits", "checkpoints", "metrics"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
