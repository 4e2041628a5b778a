"""``python -m batchmd``: the ``batchmd`` command (:func:`batchmd.cli.main`)."""

import sys

from batchmd.cli import main

if __name__ == "__main__":
    sys.exit(main())
