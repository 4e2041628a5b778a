"""The CLI's user-error type (standard library only: imported before any argument is parsed)."""

from __future__ import annotations

__all__ = ["AlreadyComplete", "CLIError", "Interrupted"]


class CLIError(Exception):
    """A user error: the message is printed as one line and the command exits with status 2."""


class AlreadyComplete(Exception):
    """``--resume`` found the output complete from the same run: nothing to do.

    ``args``: (message, exit status: 0, or 3 when that run had failed frames).
    """


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a run; the message says where the finished frames are."""
