"""Batched neighbor list: brute-force pair sets, skin/rebuild policy, refills, overflow."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ

from batchmd.data import Batch
from batchmd.models.lj import LennardJones
from batchmd.models.neighbors import NeighborList, unpack_images

CUTOFF, SKIN = 5.0, 1.0


def _rattle(atoms, seed, scale=0.1):
    atoms = atoms.copy()
    atoms.positions += np.random.default_rng(seed).normal(0.0, scale, atoms.positions.shape)
    return atoms


def systems() -> list[Atoms]:
    fcc = bulk("Ar", "fcc", a=5.26, cubic=True)
    tri = _rattle(bulk("Ar", "fcc", a=5.26).repeat((2, 3, 2)), 1)
    tri.set_cell(tri.cell[:] + [[0, 0, 0], [0.6, 0, 0], [0.2, -0.5, 0]], scale_atoms=False)
    slab = _rattle(fcc.repeat((3, 2, 2)), 2)
    slab.pbc = (True, False, True)
    cluster = Atoms("Ar20", positions=np.random.default_rng(3).uniform(-6.0, 6.0, (20, 3)))
    tiny = Atoms("Ar2", positions=[[0, 0, 0], [1.1, 1.2, 0.9]], cell=[[2.4, 0, 0], [0.3, 2.2, 0], [0, 0.4, 2.6]],
                 pbc=True)
    big = _rattle(fcc.repeat((4, 4, 4)), 4)  # several bins per direction
    return [_rattle(fcc.repeat(2), 0), tri, slab, cluster, tiny, big]


def brute_force_pairs(atoms: Atoms, r: float) -> set:
    """All (i, j, shift) with |x_j + shift - x_i| < r, shift a lattice translation (Å, rounded)."""
    pos, cell, pbc = atoms.positions, np.asarray(atoms.cell[:]), atoms.pbc
    ranges = []
    for d in range(3):
        if pbc[d]:
            width = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[(d + 1) % 3], cell[(d + 2) % 3]))
            span = np.ptp(pos @ np.linalg.inv(cell)[:, d]) if len(pos) else 0.0
            m = int(np.ceil(r / width + span)) + 1
            ranges.append(range(-m, m + 1))
        else:
            ranges.append(range(0, 1))
    pairs = set()
    for n in itertools.product(*ranges):
        shift = np.asarray(n, dtype=float) @ cell
        d = pos[None, :, :] + shift - pos[:, None, :]
        close = np.argwhere((d**2).sum(-1) < r * r)
        for i, j in close:
            if i == j and not any(n):
                continue
            pairs.add((int(i), int(j), *np.round(shift, 6)))
    return pairs


def listed_pairs(batch: Batch, system: int) -> set:
    start, stop = batch.ptr[system].item(), batch.ptr[system + 1].item()
    nbr, count = batch["_nl_neighbors"], batch["_nl_count"]
    shifts = unpack_images(batch["_nl_images"]).double().numpy() @ batch.cell[system].double().numpy()
    pairs = set()
    for i in range(start, stop):
        n = int(count[i])
        assert n <= nbr.shape[1]
        for k in range(n):
            j = int(nbr[i, k])
            if j >= 0:  # same cell, no shift
                pairs.add((i - start, j, 0.0, 0.0, 0.0))
            else:  # periodic image: -1 - j with its packed lattice image
                pairs.add((i - start, -1 - j, *np.round(shifts[i, k], 6)))
    return pairs


def full_pairs(pairs: set) -> set:
    """Both orientations of every pair (a half list becomes a full one)."""
    return pairs | {(j, i, *(0.0 - np.asarray(s))) for i, j, *s in pairs}


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_brute_force(dtype, half):
    atoms_list = systems()
    batch = Batch.from_ase(atoms_list, dtype=dtype)
    nl = NeighborList(CUTOFF, skin=SKIN, half=half)
    nl.update(batch)
    for s, atoms in enumerate(atoms_list):
        expected = brute_force_pairs(atoms, CUTOFF + SKIN)
        got = listed_pairs(batch, s)
        if half:
            assert len(full_pairs(got)) == 2 * len(got)  # no pair listed twice
            got = full_pairs(got)
        if dtype == torch.float32:  # shifts rounded at 1e-6 Å differ in float32; compare (i, j) multisets
            assert sorted(p[:2] for p in got) == sorted(p[:2] for p in expected)
        else:
            assert got == expected, f"system {s}: missing {expected - got}, extra {got - expected}"


def test_skin_rebuild_only_when_needed():
    atoms_list = systems()
    batch = Batch.from_ase(atoms_list, dtype=torch.float64)
    nl = NeighborList(CUTOFF, skin=SKIN)
    nl.update(batch)
    assert nl.rebuild.tolist() == [1] * len(atoms_list)
    neighbors_before = batch["_nl_neighbors"].clone()

    # small moves (< skin/2): nothing is rebuilt
    gen = torch.Generator().manual_seed(0)
    step = torch.randn(batch.positions.shape, generator=gen, dtype=torch.float64)
    step *= 0.2 / step.norm(dim=1, keepdim=True)
    batch.positions.add_(step)
    nl.update(batch)
    assert nl.rebuild.tolist() == [0] * len(atoms_list)
    assert torch.equal(batch["_nl_neighbors"], neighbors_before)

    # one atom of system 2 moves by more than skin/2: only system 2 is rebuilt
    atom = batch.ptr[2].item() + 3
    batch.positions[atom, 0] += 0.9  # |0.2 step + 0.9| > skin/2
    nl.update(batch)
    assert nl.rebuild.tolist() == [0, 0, 1, 0, 0, 0]

    # a small in-place cell change that fits the skin keeps the rows (strain-aware test:
    # every atom within (r_list (1 - |E|) - cutoff) / 2 of its affinely moved reference) ...
    batch.cell[4] *= 1.01
    nl.update(batch)
    assert nl.rebuild.tolist() == [0] * len(atoms_list)
    for s, atoms in enumerate(batch.to_ase()):
        got = {p[:2] for p in full_pairs(listed_pairs(batch, s))}
        assert {p[:2] for p in brute_force_pairs(atoms, CUTOFF)} <= got

    # ... a larger one rebuilds that system
    batch.cell[4] *= 1.08
    nl.update(batch)
    assert nl.rebuild.tolist() == [0, 0, 0, 0, 1, 0]

    # every list still equals a brute-force list within cutoff + skin - (max displacement) .. cutoff
    for s, atoms in enumerate(batch.to_ase()):
        got = {p[:2] for p in full_pairs(listed_pairs(batch, s))}
        assert {p[:2] for p in brute_force_pairs(atoms, CUTOFF)} <= got


def test_refilled_slot_is_rebuilt_alone():
    atoms_list = systems()
    batch = Batch.from_ase(atoms_list, dtype=torch.float64)
    lj = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=CUTOFF, skin=SKIN)
    lj(batch)
    incoming = Batch.from_ase([_rattle(bulk("Ar", "fcc", a=5.3, cubic=True).repeat((2, 2, 3)), 9)],
                              dtype=torch.float64)
    refilled = batch.replace_slots(torch.tensor([1]), incoming)
    assert torch.isnan(refilled["_nl_ref_positions"][refilled.ptr[1]:refilled.ptr[2]]).all()
    out = lj(refilled)
    assert lj.neighbor_list.rebuild.tolist() == [0, 1, 0, 0, 0, 0]
    fresh = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=CUTOFF, skin=SKIN)(
        Batch.from_ase(refilled.to_ase(), dtype=torch.float64))
    assert torch.equal(out["forces"], fresh["forces"])
    assert torch.equal(out["energy"], fresh["energy"])


def _ase(atoms, cutoff):
    atoms = atoms.copy()
    atoms.calc = AseLJ(sigma=3.405, epsilon=0.0104, rc=cutoff, smooth=False)
    return atoms.get_potential_energy(), atoms.get_forces()


def test_initial_overflow_grows_capacity_at_structure_change():
    atoms = _rattle(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3), 5)
    batch = Batch.from_ase([atoms], dtype=torch.float64)
    lj = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, skin=1.0, capacity=2)
    out = lj(batch)
    assert lj.neighbor_list.capacity > 2
    assert 0 <= batch["_nl_count"].min() and batch["_nl_count"].max() <= lj.neighbor_list.capacity
    energy, forces = _ase(atoms, 8.5125)
    np.testing.assert_allclose(out["energy"].item(), energy, rtol=1e-10)
    np.testing.assert_allclose(out["forces"].numpy(), forces, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("half", [False, True], ids=["full", "half"])
def test_overflow_in_steady_state_falls_back_then_grows(half):
    """Compressing a cell in place overflows K: forces stay exact (bin walk), then K grows."""
    base = _rattle(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3), 6)
    batches = [Batch.from_ase([base], dtype=torch.float64) for _ in range(2)]
    small = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, skin=1.0, half_list=half)
    large = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, skin=1.0, capacity=1000, half_list=half)
    small(batches[0])
    large(batches[1])
    capacity = small.neighbor_list.capacity
    for b in batches:  # in place: same structure, no host work; the device sees the cell change
        b.cell.mul_(0.8)
        b.positions.mul_(0.8)
    out_small, out_large = small(batches[0]), large(batches[1])
    assert small.neighbor_list.capacity == capacity
    assert (batches[0]["_nl_count"] < 0).any()  # overflowed rows are marked, not silently truncated
    # the bin walk visits the build's candidates in the build's order: bitwise equal
    assert torch.equal(out_small["forces"], out_large["forces"])
    assert torch.equal(out_small["energy"], out_large["energy"])
    compressed = base.copy()
    compressed.set_cell(compressed.cell[:] * 0.8, scale_atoms=True)
    energy, forces = _ase(compressed, 8.5125)
    np.testing.assert_allclose(out_small["energy"].item(), energy, rtol=1e-10)
    np.testing.assert_allclose(out_small["forces"].numpy(), forces, rtol=1e-10, atol=1e-12)
    out_again = small(batches[0])  # deferred check: grows K and rebuilds
    assert small.neighbor_list.capacity > capacity
    counts = batches[0]["_nl_count"]
    assert 0 <= counts.min() and counts.max() <= small.neighbor_list.capacity
    torch.testing.assert_close(out_again["forces"], out_small["forces"], rtol=1e-12, atol=1e-14)


def test_invalid_neighbor_list_parameters():
    for kw in (dict(cutoff=0.0), dict(cutoff=-2.0), dict(cutoff=5.0, skin=-1.0), dict(cutoff=5.0, capacity=0)):
        with pytest.raises(ValueError):
            NeighborList(**kw)


def test_overflowed_rows_survive_padding_to_a_wider_batch():
    """A truncated row padded to a wider K by a slot operation is rebuilt, never trusted."""
    base = _rattle(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3), 8)
    dense = Batch.from_ase([base], dtype=torch.float64)
    small = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, skin=1.0)
    small(dense)
    dense.cell.mul_(0.8)
    dense.positions.mul_(0.8)
    small(dense)
    assert (dense["_nl_count"] < 0).any()
    wide = Batch.from_ase([structures_small()], dtype=torch.float64)
    LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, skin=1.0, capacity=2000)(wide)
    merged = wide.append(dense)
    assert merged["_nl_neighbors"].shape[1] == 2000
    out = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, skin=1.0)(merged)
    compressed = base.copy()
    compressed.set_cell(compressed.cell[:] * 0.8, scale_atoms=True)
    energy, forces = _ase(compressed, 8.5125)
    start = merged.ptr[1].item()
    np.testing.assert_allclose(out["energy"][1].item(), energy, rtol=1e-10)
    np.testing.assert_allclose(out["forces"][start:].numpy(), forces, rtol=1e-10, atol=1e-12)


def structures_small() -> Atoms:
    return _rattle(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2), 10)


def test_image_packing_round_trip():
    """pack_image (device) and unpack_images (host) agree over the whole range |n| <= 511."""
    import warp as wp

    from batchmd.kernels import neighbor_list as nlk
    from batchmd.runtime import init_warp

    @wp.kernel
    def pack(k: wp.array(dtype=wp.vec3i), packed: wp.array(dtype=wp.int32), back: wp.array(dtype=wp.vec3i)):
        t = wp.tid()
        packed[t] = nlk.pack_image(k[t])
        back[t] = nlk.unpack_image(packed[t])

    init_warp()
    values = torch.tensor([-511, -510, -2, -1, 0, 1, 2, 300, 510, 511], dtype=torch.int32)
    k = torch.stack(torch.meshgrid(values, values, values, indexing="ij"), dim=-1).reshape(-1, 3).contiguous()
    packed = torch.zeros(len(k), dtype=torch.int32)
    back = torch.zeros_like(k)
    wp.launch(pack, dim=len(k), inputs=[wp.from_torch(k, dtype=wp.vec3i), wp.from_torch(packed),
                                        wp.from_torch(back, dtype=wp.vec3i)], device="cpu")
    assert (packed >= 0).all()
    assert torch.equal(back, k)
    assert torch.equal(unpack_images(packed), k)


@pytest.mark.parametrize("half", [False, True], ids=["full", "half"])
def test_image_beyond_packing_limit_uses_exact_bin_walk(half):
    """An unwrapped atom 600 cells away cannot be packed: its rows are marked and walked exactly."""
    atoms = _rattle(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2), 11)
    far = atoms.copy()
    far.positions[3] += 600 * far.cell[0]
    out = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, skin=1.0, half_list=half)(
        batch := Batch.from_ase([far], dtype=torch.float64))
    assert (batch["_nl_count"] < 0).any()
    energy, forces = _ase(atoms, 8.5125)
    np.testing.assert_allclose(out["energy"].item(), energy, rtol=1e-10)
    np.testing.assert_allclose(out["forces"].numpy(), forces, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("capacity", [None, 4], ids=["fits", "overflowing"])
def test_refills_reuse_scratch_and_match_fresh_models(capacity):
    """Refills that shrink or keep the batch reuse the scratch buffers and their Warp views;
    stale scratch beyond or inside the live range never changes a result (bitwise vs fresh)."""
    pool = [_rattle(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(r), 20 + k)
            for k, r in enumerate([(2, 2, 2), (3, 2, 2), (2, 3, 3), (3, 3, 3), (2, 2, 3), (1, 2, 2)])]
    pool += systems()
    lj = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=CUTOFF, skin=SKIN, capacity=capacity)
    live = Batch.from_ase(pool[:8], dtype=torch.float64)
    lj(live)
    nl = lj.neighbor_list
    grown, reused = dict(nl._reserved), 0
    for it in range(6):
        keep = torch.ones(live.num_graphs, dtype=torch.bool)
        keep[[it % live.num_graphs, (3 * it + 1) % live.num_graphs]] = False
        newcomers = [pool[(8 + it + m) % len(pool)] for m in range(1 + it % 2)]
        views = dict(nl._w)
        live = live.select_and_append(keep, Batch.from_ase(newcomers, dtype=torch.float64))
        if it == 3:  # compress a periodic survivor in place: its rows overflow and take the bin walk
            lj(live)
            # one bin per direction before and after, as a fresh model would choose: same order
            single = live.pbc.all(dim=1) & (live["_nl_nbins"] == 1).all(dim=1) & (live.ptr.diff() >= 32)
            slot = int(torch.nonzero(single)[0])
            live.cell[slot].mul_(0.6)
            live.positions[live.ptr[slot]:live.ptr[slot + 1]].mul_(0.6)
        out = lj(live)
        if it == 3:
            assert (live["_nl_count"] < 0).any()
        if all(nl._reserved[c] == grown[c] for c in ("system", "atom", "bin")):
            assert all(nl._w[k] is views[k] for k in views)  # no allocation, same Warp views
            reused += 1
        grown = dict(nl._reserved)
        assert nl.rebuild.shape == (live.num_graphs,)
        fresh = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=CUTOFF, skin=SKIN, capacity=capacity)(
            Batch.from_ase(live.to_ase(), dtype=torch.float64))
        assert torch.equal(out["forces"], fresh["forces"])
        assert torch.equal(out["energy"], fresh["energy"])
        assert torch.equal(out["stress"], fresh["stress"])
    assert reused >= 3


@pytest.mark.parametrize("half", [False, True])
def test_parallel_bin_tables_equal_the_serial_sort(half):
    """The GPU path's five bin kernels (forced here on the CPU) give the serial sort's tables and lists."""
    atoms_list = systems()
    lists = {}
    for parallel in (False, True):
        batch = Batch.from_ase(atoms_list, dtype=torch.float64)
        nl = NeighborList(CUTOFF, skin=SKIN, half=half)
        nl.parallel_bins = parallel
        nl.update(batch)
        batch.positions += 0.4 * torch.sin(torch.arange(batch.num_nodes * 3, dtype=torch.float64)).reshape(-1, 3)
        nl.update(batch)  # a second build after some atoms moved beyond the skin
        n, b = batch.num_nodes, nl._total_bins
        lists[parallel] = [batch[f].clone() for f in ("_nl_neighbors", "_nl_images", "_nl_count")] + [
            nl._buf["bin_atoms"][:n].clone(), nl._buf["bin_start"][:b].clone(), nl._buf["bin_count"][:b].clone()]
    assert int(nl.rebuild.sum()) > 0
    for serial, parallel in zip(lists[False], lists[True]):
        assert torch.equal(serial, parallel)


def test_grow_if_overflowed_for_replayed_builds():
    """What the loop calls between CUDA-graph chunks: an overflow is found and K grows (new fields)."""
    base = _rattle(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3), 6)
    batch = Batch.from_ase([base], dtype=torch.float64)
    lj = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, skin=1.0)
    lj(batch)
    nl, capacity = lj.neighbor_list, lj.neighbor_list.capacity
    assert not nl.grow_if_overflowed(batch)
    batch.cell.mul_(0.8)
    batch.positions.mul_(0.8)
    nl._build(batch, nl.views(batch), force=False, check_overflow=False)  # a build as a replay runs it
    neighbors = batch["_nl_neighbors"]
    assert nl.grow_if_overflowed(batch)
    assert nl.capacity > capacity and batch["_nl_neighbors"] is not neighbors
    out = lj(batch)  # rebuilt into the grown list: complete rows, ASE's forces
    assert 0 <= batch["_nl_count"].min()
    compressed = base.copy()
    compressed.set_cell(compressed.cell[:] * 0.8, scale_atoms=True)
    np.testing.assert_allclose(out["forces"].numpy(), _ase(compressed, 8.5125)[1], rtol=1e-10, atol=1e-12)
