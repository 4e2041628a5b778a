"""The Sphinx docs build, and no reference into batchmd is missing.

Builds with ``-n`` (nitpicky) and fails on: a reference to a ``batchmd`` object, a document
or a label that does not resolve; an autodoc import failure; any warning in the pages and
modules of the docs themselves. The gallery is not executed here (``plot_gallery=0``;
``tests/test_examples.py`` runs every example); the full build with execution is the
``slow`` test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("sphinx_gallery")

ROOT = Path(__file__).resolve().parents[1]

# Warnings that name one of these files are always errors (pages and modules of the docs work).
STRICT_FILES = ("docs/", "src/batchmd/ase.py", "src/batchmd/progress.py", "src/batchmd/cli/",
                "src/batchmd/models/ase_calculator.py")
# Missing pages owned elsewhere that are tolerated until they land.
PENDING_DOCUMENTS = ("campaigns",)
# Targets named in docstrings owned elsewhere, tolerated until fixed (sinks.py names a
# ``batchmd.io`` module that does not exist; the columnar writer lives in batchmd.campaign).
PENDING_TARGETS = ("batchmd.io",)


def _is_error(line: str) -> bool:
    if any(f"'{name}'" in line for name in PENDING_DOCUMENTS) and ("nonexisting document" in line
                                                                  or "unknown document" in line):
        return False
    if any(re.search(rf"reference target not found: ~?{re.escape(t)} ", line) for t in PENDING_TARGETS):
        return False
    if re.search(r"reference target not found: ~?batchmd\.", line):
        return True
    if "reference target not found" in line:
        return False  # outside batchmd (torch, ase, numpy) or prose that napoleon read as a type
    if "unknown document" in line or "undefined label" in line or "failed to import" in line:
        return True
    return any(str(ROOT / f) in line for f in STRICT_FILES)


def _build(tmp_path, *options):
    warnings = tmp_path / "warnings.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-n", "-q", "--keep-going", "-w", str(warnings),
         *options, str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    lines = warnings.read_text().splitlines() if warnings.exists() else []
    return proc, [line for line in lines if _is_error(line)]


def test_docs_build_without_missing_references(tmp_path):
    proc, errors = _build(tmp_path, "-D", "plot_gallery=0")
    assert errors == [], "\n".join(errors)
    assert (tmp_path / "html" / "index.html").exists(), proc.stderr[-2000:]
    assert (tmp_path / "html" / "api.html").exists()


@pytest.mark.slow
def test_docs_build_with_gallery_execution(tmp_path):
    proc, errors = _build(tmp_path)
    assert errors == [], "\n".join(errors)
    assert (tmp_path / "html" / "auto_examples" / "plot_relaxation.html").exists(), proc.stderr[-2000:]
