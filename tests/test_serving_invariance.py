"""Issue 12, kind 3: a sample's trajectory does not depend on how it is served.

Every random stream (Langevin noise, the velocity policy's Maxwell-Boltzmann draw) is keyed
on the sample's identity (``system_id`` = its index in the input, or the campaign's global
index), never on its slot or serving rank. Each knob a user can turn -- ``max_atoms``,
``max_batch_size``, the order and content of the other frames, the refill frequency, in-place
refills, the rank count -- must leave every sample's result bitwise unchanged.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from ase import Atoms

from batchmd.ase import run_frames
from batchmd.dynamics import NVE, FIRE, ConvergenceHook, NVTLangevin
from batchmd.models.lj import LennardJones

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SIGMA, EPS, RC = 3.405, 0.0104, 8.5125


def clusters(n=8, seed=0):
    """Argon clusters of 4..9 atoms (no overlaps)."""
    rng = np.random.default_rng(seed)
    frames = []
    while len(frames) < n:
        k = int(rng.integers(4, 10))
        atoms = Atoms(f"Ar{k}", positions=rng.uniform(0.0, 1.0, (k, 3)) * (k ** (1 / 3)) * 3.9)
        d = atoms.get_all_distances()[np.triu_indices(k, 1)]
        if d.min() > 3.0:
            frames.append(atoms)
    return frames


def pipeline():
    model = LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC)
    return [FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=60),
            NVTLangevin(model, dt=4.0, temperature=40.0, friction=0.05, random_seed=5, n_steps=15),
            NVE(model, dt=4.0, n_steps=5)]


def run(frames, **kw):
    return run_frames(frames, pipeline(), **kw).frames


@pytest.fixture(scope="module")
def reference():
    frames = clusters()
    return frames, run(frames, max_atoms=24, refill_frequency=4, refill_in_place=False)


def same(a, b):
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.get_momenta(), b.get_momenta())
    assert a.info["n_steps"] == b.info["n_steps"] and a.info["status"] == b.info["status"]


@pytest.mark.parametrize("knobs", [
    dict(max_atoms=9, refill_frequency=4, refill_in_place=False),   # one system at a time
    dict(max_atoms=200, refill_frequency=4, refill_in_place=False),  # everything at once
    dict(max_atoms=24, max_batch_size=2, refill_frequency=4, refill_in_place=False),
    dict(max_atoms=24, refill_frequency=1, refill_in_place=False),
    dict(max_atoms=24, refill_frequency=7, refill_in_place=True),
])
def test_budgets_refills_and_in_place_refills_change_nothing(reference, knobs):
    frames, expected = reference
    got = run(frames, **knobs)
    assert [a.info["status"] for a in got] == ["completed"] * len(frames)  # the last stage is MD
    for a, b in zip(got, expected):
        same(a, b)


def test_order_and_content_of_the_other_frames_change_nothing(reference):
    frames, expected = reference
    # Other frames replaced by different structures: frame 3 keeps its index, so its identity.
    others = clusters(seed=9)
    mixed = [others[k] if k != 3 else frames[3] for k in range(len(frames))]
    same(run(mixed, max_atoms=24, refill_frequency=4)[3], expected[3])
    # Reordered: identities pinned by info["system_id"] (as results fed back carry them).
    pinned = []
    for k, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.info["system_id"] = k
        pinned.append(atoms)
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    got = run([pinned[k] for k in order], max_atoms=17, refill_frequency=3)
    for position, k in enumerate(order):
        same(got[position], expected[k])


def test_rank_count_changes_nothing(tmp_path):
    """The campaign path: one process vs two ranks over the shards give the same NVT results."""
    from batchmd.campaign import read_results, run_campaign
    from batchmd.campaign.distributed import RankContext
    from test_campaign_data import lj_config, make_dataset

    make_dataset(tmp_path, n=10, max_rows=3)
    stages = [{"method": "fire", "fmax": 0.05, "max_steps": 60},
              {"method": "nvt", "dt": 4.0, "temperature": 40.0, "friction": 0.05, "steps": 10, "seed": 3}]
    run_campaign(lj_config(tmp_path, output="one", stages=stages), context=RankContext(device="cpu"))
    for rank in (0, 1):  # the two ranks of a 2-process campaign, one after the other
        run_campaign(lj_config(tmp_path, output="two", stages=stages),
                     context=RankContext(rank=rank, world_size=2, device="cpu"))
    one = read_results(os.path.join(tmp_path, "one"), require_complete=True)
    two = read_results(os.path.join(tmp_path, "two"), require_complete=True)
    assert one.system_id.reshape(-1).tolist() == two.system_id.reshape(-1).tolist() == list(range(10))
    assert torch.equal(one.positions, two.positions)
    assert torch.equal(one.velocities, two.velocities)
