"""The steady-state step between refills: no host synchronisation and no allocation.

Counted, not timed: a step that neither reads device values on the host nor allocates
tensors could be captured in a CUDA graph. Host reads are counted by wrapping the torch
and Warp methods that copy device data to the host; allocations by torch's profiler
(``profile_memory=True`` records every allocator call, on CPU as on CUDA).
"""

from __future__ import annotations

import contextlib
import traceback

import pytest
import torch
import warp as wp
from ase.build import bulk
from torch.profiler import ProfilerActivity, profile

from batchmd.data import Batch
from batchmd.dynamics import FIRE, MTKNPT, NVE, ConvergenceHook, CRescaleNPT, IsotropicMTKNPT, NoseHooverChainNVT, NVTLangevin
from batchmd.models.lj import LennardJones

_HOST_READS = [
    (torch.Tensor, "item"),
    (torch.Tensor, "tolist"),
    (torch.Tensor, "cpu"),
    (torch.Tensor, "numpy"),
    (torch.Tensor, "__bool__"),
    (torch.Tensor, "__int__"),
    (torch.Tensor, "__float__"),
    (wp.array, "numpy"),
]


@contextlib.contextmanager
def count_host_reads():
    """Count calls that move device data to the host (wrapped for the duration)."""
    calls = []
    saved = []
    for owner, name in _HOST_READS:
        original = getattr(owner, name)
        saved.append((owner, name, original))

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            frames = [f.name for f in traceback.extract_stack(limit=8)]
            # The neighbor list's deferred overflow check reads a host-side copy of one int
            # that was made asynchronously after the last build (pinned memory + CUDA event
            # on GPUs: it never waits for the device); on CPU it is a plain memory read.
            if "_overflowed" not in frames:
                calls.append(_name)
            return _original(self, *args, **kwargs)

        setattr(owner, name, wrapper)
    try:
        yield calls
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _argon_batch():
    frames = []
    for k, reps in enumerate([(2, 2, 2), (2, 2, 3), (3, 3, 3)]):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(reps)
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    batch = Batch.from_ase(frames, dtype=torch.float32)
    batch.set_field("system_id", torch.arange(3, dtype=torch.int64).reshape(-1, 1), "system")
    return batch


def _methods(model):
    return {
        "FIRE": FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-9)),
        "NVTLangevin": NVTLangevin(model, dt=2.0, temperature=80.0, friction=0.01, random_seed=1),
        "NVE": NVE(model, dt=2.0),
        "NoseHooverChainNVT": NoseHooverChainNVT(model, dt=2.0, temperature=80.0, tdamp=100.0, random_seed=1),
        "IsotropicMTKNPT": IsotropicMTKNPT(model, dt=2.0, temperature=80.0, pressure=1e-3, tdamp=100.0, pdamp=500.0,
                                           random_seed=1),
        "MTKNPT": MTKNPT(model, dt=2.0, temperature=80.0, pressure=1e-3, tdamp=100.0, pdamp=500.0, random_seed=1),
        "CRescaleNPT": CRescaleNPT(model, dt=2.0, temperature=80.0, pressure=1e-3, compressibility=50.0, taup=500.0,
                                   tdamp=100.0, random_seed=1),
        # (FIRE without a criterion: its step budget is the normal end of the stage)
        "FIRE+MTKNPT+NoseHooverChainNVT": FIRE(model, n_steps=2)
        + MTKNPT(model, dt=2.0, temperature=80.0, pressure=1e-3, tdamp=100.0, pdamp=500.0, random_seed=1, n_steps=3)
        + NoseHooverChainNVT(model, dt=2.0, temperature=80.0, tdamp=100.0, random_seed=1),
        # a pipeline: the entry of stage 1 (state reset and velocity policy) runs every step
        "FIRE+NVTLangevin": FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-9))
        + NVTLangevin(model, dt=2.0, temperature=80.0, friction=0.01, random_seed=1),
    }


@pytest.mark.parametrize("method", ["FIRE", "NVTLangevin", "NVE", "NoseHooverChainNVT", "IsotropicMTKNPT", "MTKNPT",
                                    "CRescaleNPT"])
def test_steady_state_step_has_no_host_reads_and_no_allocations(method):
    model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
    dynamics = _methods(model)[method]
    batch = _argon_batch()
    for _ in range(4):  # prime, first build, recorded launches
        dynamics.step(batch)
    with count_host_reads() as reads:
        for _ in range(5):
            dynamics.step(batch)
    assert reads == [], f"{method}: host reads in the steady-state step: {reads}"
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(5):
            dynamics.step(batch)
    allocations = [e.name for e in prof.events() if e.cpu_memory_usage > 0]
    assert allocations == [], f"{method}: allocations in the steady-state step: {allocations}"


@pytest.mark.parametrize("pipeline", ["FIRE+NVTLangevin", "FIRE+MTKNPT+NoseHooverChainNVT"])
def test_pipeline_step_with_stage_entry_has_no_host_reads(pipeline):
    """FIRE + MD stages: the per-step entry of later stages (state reset, velocity policy kernel) never syncs.

    (It allocates its parameter tensors, as stage entry always has; single stages do not.)
    """
    model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
    dynamics = _methods(model)[pipeline]
    batch = _argon_batch()
    for _ in range(4):
        dynamics.step(batch)
    with count_host_reads() as reads:
        for _ in range(5):
            dynamics.step(batch)
    assert reads == [], f"host reads in the steady-state pipeline step: {reads}"
    if pipeline == "FIRE+MTKNPT+NoseHooverChainNVT":  # every system entered the NPT, then the NVT stage
        assert int(batch["status"].abs().sum()) == 0 and int(batch["stage"].min()) == dynamics.num_stages - 1
