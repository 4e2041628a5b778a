"""batchmd's batched edge list against nvalchemi-toolkit-ops' neighbor list (a full rebuild, COO output).

Run: ``python -m benchmarks.edge_list_vs_ops`` (needs ``nvalchemi-toolkit-ops``; install it with
the constraints file, it does not change torch). Writes ``benchmarks/edge_list_vs_ops.md``.

Workload: W1-like, 64 rattled argon fcc supercells of 32-256 atoms (cutoff 8.5125 Å), and an
MLIP-like batch, 64 rattled 8-atom silicon cells (cutoff 5 Å); float64. batchmd: every system
forced to rebuild, then the COO edges (``EdgeNeighborList.update``). ops: ``neighbor_list(...,
method="batch_cell_list")`` as a neighbor matrix (preallocated by ops) and as a COO list
(``return_neighbor_list=True``). Medians of ``--rounds`` after one warm-up call; the pair sets
are checked to be identical.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

from batchmd.data import Batch
from batchmd.models.edges import EdgeNeighborList

HERE = Path(__file__).parent


def argon(count=64, seed=0):
    rng = np.random.default_rng(seed)
    reps = [(2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 2, 2), (4, 2, 2), (4, 4, 2), (4, 4, 4)]
    out = []
    for k in range(count):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(reps[k % len(reps)])
        atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
        out.append(atoms)
    return out


def silicon(count=64, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        out.append(atoms)
    return out


def ours(batch, nl):
    batch["_nl_cutoff"].fill_(float("nan")) if batch.has_field("_nl_cutoff") else None  # force a full rebuild
    return nl.update(batch)


def theirs(batch, cutoff, coo):
    from nvalchemiops.torch.neighbors import neighbor_list

    return neighbor_list(batch.positions, cutoff, cell=batch.cell, pbc=batch.pbc, batch_idx=batch.batch_idx,
                         batch_ptr=batch.ptr, method="batch_cell_list", return_neighbor_list=coo)


def timed(fn, rounds):
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "edge_list_vs_ops.md"))
    args = parser.parse_args(argv)
    rows = []
    for name, frames, cutoff in (("W1-like argon", argon(), 8.5125), ("MLIP-like silicon", silicon(), 5.0)):
        batch = Batch.from_ase(frames, dtype=torch.float64)
        nl = EdgeNeighborList(cutoff=cutoff, skin=0.0)
        edges = ours(batch, nl)
        i, j, s = theirs(batch, cutoff, True)[0][0], theirs(batch, cutoff, True)[0][1], theirs(batch, cutoff, True)[2]
        same = sorted(zip(edges.edge_index[0].tolist(), edges.edge_index[1].tolist(), map(tuple, edges.unit_shifts.tolist()))) \
            == sorted(zip(i.tolist(), j.tolist(), map(tuple, s.tolist())))
        row = {"workload": name, "atoms": batch.num_nodes, "pairs": edges.num_edges, "identical": same,
               "batchmd_coo": timed(lambda: ours(batch, nl), args.rounds),
               "ops_matrix": timed(lambda: theirs(batch, cutoff, False), args.rounds),
               "ops_coo": timed(lambda: theirs(batch, cutoff, True), args.rounds)}
        rows.append(row)
        print(row, flush=True)
    lines = [f"# batchmd edge list vs nvalchemi-toolkit-ops (CPU, float64, {torch.get_num_threads()} threads, "
             f"load {os.getloadavg()[0]:.1f}; medians of {args.rounds}, ms)", "",
             "| workload | atoms | pairs | identical | batchmd rebuild -> COO | ops matrix | ops COO |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['atoms']} | {r['pairs']} | {r['identical']} | {1e3 * r['batchmd_coo']:.1f} | "
                     f"{1e3 * r['ops_matrix']:.1f} | {1e3 * r['ops_coo']:.1f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
