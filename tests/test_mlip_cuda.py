"""MLIPs on a GPU: the same code path as on CPU, against the CPU result (skipped without CUDA).

On a GPU machine: ``python -m pytest tests/test_mlip_cuda.py -v``.
"""

from __future__ import annotations

import pytest
import torch
from mlip_cases import mixed_structures, small_mace_file

from batchmd.data import Batch
from batchmd.models.edges import EdgeNeighborList


def _cuda_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import warp as wp

        wp.init()
        return wp.get_cuda_device_count() > 0
    except Exception:  # pragma: no cover - depends on the machine
        return False


pytestmark = pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU seen by torch and Warp")


def test_edge_list_on_cuda_equals_cpu():
    frames = mixed_structures()
    cpu = EdgeNeighborList(cutoff=5.0).update(Batch.from_ase(frames, dtype=torch.float64))
    gpu = EdgeNeighborList(cutoff=5.0).update(Batch.from_ase(frames, dtype=torch.float64).to("cuda"))
    def key(e):
        i, j, s = e.edge_index[0].cpu().tolist(), e.edge_index[1].cpu().tolist(), e.unit_shifts.cpu().tolist()
        return sorted(zip(i, j, map(tuple, s)))

    assert gpu.edge_index.device.type == "cuda"
    assert key(cpu) == key(gpu)
    assert torch.equal(cpu.edge_ptr, gpu.edge_ptr.cpu())


@pytest.mark.parametrize("name", ["mace", "sevennet-0"])
def test_mlip_on_cuda_equals_cpu(name, tmp_path):
    from batchmd.models import load_model

    if name == "mace":
        pytest.importorskip("mace")
        spec = f"mace:{small_mace_file(str(tmp_path))}"
    else:
        pytest.importorskip("sevenn")
        spec = name
    frames = mixed_structures()
    cpu = load_model(spec)(Batch.from_ase(frames, dtype=torch.float64))
    gpu = load_model(spec, device="cuda")(Batch.from_ase(frames, dtype=torch.float64).to("cuda"))
    for key in ("energy", "forces", "stress"):
        assert gpu[key].device.type == "cuda"
        assert torch.allclose(gpu[key].cpu(), cpu[key], atol=1e-8), key
