"""Progress display for long runs: a hook that prints one self-updating status line.

:class:`ProgressHook` runs at ``AFTER_STEP`` every ``frequency`` steps and reads only the
run's host-side counters (``context.stats``, a :class:`~batchmd.dynamics.RunStats`, updated
by the loop at its refill points) and the live batch's size, so it never synchronises with
the device. It shows::

    [ 37/64 systems]  1.2e+05 atom-steps/s  occupancy 92%  elapsed 0:00:12  remaining ~0:00:09

It writes only when enabled: by default when ``stream`` is a terminal (so logs and CI
output stay clean). :func:`format_summary` gives the one-line summary of a finished run.

Example
-------
>>> from batchmd.progress import ProgressHook, format_summary
>>> from batchmd.dynamics import RunStats
>>> hook = ProgressHook(frequency=10)   # FusedStage(..., hooks=[hook])
>>> format_summary(RunStats(systems_total=4, systems_graduated=4, systems_converged=3,
...                         systems_out_of_steps=1), elapsed=2.0)
'4 systems: 3 converged, 1 out of steps, 0 failed in 0:00:02 (0 atom-steps/s)'
"""

from __future__ import annotations

import sys
import time

from batchmd.dynamics.hooks import Hook, HookStage

__all__ = ["ProgressHook", "format_summary", "format_duration"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` for a number of seconds (``"?"`` when unknown)."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_summary(stats, elapsed: float | None = None) -> str:
    """One line: how many systems converged, ran out of steps or failed, time and throughput.

    Parameters
    ----------
    stats : RunStats
        Counters of a finished run (``FusedStage.stats``).
    elapsed : float, optional
        Seconds to report (default ``stats.elapsed``).
    """
    elapsed = stats.elapsed if elapsed is None else float(elapsed)
    rate = stats.atom_steps / elapsed if elapsed > 0 else 0.0
    total = stats.systems_total if stats.systems_total is not None else stats.systems_graduated
    completed = getattr(stats, "systems_completed", 0)
    done = f"{stats.systems_converged} converged, " + (f"{completed} completed (MD), " if completed else "")
    return (
        f"{total} systems: {done}{stats.systems_out_of_steps} out of steps, "
        f"{stats.systems_failed} failed in {format_duration(elapsed)} ({rate:.3g} atom-steps/s)"
    )


class ProgressHook(Hook):
    """Live progress line: systems graduated / total, atom-steps/s, occupancy, elapsed, remaining.

    Parameters
    ----------
    frequency : int
        Consider updating every ``frequency`` steps (reads host-side counters only).
    stream : file-like
        Where to write (default ``sys.stderr``).
    enabled : bool, optional
        Force on or off; default: on when ``stream`` is a terminal.
    min_interval : float
        Seconds between two redraws (rate limit for fast runs).

    Notes
    -----
    ``atom-steps/s`` and the graduation counts advance at the loop's refill points; the
    occupancy is that of the live batch now (atoms in use / ``max_atoms``); the remaining
    time extrapolates the graduation rate. Call :meth:`close` at the end of the run to end
    the line (the hook does nothing after that until the next run).
    """

    stage = HookStage.AFTER_STEP
    host_only = True  # reads counters only: runs between replayed CUDA-graph chunks on GPUs

    def __init__(self, frequency: int = 10, stream=None, enabled: bool | None = None, min_interval: float = 0.2):
        if int(frequency) < 1:
            raise ValueError(f"ProgressHook: frequency must be >= 1, got {frequency}")
        self.frequency = int(frequency)
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty()) if callable(isatty) else False
        self.enabled = bool(enabled)
        self.min_interval = float(min_interval)
        self.stats = None
        self._last_draw = float("-inf")
        self._width = 0

    def line(self, batch, stats) -> str:
        """The status line for ``batch`` (live batch) and ``stats`` (RunStats); no device sync."""
        done = stats.systems_graduated
        total = stats.systems_total
        elapsed = stats.elapsed
        count = f"{done}/{total}" if total is not None else f"{done}"
        parts = [f"[{count} systems]", f"step {stats.steps}", f"{stats.atom_steps_per_second:.3g} atom-steps/s"]
        if stats.max_atoms:
            atoms = stats.live_atoms if getattr(stats, "live_atoms", None) is not None else batch.num_nodes
            parts.append(f"occupancy {100.0 * atoms / stats.max_atoms:.0f}%")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if total is not None and done > 0:
            parts.append(f"remaining ~{format_duration(elapsed * (total - done) / done)}")
        return "  ".join(parts)

    def __call__(self, batch, context) -> None:
        self.stats = context.stats
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        text = self.line(batch, context.stats)
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        """End the progress line (a newline if anything was drawn)."""
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0
        self._last_draw = float("-inf")
