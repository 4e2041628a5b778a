"""Campaign data plane: durable files, shard format, ingest report, manifest, dataset, ownership.

Helpers here (``argon_frames``, ``make_dataset``, ``lj_config``) are shared by the other
``test_campaign_*`` files.
"""

from __future__ import annotations

import json
import os

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

from batchmd.campaign import CorruptFileError, Manifest, ShardedDataset, write_dataset
from batchmd.campaign.config import CampaignConfig
from batchmd.campaign.durable import append_record, read_json, read_records, write_json
from batchmd.campaign.ownership import assign, assign_manifest, owned_indices

LJ = {"name": "lj", "sigma": 3.405, "epsilon": 0.0104, "cutoff": 8.5}


def argon_frames(n: int, seed: int = 0, sizes=(3, 12)) -> list[Atoms]:
    """Random argon clusters (no overlaps), some with momenta and info."""
    rng = np.random.default_rng(seed)
    frames = []
    while len(frames) < n:
        k = int(rng.integers(*sizes))
        positions = rng.uniform(0.0, 1.0, (k, 3)) * (k ** (1 / 3)) * 3.8
        atoms = Atoms(f"Ar{k}", positions=positions)
        d = atoms.get_all_distances()[np.triu_indices(k, 1)]
        if d.size and d.min() < 2.5:
            continue
        atoms.info["tag"] = f"cluster-{len(frames)}"
        frames.append(atoms)
    return frames


def make_dataset(tmp_path, n: int = 24, max_rows: int = 5, seed: int = 0) -> Manifest:
    """``n`` argon clusters written to ``tmp_path/in.extxyz`` and sharded into ``tmp_path/ds``."""
    path = os.path.join(tmp_path, "in.extxyz")
    ase.io.write(path, argon_frames(n, seed))
    return write_dataset([path], os.path.join(tmp_path, "ds"), max_rows=max_rows)


def lj_config(tmp_path, output: str = "run", **overrides) -> CampaignConfig:
    """FIRE relaxation of the argon dataset with Lennard-Jones."""
    settings = dict(manifest=os.path.join(tmp_path, "ds"), output=os.path.join(tmp_path, output), model=dict(LJ),
                    stages=[{"method": "fire", "fmax": 0.01, "max_steps": 400}], max_atoms=40, commit_every=4,
                    refill_frequency=5)
    settings.update(overrides)
    return CampaignConfig(**settings)


# ----------------------------------------------------------------------------- durable files
def test_checksummed_json_refuses_edits_and_truncation(tmp_path):
    path = tmp_path / "state.json"
    write_json(path, {"done": [1, 2, 3]})
    assert read_json(path) == {"done": [1, 2, 3]}
    text = path.read_text()
    path.write_text(text.replace("3", "4", 1))
    with pytest.raises(CorruptFileError, match="checksum"):
        read_json(path)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(CorruptFileError, match="truncated or damaged"):
        read_json(path)


def test_log_torn_tail_is_dropped_but_damage_inside_is_refused(tmp_path):
    log = tmp_path / "log.jsonl"
    for i in range(3):
        append_record(log, {"i": i})
    good = log.read_bytes()
    log.write_bytes(good + b'{"record": {"i": 3}, "sha')  # crash mid-append
    records, torn = read_records(log)
    assert [r["i"] for r in records] == [0, 1, 2] and torn
    lines = good.splitlines(keepends=True)
    log.write_bytes(lines[0] + lines[1].replace(b'"i": 1', b'"i": 7') + lines[2])
    with pytest.raises(CorruptFileError, match="line 2"):
        read_records(log)


# ----------------------------------------------------------------------------- ingest
def test_shard_rejects_invalid_frames_into_the_report(tmp_path):
    frames = argon_frames(6)
    frames.insert(1, Atoms("X2", positions=[[0, 0, 0], [3, 0, 0]]))
    frames.insert(3, Atoms("Ar2", positions=[[0, 0, 0], [0.01, 0, 0]]))
    frames.insert(5, Atoms("Ar2", positions=[[0, 0, 0], [np.nan, 0, 0]]))
    frames.insert(6, Atoms("Ar", positions=[[0, 0, 0]], pbc=True))  # periodic, no cell
    path = tmp_path / "in.extxyz"
    ase.io.write(path, frames)
    bad_file = tmp_path / "broken.extxyz"
    bad_file.write_text("2\nLattice=\"nonsense\n")
    manifest = write_dataset([path, tmp_path / "missing.xyz", bad_file], tmp_path / "ds", max_rows=4)
    report = [json.loads(line) for line in (tmp_path / "ds" / "invalid.jsonl").read_text().splitlines()]
    assert manifest.num_structures == 6 and manifest.num_invalid == len(report) == 6
    reasons = {(os.path.basename(r["source"]), r["frame"]): r["reason"] for r in report}
    assert "not an element" in reasons[("in.extxyz", 1)]
    assert "closer than min_distance" in reasons[("in.extxyz", 3)]
    assert "NaN" in reasons[("in.extxyz", 5)]
    assert "zero length" in reasons[("in.extxyz", 6)]
    assert reasons[("missing.xyz", None)] == "file not found"
    assert "unreadable" in reasons[("broken.extxyz", 0)]
    # valid frames keep their order; global indices number valid structures 0..n-1
    data = ShardedDataset(manifest)
    assert [data[i][1]["frame"] for i in range(len(data))] == [0, 2, 4, 7, 8, 9]
    assert [json.loads(data[i][1]["info"])["tag"] for i in range(2)] == ["cluster-0", "cluster-1"]


def test_shards_are_bounded_checksummed_and_immutable(tmp_path):
    manifest = make_dataset(tmp_path, n=23, max_rows=5)
    assert [s.num_rows for s in manifest.shards] == [5, 5, 5, 5, 3]
    assert all(s.num_atoms == sum(s.atom_counts) for s in manifest.shards)
    again = Manifest.load(tmp_path / "ds")
    assert again.version == manifest.version and again.num_structures == 23
    with pytest.raises(FileExistsError, match="immutable"):
        write_dataset([tmp_path / "in.extxyz"], tmp_path / "ds")
    by_atoms = write_dataset([tmp_path / "in.extxyz"], tmp_path / "ds2", max_shard_atoms=30)
    assert all(s.num_atoms <= 30 or s.num_rows == 1 for s in by_atoms.shards)
    assert by_atoms.version != manifest.version  # different shards, different version


def test_round_trip_keeps_structures_exactly(tmp_path):
    frames = argon_frames(4)
    frames[2].set_momenta(np.random.default_rng(1).normal(size=(len(frames[2]), 3)))
    frames[3].set_cell([10.0, 11.0, 12.0])
    frames[3].pbc = True
    ase.io.write(tmp_path / "in.traj", frames)
    data = ShardedDataset(write_dataset([tmp_path / "in.traj"], tmp_path / "ds"))
    for i, atoms in enumerate(frames):
        sample, meta = data[i]
        assert meta["index"] == i and meta["frame"] == i
        assert np.array_equal(sample.positions.numpy(), atoms.get_positions())
        assert np.array_equal(sample.cell.numpy(), atoms.cell.array)
        assert sample.pbc.tolist() == atoms.pbc.tolist()
        assert (sample.velocities is not None) == (i == 2)
    assert torch.allclose(data[2][0].velocities, torch.from_numpy(frames[2].get_velocities()))


# ----------------------------------------------------------------------------- dataset
def test_dataset_protocol_metadata_needs_no_shard(tmp_path):
    manifest = make_dataset(tmp_path, n=12, max_rows=5)
    view = ShardedDataset(manifest, indices=[11, 3, 7])
    assert len(view) == 3 and view.global_index(0) == 11
    sizes = [view.get_metadata(i) for i in range(3)]
    for shard in manifest.shards:  # sizes come from the manifest alone
        os.rename(os.path.join(manifest.root, shard.file), os.path.join(manifest.root, shard.file + ".away"))
    assert [view.get_metadata(i) for i in range(3)] == sizes
    for shard in manifest.shards:
        os.rename(os.path.join(manifest.root, shard.file + ".away"), os.path.join(manifest.root, shard.file))
    data, meta = view[1]
    assert meta["index"] == 3 and data.num_nodes == sizes[1][0]


def test_damaged_shard_is_refused(tmp_path):
    manifest = make_dataset(tmp_path, n=8, max_rows=4)
    path = os.path.join(manifest.root, manifest.shards[1].file)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    data = ShardedDataset(manifest)
    assert data[0][1]["index"] == 0  # the intact shard still reads
    with pytest.raises(CorruptFileError, match="checksum"):
        data[5]


# ----------------------------------------------------------------------------- ownership
def test_ownership_is_a_deterministic_balanced_partition():
    shards = [(f"shard-{i:05d}", int(a)) for i, a in enumerate(np.random.default_rng(0).integers(50, 500, 37))]
    for world in (1, 2, 3, 8):
        owned = assign(shards, world, seed=5, version="abc")
        assert owned == assign(shards, world, seed=5, version="abc")
        assert sorted(p for mine in owned for p in mine) == list(range(len(shards)))
        loads = [sum(shards[p][1] for p in mine) for mine in owned]
        assert max(loads) - min(loads) <= max(a for _, a in shards)
    base = assign(shards, 4, seed=5, version="abc")
    assert assign(shards, 4, seed=6, version="abc") != base
    assert assign(shards, 4, seed=5, version="abd") != base


def test_owned_indices_cover_the_manifest_once(tmp_path):
    manifest = make_dataset(tmp_path, n=21, max_rows=3)
    for world in (1, 2, 5):
        everything = sorted(g for r in range(world) for g in owned_indices(manifest, r, world, seed=0))
        assert everything == list(range(21))
    assert len(assign_manifest(manifest, 10, seed=0)) == 10  # more ranks than shards: some own nothing
