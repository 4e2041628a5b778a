"""The background writer: a thread that turns host snapshots into committed segments.

:class:`BackgroundWriter` owns a bounded queue. The loop's flushes put
:class:`~batchmd.trajectory.capture.HostSnapshot` items and graduation marks into it;
when it is full, ``put`` waits (back-pressure: host memory stays bounded by
``max_queue`` snapshots plus one segment being gathered). The thread hands each item to a
*target* (the trajectory store or the thermo log), which gathers rows and, when
``commit_bytes`` are pending or ``commit_seconds`` have passed since the last commit (and at
close), writes them as one immutable segment file (written aside, fsynced, renamed into
place: a segment exists whole or not at all).

An error in the thread (e.g. a full disk) stops it; the next ``put`` or :meth:`close`
raises :class:`TrajectoryWriteError` naming the file and what is already committed (it
stays readable). Targets implement ``add(arrays)``, ``mark_done(ids)``, ``pending_bytes``,
``commit()`` and ``committed_text()``.
"""

from __future__ import annotations

import os
import queue
import threading
import time

__all__ = ["BackgroundWriter", "TrajectoryWriteError"]


class TrajectoryWriteError(RuntimeError):
    """Writing a trajectory store or thermo log failed (e.g. disk full); committed segments stay readable."""


class BackgroundWriter:
    """A writer thread with a bounded queue in front of a segment target.

    Parameters
    ----------
    target : object
        ``add(arrays)``, ``mark_done(ids)``, ``pending_bytes``, ``commit()``, ``committed_text()``, ``path``.
    max_queue : int
        Snapshots waiting at most (then ``put`` blocks).
    commit_bytes : int
        Commit a segment once this many bytes are gathered (default 64 MiB).
    commit_seconds : float or None
        ... or once this long has passed since the last commit (default: the environment
        variable ``BATCHMD_COMMIT_SECONDS``, else 30 s): what a crash (SIGKILL, power loss)
        can lose; those systems rerun on ``--resume``.
    """

    def __init__(self, target, max_queue: int = 8, commit_bytes: int = 64 << 20,
                 commit_seconds: float | None = None) -> None:
        if commit_seconds is None:
            commit_seconds = float(os.environ.get("BATCHMD_COMMIT_SECONDS", 30.0))
        if max_queue < 1:
            raise ValueError(f"BackgroundWriter: max_queue must be >= 1, got {max_queue}")
        self.target = target
        self.commit_bytes, self.commit_seconds = int(commit_bytes), float(commit_seconds)
        self.queue: queue.Queue = queue.Queue(maxsize=int(max_queue))
        self.error: BaseException | None = None
        self.waits = 0  # puts that found the queue full (back-pressure events)
        self._thread = threading.Thread(target=self._run, name=f"batchmd-writer:{target.path}", daemon=True)
        self._closed = False
        self._thread.start()

    # ----------------------------------------------------------------- producer side
    def put(self, snapshot) -> None:
        """Queue a :class:`HostSnapshot` (waits while the queue is full)."""
        self._put(("rows", snapshot))

    def mark_done(self, system_ids) -> None:
        """Queue a mark: these systems graduated; every frame of theirs was put before."""
        self._put(("done", list(system_ids)))

    def _put(self, item) -> None:
        self.check()
        waited = False
        while True:
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if not waited:
                    self.waits += 1
                    waited = True
                self.check()

    def check(self) -> None:
        """Raise :class:`TrajectoryWriteError` if the thread failed."""
        if self.error is not None:
            raise TrajectoryWriteError(
                f"{self.target.path}: writing failed ({type(self.error).__name__}: {self.error}); "
                f"{self.target.committed_text()} stay readable") from self.error

    def close(self) -> None:
        """Commit what is pending, stop the thread; raise :class:`TrajectoryWriteError` if writing failed."""
        if not self._closed:
            self._closed = True
            if self.error is None and self._thread.is_alive():
                self._put(None)
            self._thread.join()
        self.check()

    # ----------------------------------------------------------------- the thread
    def _run(self) -> None:
        last = time.monotonic()
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    self.target.commit()
                    return
                kind, payload = item
                if kind == "rows":
                    self.target.add(payload.wait())
                else:
                    self.target.mark_done(payload)
                if self.target.pending_bytes >= self.commit_bytes or time.monotonic() - last >= self.commit_seconds:
                    self.target.commit()
                    last = time.monotonic()
            except BaseException as error:  # noqa: BLE001 - reported to the producer by check()
                self.error = error
                return
