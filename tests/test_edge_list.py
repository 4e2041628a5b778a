"""Public batched edge list (EdgeNeighborList) against ase.neighborlist.neighbor_list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list

from batchmd.data import Batch
from batchmd.dynamics.sampler import estimate_num_edges
from batchmd.models.edges import EdgeNeighborList


def _rattle(atoms, seed, scale=0.1):
    atoms = atoms.copy()
    atoms.positions += np.random.default_rng(seed).normal(0.0, scale, atoms.positions.shape)
    return atoms


def cases() -> list[Atoms]:
    si = _rattle(bulk("Si", "diamond", a=5.43), 0)                     # tiny: 2 atoms, cell < cutoff
    skew = _rattle(bulk("Cu", "fcc", a=3.61).repeat((2, 1, 2)), 1)
    skew.set_cell(skew.cell[:] + [[0, 0, 0], [1.4, 0, 0], [0.5, -0.9, 0]], scale_atoms=False)
    unwrapped = _rattle(bulk("NaCl", "rocksalt", a=5.64), 2)
    unwrapped.positions += [[7.0, -12.0, 3.0], [-20.0, 5.5, 9.0]]     # far outside the cell
    water = molecule("H2O")                                            # no cell, no pbc
    slab = _rattle(fcc111("Cu", size=(2, 2, 3), vacuum=4.0), 3)       # mixed pbc (T, T, F)
    wire = _rattle(bulk("Ar", "fcc", a=5.26, cubic=True), 4)
    wire.pbc = (False, True, False)
    tiny = Atoms("Ar2", positions=[[0, 0, 0], [1.1, 1.2, 0.9]], cell=[[2.4, 0, 0], [0.3, 2.2, 0], [0, 0.4, 2.6]],
                 pbc=True)
    big = _rattle(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3), 5)  # several bins per direction
    return [si, skew, unwrapped, water, slab, wire, tiny, big]


def ase_edges(atoms: Atoms, cutoff: float, offset: int = 0) -> list:
    i, j, S = neighbor_list("ijS", atoms, cutoff)
    return sorted(zip((i + offset).tolist(), (j + offset).tolist(), map(tuple, S.tolist())))


def our_edges(edges, system: int) -> list:
    lo, hi = int(edges.edge_ptr[system]), int(edges.edge_ptr[system + 1])
    return sorted(zip(edges.edge_index[0, lo:hi].tolist(), edges.edge_index[1, lo:hi].tolist(),
                      map(tuple, edges.unit_shifts[lo:hi].tolist())))


def half_of(full: list) -> list:
    def keep(e):
        i, j, s = e
        return i < j or (i == j and s > (0, 0, 0))
    return sorted(e for e in full if keep(e))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("half", [False, True], ids=["full", "half"])
def test_edges_equal_ase(dtype, half):
    frames, cutoff = cases(), 4.5
    batch = Batch.from_ase(frames, dtype=dtype)
    edges = EdgeNeighborList(cutoff=cutoff, skin=0.5, half=half, vectors=True).update(batch)
    ptr = batch.ptr.tolist()
    for s, atoms in enumerate(frames):
        ref = ase_edges(atoms, cutoff, ptr[s])
        assert our_edges(edges, s) == (half_of(ref) if half else ref), f"system {s}"
    # vectors/lengths agree with r_ij = x_j - x_i + n @ cell and with the autograd path
    r = edges.edge_vectors(batch.positions, batch.cell, batch.batch_idx)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(r, edges.vectors, atol=tol)
    assert torch.allclose(r.norm(dim=1), edges.lengths, atol=tol)
    assert (edges.lengths < cutoff).all()
    # grouped by centre atom, hence by system
    assert (edges.edge_index[0, 1:] >= edges.edge_index[0, :-1]).all()


def test_per_system_cutoffs():
    frames = cases()[:4]
    batch = Batch.from_ase(frames, dtype=torch.float64)
    cut = [3.0, 4.5, 2.5, 1.2]
    edges = EdgeNeighborList(cutoff=4.5).update(batch, cutoffs=torch.tensor(cut))
    ptr = batch.ptr.tolist()
    for s, atoms in enumerate(frames):
        assert our_edges(edges, s) == ase_edges(atoms, cut[s], ptr[s])
    with pytest.raises(ValueError, match="per-system cutoffs"):
        EdgeNeighborList(cutoff=4.5).update(batch, cutoffs=torch.tensor([3.0, 5.0, 1.0, 1.0]))


def test_verlet_reuse_and_moves_stay_exact():
    frames = cases()
    batch = Batch.from_ase(frames, dtype=torch.float64)
    nl = EdgeNeighborList(cutoff=4.0, skin=1.0)
    nl.update(batch)
    rng = np.random.default_rng(7)
    for step in range(4):
        move = torch.as_tensor(rng.normal(0, 0.12, (batch.num_nodes, 3)))  # some beyond skin/2 over steps
        batch.positions.add_(move)
        edges = nl.update(batch)
        rebuilt = nl.nl.rebuild.tolist()
        ptr = batch.ptr.tolist()
        for s, atoms in enumerate(frames):
            moved = atoms.copy()
            moved.positions = batch.positions[ptr[s]:ptr[s + 1]].numpy()
            assert our_edges(edges, s) == ase_edges(moved, 4.0, ptr[s]), f"step {step} system {s}"
        if step == 0:
            assert sum(rebuilt) < len(frames)  # small moves: most systems keep their rows


def test_capacity_growth_never_loses_pairs():
    frames = [_rattle(bulk("Cu", "fcc", a=3.61).repeat(2), 9)]
    batch = Batch.from_ase(frames, dtype=torch.float64)
    nl = EdgeNeighborList(cutoff=5.0, capacity=4)
    first = nl.update(batch)
    assert our_edges(first, 0) == ase_edges(frames[0], 5.0)
    assert nl.nl.capacity > 4
    # compress in place: density rises, rows overflow in a steady step and are walked exactly
    batch.positions.mul_(0.9)
    batch.cell.mul_(0.9)
    squeezed = frames[0].copy()
    squeezed.set_cell(squeezed.cell[:] * 0.9, scale_atoms=True)
    squeezed.positions = batch.positions.numpy()
    for _ in range(2):
        edges = nl.update(batch)
        assert our_edges(edges, 0) == ase_edges(squeezed, 5.0)


def test_select_systems_renumbers():
    frames = cases()[:3]
    batch = Batch.from_ase(frames, dtype=torch.float64)
    edges = EdgeNeighborList(cutoff=4.0).update(batch)
    ptr = batch.ptr.tolist()
    part = edges.select_systems(1, 3, ptr)
    assert part.edge_index.min() >= 0 and part.edge_index.max() < ptr[3] - ptr[1]
    assert part.num_edges == int(edges.edge_ptr[3] - edges.edge_ptr[1])
    assert sorted(zip(part.edge_index[0, :int(part.edge_ptr[1])].tolist(),
                      part.edge_index[1, :int(part.edge_ptr[1])].tolist(),
                      map(tuple, part.unit_shifts[:int(part.edge_ptr[1])].tolist()))) == ase_edges(frames[1], 4.0)


def test_estimate_num_edges_is_close_for_crystals():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    exact = len(neighbor_list("i", atoms, 5.0))
    guess = estimate_num_edges(len(atoms), 5.0, volume=atoms.get_volume())
    assert 0.6 * exact < guess < 1.6 * exact
    assert estimate_num_edges(3, 5.0) == 6  # a molecule: at most N (N - 1)


def test_atoms_dataset_edge_estimate_feeds_the_sampler():
    from batchmd.ase import AtomsDataset
    from batchmd.dynamics import SizeAwareSampler

    frames = [bulk("Cu", "fcc", a=3.61, cubic=True), molecule("H2O"), bulk("Si", "diamond", a=5.43)]
    ds = AtomsDataset(frames, edge_cutoff=5.0)
    counts = [ds.get_metadata(i)[1] for i in range(3)]
    assert counts[1] == 6 and min(counts) > 0
    sampler = SizeAwareSampler(ds, max_atoms=100, max_edges=counts[0] + counts[1])
    batch = sampler.build_initial_batch()
    assert batch.num_graphs == 2  # Si no longer fits the edge budget
    with pytest.raises(ValueError, match="reports 0 edges"):
        SizeAwareSampler(AtomsDataset(frames), max_atoms=100, max_edges=1000)
