"""The library is quiet by default: Warp's start-up chatter goes to the ``batchmd`` logger."""

from __future__ import annotations

import subprocess
import sys

import pytest


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


def test_quiet_cli_prints_nothing_a_model_factory_prints(tmp_path, capsys):
    """What a model package prints while loading goes to the log (``-v``), never to stdout."""
    import ase.io
    from ase.build import bulk

    from batchmd.cli import main
    from batchmd.models import LennardJones
    from batchmd.models.registry import register_model

    def chatty(argument, *, device=None, dtype=None):
        print("chatty-package: acceleration is not available")
        return LennardJones()

    register_model("chatty-test", chatty, "LJ that prints on load", overwrite=True)
    ase.io.write(tmp_path / "in.extxyz", [bulk("Ar", "fcc", a=5.3, cubic=True)])
    argv = ["relax", str(tmp_path / "in.extxyz"), "--model", "chatty-test", "--max-steps", "2"]
    assert main([*argv, "-o", str(tmp_path / "q.extxyz"), "-q"]) in (0, 3)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert main([*argv, "-o", str(tmp_path / "v.extxyz"), "-v"]) in (0, 3)
    captured = capsys.readouterr()
    assert "chatty-package" not in captured.out
    assert "batchmd: chatty-test: chatty-package: acceleration is not available" in captured.err


@pytest.mark.slow
def test_quiet_cli_prints_nothing_from_model_packages(tmp_path):
    """``-q``: MACE's import line ("cuequivariance ... is not available") is not printed; ``-v`` logs it."""
    import os

    pytest.importorskip("mace")
    sys.path.insert(0, os.path.dirname(__file__))
    from mlip_cases import small_mace_file

    model = small_mace_file(str(tmp_path))
    code = ("import ase.io\nfrom ase.build import bulk\n"
            f"ase.io.write({str(tmp_path / 'in.extxyz')!r}, [bulk('Cu', 'fcc', a=3.61)])\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    base = [sys.executable, "-m", "batchmd.cli", "relax", str(tmp_path / "in.extxyz"), "--model", f"mace:{model}",
            "--device", "cpu", "--max-steps", "2"]
    quiet = subprocess.run([*base, "-o", str(tmp_path / "q.extxyz"), "-q"], capture_output=True, text=True,
                           timeout=600, env=env)
    assert quiet.returncode in (0, 3), quiet.stderr
    assert quiet.stdout == "" and "cuequivariance" not in quiet.stderr
    verbose = subprocess.run([*base, "-o", str(tmp_path / "v.extxyz"), "-v"], capture_output=True, text=True,
                             timeout=600, env=env)
    assert "cuequivariance" not in verbose.stdout
    import importlib.util

    if importlib.util.find_spec("cuequivariance_torch") is None:  # MACE prints its line only then
        assert "batchmd: mace: cuequivariance" in verbose.stderr
