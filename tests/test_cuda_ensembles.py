"""Nosé-Hoover chain and MTK NPT on a GPU: against ASE, against the CPU, and CUDA-graph replays.

Skipped where torch or Warp sees no CUDA device. On a GPU machine:
``python -m pytest tests/test_cuda_ensembles.py -v`` (float64; tolerances stated per test).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.md import nose_hoover_chain as ase_nhc

from batchmd.dynamics import FusedStage, IsotropicMTKNPT, MTKNPT, NoseHooverChainNVT
from md_argon import argon, ase_lj, batchmd_lj, system_rows, to_batch


def _cuda_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import warp as wp

        wp.init()
        return wp.get_cuda_device_count() > 0
    except Exception:  # pragma: no cover - depends on the machine
        return False


pytestmark = pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device (torch and Warp)")

CASES = {
    "nhc": (lambda: NoseHooverChainNVT(batchmd_lj(), dt=2.0, temperature=80.0, tdamp=30.0, tchain=4, tloop=2),
            lambda a: ase_nhc.NoseHooverChainNVT(a, timestep=2.0 * units.fs, temperature_K=80.0, tdamp=30.0 * units.fs,
                                                 tchain=4, tloop=2)),
    "iso": (lambda: IsotropicMTKNPT(batchmd_lj(), dt=2.0, temperature=80.0, pressure=0.3 * units.GPa, tdamp=30.0,
                                    pdamp=120.0),
            lambda a: ase_nhc.IsotropicMTKNPT(a, timestep=2.0 * units.fs, temperature_K=80.0,
                                              pressure_au=0.3 * units.GPa, tdamp=30.0 * units.fs,
                                              pdamp=120.0 * units.fs)),
    "full": (lambda: MTKNPT(batchmd_lj(), dt=2.0, temperature=80.0, pressure=0.3 * units.GPa, tdamp=30.0, pdamp=120.0),
             lambda a: ase_nhc.MTKNPT(a, timestep=2.0 * units.fs, temperature_K=80.0, pressure_au=0.3 * units.GPa,
                                      tdamp=30.0 * units.fs, pdamp=120.0 * units.fs)),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_ensembles_match_ase_on_cuda(kind):
    """40 steps of two strained triclinic small cells on the GPU: positions and cells within 1e-8 Å of ASE."""
    ours, theirs = CASES[kind]
    systems = [argon("cubic", 1, 60.0), argon("primitive", 2, 40.0)]
    batch = to_batch(systems).to("cuda")
    md = ours()
    refs = []
    for atoms in systems:
        atoms = atoms.copy()
        atoms.calc = ase_lj()
        refs.append(theirs(atoms))
    worst_x = worst_c = 0.0
    for _ in range(40):
        md.step(batch)
        x, cell = batch.positions.cpu().numpy(), batch.cell.cpu().numpy()
        for k, dyn in enumerate(refs):
            dyn.run(1)
            worst_x = max(worst_x, float(np.abs(x[system_rows(batch, k)] - dyn.atoms.positions).max()))
            worst_c = max(worst_c, float(np.abs(cell[k] - dyn.atoms.cell[:]).max()))
    print(f"{kind} on CUDA vs ASE: max |dx| {worst_x:.1e} Å, max |dcell| {worst_c:.1e} Å")
    assert worst_x < 1e-8 and worst_c < 1e-8


@pytest.mark.parametrize("kind", ["nhc", "full"])
def test_cuda_graph_replay_equals_eager(kind):
    """Steps replayed as CUDA graphs (cell changed in place by the barostat) are bitwise the eager steps."""
    systems = [argon("cubic", 3, 60.0), argon("dense", 4, 60.0)]
    results = []
    for graph in (False, True):
        batch = to_batch(systems).to("cuda")
        loop = FusedStage([CASES[kind][0]()], cuda_graph=graph, refill_frequency=10)
        out = loop.run(batch, n_steps=50)
        results.append((out.positions.clone(), out.cell.clone(), out.velocities.clone()))
    for eager, replayed in zip(*results):
        assert torch.equal(eager, replayed)
