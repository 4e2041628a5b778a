"""
Processing large datasets with inflight batching
================================================

The seed tutorial, ported to batchmd (only the imports differ).

A fixed-size live batch occupies the device at all times. Whenever a system graduates
(converges or exhausts its step budget), it is evicted and a new sample from the dataset
takes its slot. The :class:`~batchmd.dynamics.SizeAwareSampler` picks replacements that
fit the free capacity.

Lifecycle of a system::

    Dataset -> SizeAwareSampler.request_replacement()
      -> live batch, stage 0 (FIRE relaxation)    converges
      -> live batch, stage 1 (NVT equilibration)  n_steps exhausted
      -> ConvergedSnapshotHook -> HostMemory sink
      -> slot freed -> next sample loaded from the dataset

Each sample receives a monotonically increasing ``system_id`` stamped by the sampler.
This example uses :class:`~batchmd.models.demo.DemoModelWrapper` (a small neural
network), so no neighbor list is needed; batchmd models that need one (Lennard-Jones)
maintain it themselves.
"""

import logging

import torch

from batchmd.data import AtomicData
from batchmd.dynamics import FIRE, NVTLangevin, SizeAwareSampler
from batchmd.dynamics import ConvergenceHook, FusedStage
from batchmd.dynamics.hooks import ConvergedSnapshotHook
from batchmd.dynamics.sinks import HostMemory
from batchmd.models.demo import DemoModelWrapper

logging.basicConfig(level=logging.INFO)


# %%
# The dataset interface
# ---------------------
# ``__len__``, ``__getitem__(idx) -> (AtomicData, dict)`` and
# ``get_metadata(idx) -> (num_atoms, num_edges)`` (cheap: no loading).


class MixedSizeDataset:
    """A dataset of random molecular systems with ``min_atoms``..``max_atoms`` atoms."""

    def __init__(self, n_samples: int, min_atoms: int = 4, max_atoms: int = 6, seed: int = 0) -> None:
        self.n_samples = n_samples
        self.min_atoms = min_atoms
        self.max_atoms = max_atoms
        self.base_seed = seed
        span = max_atoms - min_atoms + 1
        self._atom_counts = [min_atoms + (i % span) for i in range(n_samples)]

    def __len__(self) -> int:
        return self.n_samples

    def get_metadata(self, idx: int) -> tuple[int, int]:
        """Return ``(num_atoms, num_edges)`` without loading the sample."""
        return self._atom_counts[idx], 0

    def __getitem__(self, idx: int) -> tuple[AtomicData, dict]:
        """Load one sample."""
        n = self._atom_counts[idx]
        g = torch.Generator()
        g.manual_seed(self.base_seed + idx)
        data = AtomicData(
            positions=torch.randn(n, 3, generator=g),
            atomic_numbers=torch.randint(1, 10, (n,), dtype=torch.long, generator=g),
            atomic_masses=torch.ones(n),
            forces=torch.zeros(n, 3),
            energies=torch.zeros(1, 1),
        )
        data.add_node_property("velocities", torch.zeros(n, 3))
        return data, {}


# %%
# SizeAwareSampler
# ----------------
# ``max_atoms=24`` allows 4-6 systems of 4-6 atoms; ``max_batch_size=6`` caps the
# system count; ``max_edges=None`` disables the edge constraint.

dataset = MixedSizeDataset(n_samples=30, min_atoms=4, max_atoms=6, seed=200)

sampler = SizeAwareSampler(
    dataset,
    max_atoms=24,
    max_edges=None,
    max_batch_size=6,
)
logging.info(
    "Sampler created: %d samples, bins: %s",
    len(sampler),
    sorted(sampler._bins.keys()),
)

# %%
# Building the pipeline
# ---------------------
# Stage 0: FIRE to fmax <= 0.5 eV/Å; stage 1: 20 steps of NVT Langevin at 300 K.

torch.manual_seed(42)
model = DemoModelWrapper()
model.eval()

results_sink = HostMemory(capacity=30)
converged_hook = ConvergedSnapshotHook(sink=results_sink)

fire_stage = FIRE(
    model=model,
    dt=0.1,
    convergence_hook=ConvergenceHook.from_forces(threshold=0.5),
)
nvt_stage = NVTLangevin(
    model=model,
    dt=0.5,
    temperature=300.0,
    friction=0.1,
    random_seed=11,
    n_steps=20,
    hooks=[converged_hook],
)

fused = FusedStage(
    sub_stages=[(0, fire_stage), (1, nvt_stage)],
    sampler=sampler,
    sinks=[results_sink],
    refill_frequency=5,
)

# %%
# Running in inflight mode (batch=None)
# -------------------------------------

logging.info("Starting inflight batching run...")
result = fused.run(batch=None, n_steps=500)

if result is None:
    logging.info("All %d systems processed — sampler exhausted.", dataset.n_samples)
else:
    logging.info("Step budget exhausted with %d systems still active.", result.num_graphs)

# %%
# Inspecting results
# ------------------

n_collected = len(results_sink)
logging.info("Results sink contains %d systems.", n_collected)

if n_collected > 0:
    results_batch = results_sink.drain()
    system_ids = results_batch.system_id.squeeze(-1).tolist()
    logging.info("Collected system_ids (first 10): %s", system_ids[:10])
    logging.info(
        "Results batch: num_graphs=%d, num_nodes=%d",
        results_batch.num_graphs,
        results_batch.num_nodes,
    )
else:
    logging.info("No results collected (step budget may have been too small).")
