"""The ``batchmd`` command line (console script ``batchmd = batchmd.cli:main``).

Commands: ``relax``, ``md``, ``pipeline`` and ``demo``; see :mod:`batchmd.cli.main`.
"""

from batchmd.cli.main import main

__all__ = ["main"]
