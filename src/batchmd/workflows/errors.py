"""The error of a bad stage, model or run spec (standard library only)."""

from __future__ import annotations

__all__ = ["SpecError"]


class SpecError(ValueError):
    """A bad stage, model or pipeline/campaign spec: a one-line message naming the file, stage and key.

    The command line prints it as one line and exits with status 2 (as ``CLIError``).
    """
