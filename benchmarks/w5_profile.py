"""W5 profile: where batchmd's inflight run and TorchSim's ``ts.optimize`` spend their time.

    PYTHONPATH=src:. BENCH_TORCHSIM_PYTHON=/work/venv-ts312/bin/python \\
        python -m benchmarks.w5_profile --n 40 --cell frechet --out benchmarks/w5_profile.md

One W5 campaign (``mace-random+lj``, the first ``--n`` structures, the same MACE file, dtype,
atom budget and cell filter on both sides) is run by batchmd's inflight loop and by TorchSim
0.6 (through ``peers/remote.py``) with wall-clock timers around

- the MACE network (batchmd: the module's forward plus the autograd pass for forces and
  stress, ``GraphModel.timer``'s "forward" and "backward" phases; TorchSim: the call of the
  module inside its ``MaceModel``, whose forward computes forces and stress itself),
- the MACE adapter as a whole (neighbor list, graph building, the network),
- the Lennard-Jones baseline,

and the rest (optimizer steps, cell filter, convergence, batching/refills) is the wall time
minus those. Also counted: model evaluations (calls, atoms evaluated = atom-steps) and FIRE
steps per structure. A second, cProfile'd batchmd run lists its top functions (``--cprofile``).

From the split, the bound: a batchmd with *no* overhead at all still pays its MACE network
time, so TorchSim's wall / batchmd's network time is the largest batchmd / TorchSim ratio this
model and CPU allow (the two call the same network on the same atoms, to within their FIRE step
counts, which the atom-evaluation counts compare).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

import torch

from benchmarks import w5
from benchmarks import workloads as wl

HERE = Path(__file__).resolve().parent


class PhaseTimer:
    """``GraphModel.timer``: wall seconds per phase ("neighbors", "graph", "forward", "backward")."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


def timed_forward(module, tally: dict, key: str) -> None:
    """Add the wall time of ``module``'s forward calls to ``tally[key]`` (instance attribute override)."""
    inner = module.forward

    def forward(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            tally[key] = tally.get(key, 0.0) + time.perf_counter() - t0

    module.forward = forward


def profile_batchmd(structures, budget: int, refill: int, dtype, cell: str, cprofile: bool = False) -> dict:
    """One batchmd inflight run with timers; ``cprofile``: under cProfile instead (top functions)."""
    model, _ = w5.build_model("mace-random+lj", dtype, "cpu", stress=cell == "frechet")
    mace, lj = model.parts
    timer, tally = PhaseTimer(), {}
    w5.run_inflight([a.copy() for a in structures[:8]], model, budget, 0, refill, dtype, "cpu", cell=cell)  # warm-up
    if cprofile:
        prof = cProfile.Profile()
        prof.enable()
        r = w5.run_inflight([a.copy() for a in structures], model, budget, 0, refill, dtype, "cpu", cell=cell)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
        return {"wall": r["wall"], "top": buf.getvalue()}
    mace.timer = timer
    timed_forward(mace, tally, "mace_adapter")
    timed_forward(lj, tally, "lj")
    r = w5.run_inflight([a.copy() for a in structures], model, budget, 0, refill, dtype, "cpu", cell=cell)
    network = timer.seconds.get("forward", 0.0) + timer.seconds.get("backward", 0.0)
    return {"wall": r["wall"], "cpu": r["cpu"], "mace_network": network, "mace_adapter": tally["mace_adapter"],
            "lj": tally["lj"], "phases": timer.seconds, "atom_evals": r["atom_evals"], "calls": r["model_calls"],
            "steps": r["steps"], "occupancy": r["occupancy"], "refill_overhead": r["refill_overhead"]}


def profile_torchsim(python: str, structures, model_file: str, budget: int, dtype: str, cell: str,
                     threads: int) -> dict:
    from benchmarks.peers.remote import RemotePeer

    os.environ["OMP_NUM_THREADS"] = str(threads)
    peer = RemotePeer("torchsim", python)
    try:
        peer.setup()
        peer.run_w5([a.copy() for a in structures[:8]], model_file, budget, dtype, lj=w5.W5_LJ, cell=cell)  # warm-up
        res = peer.run_w5([a.copy() for a in structures], model_file, budget, dtype, lj=w5.W5_LJ, cell=cell,
                          profile=True)
    finally:
        peer.close()
    p = res.extra["profile"]
    return {"wall": res.wall, "cpu": res.extra["cpu"], "mace_network": p["mace_network"],
            "mace_adapter": p["mace_adapter"], "lj": p.get("lj", 0.0), "atom_evals": int(res.atom_evals),
            "calls": res.n_force_evals, "steps": res.n_steps, "variant": res.variant}


def _row(name: str, r: dict) -> str:
    wall = r["wall"]
    rest = wall - r["mace_adapter"] - r["lj"]
    steps = r["steps"]
    return (f"| {name} | {wall:.2f} s | {r['mace_network']:.2f} s ({r['mace_network'] / wall:.1%}) | "
            f"{r['mace_adapter'] - r['mace_network']:.2f} s ({(r['mace_adapter'] - r['mace_network']) / wall:.1%}) | "
            f"{r['lj']:.2f} s ({r['lj'] / wall:.1%}) | {rest:.2f} s ({rest / wall:.1%}) | {r['calls']:,} | "
            f"{r['atom_evals']:,} | {1e6 * r['mace_network'] / r['atom_evals']:.1f} | "
            f"{sum(steps):,} ({sum(steps) / len(steps):.1f}) |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--cell", default="frechet", choices=["fixed", "frechet"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--batch", type=int, default=32, help="atom budget = this x the mean structure size")
    p.add_argument("--refill", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--torchsim", default=os.environ.get("BENCH_TORCHSIM_PYTHON"))
    p.add_argument("--cprofile", action="store_true", help="also a cProfile'd batchmd run (top functions)")
    p.add_argument("--out", default=str(HERE / "w5_profile.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    structures = wl.w5_structures(args.n)
    budget = int(round(args.batch * sum(len(a) for a in structures) / len(structures)))
    _, model_file = w5.build_model("mace-random+lj", dtype, "cpu")

    rows = {"batchmd inflight": profile_batchmd(structures, budget, args.refill, dtype, args.cell)}
    print("batchmd:", {k: v for k, v in rows["batchmd inflight"].items() if k != "steps"}, flush=True)
    if args.torchsim:
        rows["TorchSim ts.optimize"] = profile_torchsim(args.torchsim, structures, model_file, budget, args.dtype,
                                                        args.cell, args.threads)
        print("torchsim:", {k: v for k, v in rows["TorchSim ts.optimize"].items() if k != "steps"}, flush=True)
    top = profile_batchmd(structures, budget, args.refill, dtype, args.cell, cprofile=True) if args.cprofile else None

    load = os.getloadavg()
    lines = [f"# W5 profile: batchmd inflight vs TorchSim (mace-random+lj, cpu, {args.dtype}, cell {args.cell})", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             f"`python -m benchmarks.w5_profile {' '.join(sys.argv[1:])}`; torch threads {args.threads}, load average "
             f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the end. {len(structures)} W5 structures, atom budget "
             f"{budget} ({args.batch} x the mean size), refill / swap every {args.refill} step(s).", "",
             "| run | wall | MACE network (fwd + bwd) | MACE adapter rest (neighbors, graph) | LJ baseline | rest "
             "(optimizer, filter, batching) | model calls | atom-evaluations | network µs per atom-evaluation | FIRE "
             "steps (mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(name, r) for name, r in rows.items()]
    bm = rows["batchmd inflight"]
    if "TorchSim ts.optimize" in rows:
        ts = rows["TorchSim ts.optimize"]
        per_eval = bm["mace_network"] / bm["atom_evals"]
        lines += ["", f"Measured ratio TorchSim / batchmd: {ts['wall'] / bm['wall']:.2f} (wall). Bound with this model "
                  f"on this CPU: a batchmd with no overhead at all would still spend its network time "
                  f"({bm['mace_network']:.2f} s), so TorchSim / batchmd <= {ts['wall'] / bm['mace_network']:.2f}; "
                  f"at TorchSim's own atom-evaluation count and batchmd's network cost per atom-evaluation "
                  f"({1e6 * per_eval:.1f} µs), <= {ts['wall'] / (per_eval * ts['atom_evals']):.2f}. "
                  f"TorchSim's non-network time is {1 - ts['mace_network'] / ts['wall']:.1%} of its wall, batchmd's "
                  f"{1 - bm['mace_network'] / bm['wall']:.1%}."]
    if top is not None:
        lines += ["", "## batchmd inflight under cProfile (top functions by own time)", "", "```",
                  *[line[:160] for line in top["top"].strip().splitlines()[:40]], "```"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
