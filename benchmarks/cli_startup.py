"""CLI start-up time (issue 13, §4): ``batchmd --help``, ``--version`` and ``relax`` of one small file,
as ratios to a bare ``python -c pass``.

Usage::

    python benchmarks/cli_startup.py [--src PATH/TO/src] [--repeat 5]

``--src`` runs the CLI of another checkout (e.g. an older commit) for a before/after
comparison. Medians of ``--repeat`` runs of each command, interleaved; wall-clock seconds.
Results: ``benchmarks/cli_startup.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _time(command, env) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0,):
        raise RuntimeError(f"{command}: exit {done.returncode}: {done.stderr[-500:]}")
    return elapsed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "src"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.src))
    cli = [sys.executable, "-c", "import sys; from batchmd.cli import main; sys.exit(main())"]
    with tempfile.TemporaryDirectory() as tmp:
        import ase.io
        from ase.build import bulk

        source = os.path.join(tmp, "ar.extxyz")
        ase.io.write(source, bulk("Ar", "fcc", a=5.26, cubic=True))
        rows = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "batchmd --help": cli + ["--help"],
            "batchmd --version": cli + ["--version"],
            "batchmd relax (4 atoms)": cli + ["relax", source, "-o", os.path.join(tmp, "out.extxyz"), "--quiet",
                                              "--device", "cpu"],
        }
        times = {name: [] for name in rows}
        for _ in range(args.repeat):
            for name, command in rows.items():
                times[name].append(_time(command, env))
    base = statistics.median(times["python -c pass"])
    print(f"{'command':28s} {'median s':>9s} {'x python -c pass':>17s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:28s} {median:9.3f} {median / base:17.1f}")


if __name__ == "__main__":
    main()
