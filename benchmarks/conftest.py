"""Fixtures for the pytest-benchmark entry points (benchmarks/test_bench_*.py). These are not
part of the default test run (pyproject's testpaths is tests/). Run:
    .venv-bench/bin/python -m pytest benchmarks -p no:cacheprovider"""

import pytest

from benchmarks import workloads as wl


@pytest.fixture(scope="session")
def w1_small():
    return wl.w1_structures(16)


@pytest.fixture(scope="session")
def w2():
    return wl.w2_structures()
