"""Every command of the README's "Command line" block, and ``batchmd demo``, run as written.

They run with the real console script in a fresh copy of the files a clone has
(``examples/``), from its root, as a new user would.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("batchmd", path=os.path.dirname(sys.executable))


def readme_commands(section: str = "## Command line") -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split(section, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines() if line.strip()]


def _run(command: str, cwd: Path):
    argv = shlex.split(command)
    assert argv[0] == "batchmd", command
    prefix = [SCRIPT] if SCRIPT else [sys.executable, "-c", "import sys; from batchmd.cli import main; sys.exit(main())"]
    return subprocess.run(prefix + argv[1:], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_readme_cli_commands_run_as_written(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    commands = readme_commands()
    assert len(commands) >= 3 and any(c.startswith("batchmd pipeline examples/pipeline.toml") for c in commands)
    for command in commands:
        done = _run(command, tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        written = re.findall(r"-o (\S+)", command)
        for name in written:
            assert (tmp_path / name).exists(), name
    assert len(ase.io.read(tmp_path / "nvt.extxyz", ":")) == len(ase.io.read(tmp_path / "examples/argon.extxyz", ":"))
    assert (tmp_path / "examples" / "argon_relaxed_nvt.extxyz").exists()  # the pipeline's output, beside its config
    # the MD command wrote a trajectory store and a thermo log, and the plots of both are PNGs
    from batchmd.trajectory import list_systems, read_thermo

    assert list_systems(tmp_path / "nvt.h5") == list(range(len(ase.io.read(tmp_path / "nvt.extxyz", ":"))))
    assert read_thermo(tmp_path / "nvt.thermo.parquet").num_rows > 0
    for png in ("thermo.png", "rdf.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_readme_demo_command(tmp_path):
    first = (ROOT / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    assert first.strip().endswith("batchmd demo")
    done = _run("batchmd demo --systems 8 --nvt-steps 5", tmp_path)  # the README's command, smaller
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "batchmd_demo.extxyz").exists() and "wrote batchmd_demo.extxyz" in done.stdout
