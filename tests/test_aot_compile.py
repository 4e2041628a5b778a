"""Every Warp kernel module of batchmd compiles for CUDA sm_80 and sm_90 without a GPU.

Modules are discovered with :mod:`pkgutil` under :mod:`batchmd.kernels`, so kernel modules
added later are covered automatically. Compilation uses NVRTC (shipped with warp-lang)
through ``wp.compile_aot_module(module, device=None, arch=[80, 90])``, which needs no
CUDA driver; the artifacts go to a temporary directory.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import warp as wp

import batchmd.kernels
from batchmd.runtime import init_warp

KERNEL_MODULES = sorted(
    info.name for info in pkgutil.iter_modules(batchmd.kernels.__path__, prefix="batchmd.kernels.")
)


def test_kernel_modules_discovered():
    assert "batchmd.kernels.neighbor_list" in KERNEL_MODULES
    assert "batchmd.kernels.lennard_jones" in KERNEL_MODULES


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_compiles_for_sm80_and_sm90(name, tmp_path):
    init_warp()
    module = importlib.import_module(name)
    if not any(isinstance(v, wp.Kernel) for v in vars(module).values()):
        pytest.skip(f"{name} defines no Warp kernel")
    paths = wp.compile_aot_module(module, device=None, arch=[80, 90], module_dir=tmp_path, use_ptx=False)
    assert len(paths) == 2
    for path in paths:
        assert path.exists() and path.stat().st_size > 0
    assert {p.suffixes[-2] for p in paths} == {".sm80", ".sm90"}
