"""Per-rank checkpoints: the run's contract and the rank's cursor, written at an interval.

``checkpoints/rank-RRRRR.json`` (checksummed, written atomically)::

    {"rank": 0, "world_size": 2, "attempt": 3, "time": 1.7e9, "host": "node01", "pid": 4242,
     "contract": {...},                      # see batchmd.campaign.contract
     "cursor": {"owned": 500,                # structures this rank owns in this attempt
                "done_before": 120,          # committed by earlier attempts (skipped)
                "committed": 64,             # committed by this attempt
                "buffered": [..],            # finished, not yet committed (re-run after a crash)
                "in_flight": [..],           # in the live batch (re-run after a crash)
                "remaining": 311,            # not yet started
                "final": false}}

The authoritative record of what is done is the commit log (see
:mod:`batchmd.campaign.commits`): a resume re-derives the done set from the committed
result shards, so a checkpoint that is older than the last commit can never cause a
structure to run twice or be skipped. The checkpoint tells operators (and the resume
log) where each rank stood, and carries the contract; a damaged checkpoint is refused.

Example
-------
>>> # write_checkpoint(layout, rank=0, payload={...}); read_checkpoint(layout.checkpoint(0))
"""

from __future__ import annotations

import os
import socket
import time

from batchmd.campaign.contract import check_contract
from batchmd.campaign.durable import read_json, write_json

__all__ = ["write_checkpoint", "read_checkpoint", "verify_checkpoints"]


def write_checkpoint(layout, rank: int, world_size: int, attempt: int, contract: dict, cursor: dict) -> None:
    """Atomically write ``rank``'s checkpoint."""
    write_json(
        layout.checkpoint(rank),
        {
            "rank": int(rank),
            "world_size": int(world_size),
            "attempt": int(attempt),
            "time": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "contract": contract,
            "cursor": cursor,
        },
    )


def read_checkpoint(path) -> dict:
    """Read a checkpoint; raises :class:`~batchmd.campaign.durable.CorruptFileError` if damaged."""
    return read_json(path)


def verify_checkpoints(layout, contract: dict) -> list[dict]:
    """Read every rank's checkpoint, refusing damaged ones or ones with a different contract.

    Returns the checkpoints (for the resume log: how many systems were in flight).
    """
    directory = os.path.dirname(layout.checkpoint(0))
    if not os.path.isdir(directory):
        return []
    out = []
    for name in sorted(os.listdir(directory)):
        if not (name.startswith("rank-") and name.endswith(".json")):
            continue
        checkpoint = read_checkpoint(os.path.join(directory, name))
        check_contract(checkpoint["contract"], contract, os.path.join(directory, name))
        out.append(checkpoint)
    return out
