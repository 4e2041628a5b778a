"""The CLI's user-error type (standard library only: imported before any argument is parsed)."""

from __future__ import annotations

__all__ = ["CLIError", "Interrupted"]


class CLIError(Exception):
    """A user error: the message is printed as one line and the command exits with status 2."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a run; the message says where the finished frames are."""
