"""The library is quiet by default: Warp's start-up chatter goes to the ``batchmd`` logger."""

from __future__ import annotations

import subprocess
import sys


def test_init_warp_prints_nothing_and_logs_warp_lines_at_info():
    code = ("import logging, sys\n"
            "records = []\n"
            "class H(logging.Handler):\n"
            "    def emit(self, record): records.append(record.getMessage())\n"
            "logging.getLogger('batchmd').addHandler(H()); logging.getLogger('batchmd').setLevel(logging.INFO)\n"
            "from batchmd.runtime import init_warp\n"
            "init_warp()\n"
            "import warp as wp\n"
            "print('GPU' if wp.is_cuda_available() else 'CPU', all(r.startswith('warp: ') for r in records))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[1] == "True"
    if done.stdout.startswith("CPU"):
        assert done.stderr == ""  # no "Could not find or load the NVIDIA CUDA driver" on stderr
