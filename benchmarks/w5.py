"""W5: a structure-prediction-style relaxation campaign, static against inflight batching.

    PYTHONPATH=src:. python -m benchmarks.w5 --model demo --n 300 --rounds 2
    PYTHONPATH=src:. python -m benchmarks.w5 --model mace-random --n 120
    PYTHONPATH=src:. python -m benchmarks.w5 --model sevennet-0 --n 24 --batch-sizes 8 --chunks 0

Random symmetric crystals (``workloads.w5_structures``: Si, SiO2, TiO2, NaCl, LiCoO2,
4-32 atoms, fixed seed) relaxed with FIRE to fmax 0.05 eV/Å (at most 400 steps), with a
model that evaluates every atom of its batch (every MLIP does: nothing is skipped).

- **Static batching**, the best the user could do by hand with the same engine: the
  structures in fixed batches of B (dataset order), each batch run until its slowest
  member finishes; the model evaluated in chunks of at most C atoms per call (C = 0: one
  call). A sweep over B and C picks the fastest; its time is the static time.
- **Inflight batching**: ``FusedStage`` + ``SizeAwareSampler`` with the *same atom budget*
  as the best static batch (B times the mean structure size, C as found), refilled every
  ``--refill`` steps, same-size slots overwritten in place. Optionally the budget chosen by
  :func:`batchmd.dynamics.budget.choose_budget` as a second row.

Reported: time to solution (median of the timed rounds, interleaved), mean occupancy
(atoms of moving systems / atoms evaluated), refill overhead (host time at refill points /
wall time, ``RunStats.refill_seconds``), and the largest per-structure energy difference
between modes (batch invariance). Writes ``--out`` (markdown) and a JSON next to it.

Models: ``demo`` (batchmd's demo network through the torch adapter: a Morse pair term plus
an MLP correction, all pairs within a system, no periodic images; a cheap stand-in),
``mace-random`` (a small MACE with random weights, issue-14 adapter), ``sevennet-0`` (the
real potential, issue-14 adapter; on CPU use a small ``--n``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks import workloads as wl

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------- models
class _DemoEnergy(torch.nn.Module):
    """Per-system energies of batchmd's demo network (its Morse + MLP pair energy), for the torch
    adapter (forces by autograd). Pairs are built within each system (cost sum of n_i^2, like a
    model with a neighbor list: linear in the batch), not over the whole batch as the demo does."""

    def __init__(self):
        super().__init__()
        from batchmd.models.demo import DemoModelWrapper

        torch.manual_seed(0)
        self.net = DemoModelWrapper()
        self._pairs = {}

    def pairs(self, ptr: torch.Tensor):
        counts = (ptr[1:] - ptr[:-1]).tolist()
        key = tuple(counts)
        if key not in self._pairs:
            if len(self._pairs) > 64:
                self._pairs.clear()
            start, ii, jj = 0, [], []
            for n in counts:
                i, j = torch.triu_indices(n, n, offset=1)
                ii.append(i + start)
                jj.append(j + start)
                start += n
            self._pairs[key] = (torch.cat(ii).to(ptr.device), torch.cat(jj).to(ptr.device))
        return self._pairs[key]

    def forward(self, batch):
        net, x = self.net, batch.positions
        i, j = self.pairs(batch.ptr)
        numbers, batch_idx = batch.atomic_numbers.long(), batch.batch_idx.long()
        rij = x[j] - x[i]
        r = torch.sqrt((rij * rij).sum(dim=1) + 1e-12)
        morse = net.morse_depth * (1.0 - torch.exp(-net.morse_a * (r - net.morse_r0))) ** 2 - net.morse_depth
        rbf = torch.exp(-(((r[:, None] - net.centers) / net.width) ** 2))
        w = net.element_weight(numbers).squeeze(-1)
        pair = morse + net.scale * torch.tanh(net.mlp(rbf).squeeze(-1)) * (w[i] + w[j])
        energy = torch.zeros(batch.num_graphs, dtype=x.dtype, device=x.device).index_add_(0, batch_idx[i], pair)
        return energy.index_add_(0, batch_idx, net.element_energy(numbers).squeeze(-1))


#: Elements of the W5 chemistries (Li, O, Na, Si, Cl, Ti, Co).
W5_NUMBERS = (3, 8, 11, 14, 17, 22, 27)
#: Lennard-Jones baseline under the random MACE ("mace-random+lj"): sigma (Å), epsilon (eV),
#: cutoff (Å). A random-weight MACE alone has forces below fmax almost everywhere (W5 FIRE
#: steps 0 / 0 / 25 min / median / max), so it gets a pair baseline with minima, as MLIPs
#: get ZBL or D3 terms; FIRE then needs ~3..120 steps (median ~36) with the baseline alone.
W5_LJ = (2.2, 0.1, 5.0)


class SumModel(torch.nn.Module):
    """Energies and forces of several batchmd models added (e.g. an MLIP on a pair baseline)."""

    def __init__(self, *models):
        super().__init__()
        self.parts = torch.nn.ModuleList(models)
        self.cutoff = max(getattr(m, "cutoff", 0.0) or 0.0 for m in models)

    def forward(self, batch):
        outs = [m(batch) for m in self.parts]
        return {k: sum(o[k] for o in outs) for k in ("energy", "forces")}


def build_model(name: str, dtype: torch.dtype, device: str):
    """(batchmd model, MACE model file or None) for ``name``: demo, mace-random, sevennet-0, mace:PATH.

    ``mace-random``: a small MACE with random weights (``batchmd.models.mlip.mace.random_mace``,
    seed 0) saved to ``benchmarks/.cache/mace_random_w5.model`` and loaded back through
    ``load_model("mace:PATH")``, so that TorchSim can load the very same file.
    """
    if name == "demo":
        from batchmd.models.torch_adapter import TorchModelAdapter

        return TorchModelAdapter(_DemoEnergy().to(device=device, dtype=dtype)), None
    from batchmd.models import load_model  # issue 14: "sevennet-0", "mace:PATH"

    path, baseline = None, None
    if name == "mace-random+lj":
        from batchmd.models.lj import LennardJones

        sigma, epsilon, cutoff = W5_LJ
        baseline = LennardJones(sigma=sigma, epsilon=epsilon, cutoff=cutoff)
        name = "mace-random"
    if name == "mace-random":
        from batchmd.models.mlip.mace import random_mace

        path = HERE / ".cache" / "mace_random_w5.model"
        path.parent.mkdir(exist_ok=True)
        torch.save(random_mace(atomic_numbers=W5_NUMBERS, seed=0, dtype=torch.float64), path)
        name = f"mace:{path}"
    elif name.startswith("mace:"):
        path = Path(name[5:])
    model = load_model(name)
    if hasattr(model, "to"):
        model = model.to(device=device, dtype=dtype)
    # Positions-only relaxation: no stress (one gradient less), as TorchSim's row is run; the
    # adapter's own evaluation chunks are off, W5 sweeps chunking itself (--chunks).
    model.computes_stress = False
    if hasattr(model, "chunk_atoms"):
        model.chunk_atoms = 1 << 30
    if baseline is not None:
        model = SumModel(model, baseline)
    return model, (str(path) if path is not None else None)


class Chunked(torch.nn.Module):
    """Evaluates the wrapped model on consecutive systems, at most ``limit`` atoms per call."""

    def __init__(self, inner, limit: int):
        super().__init__()
        self.inner = inner
        self.limit = int(limit)
        self.cutoff = getattr(inner, "cutoff", None)

    def forward(self, batch):
        from batchmd.dynamics.oom import chunked_call

        return chunked_call(self.inner, batch, self.limit)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def _fire(model):
    from batchmd.dynamics import FIRE, ConvergenceHook

    return FIRE(model, convergence_hook=ConvergenceHook.from_forces(wl.W5_FMAX), n_steps=wl.W5_MAX_STEPS)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------- modes
def run_static(structures, model, batch_size: int, chunk: int, dtype, device) -> dict:
    """Fixed batches of ``batch_size`` structures; each runs until its slowest member finishes."""
    from batchmd.data import Batch

    fire = _fire(Chunked(model, chunk) if chunk else model)
    energies, steps, useful, capacity = [], [], 0, 0
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(structures), batch_size):
        part = structures[i:i + batch_size]
        out = fire.run(Batch.from_ase(part, dtype=dtype).to(device))
        s = out.n_steps.reshape(-1).tolist()
        energies += out.energies.reshape(-1).double().cpu().tolist()
        steps += s
        sizes = [len(a) for a in part]
        useful += sum(n * (k + 1) for n, k in zip(sizes, s))  # priming evaluation + one per step
        capacity += sum(sizes) * (max(s) + 1)
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"cpu": cpu, "mode": f"static, batch {batch_size}" + (f", chunks of {chunk} atoms" if chunk else ""),
            "wall": wall, "energies": energies, "steps": steps, "occupancy": useful / capacity,
            "refill_overhead": 0.0, "batch_size": batch_size, "chunk": chunk}


def run_inflight(structures, model, max_atoms: int, chunk: int, refill: int, dtype, device,
                 in_place: bool = True, label: str = "") -> dict:
    """FusedStage + SizeAwareSampler with an atom budget of ``max_atoms``."""
    from batchmd.ase import AtomsDataset
    from batchmd.dynamics import FusedStage, SizeAwareSampler
    from batchmd.dynamics.sinks import HostMemory

    max_atoms = max(int(max_atoms), max(len(a) for a in structures))
    sampler = SizeAwareSampler(AtomsDataset(structures, dtype=dtype), max_atoms=max_atoms, max_batch_size=max_atoms)
    sink = HostMemory(capacity=len(structures))
    fused = FusedStage([_fire(Chunked(model, chunk) if chunk else model)], sampler=sampler, sinks=[sink],
                       refill_frequency=refill, device=device, dtype=dtype, refill_in_place=in_place)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fused.run(batch=None)
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = sink.drain()
    order = torch.argsort(out["input_index"].reshape(-1))
    st = fused.stats
    return {"mode": f"inflight{label}, {max_atoms} atoms, refill every {refill}" + (", in place" if in_place else "")
                    + (f", chunks of {chunk} atoms" if chunk else ""),
            "wall": wall, "cpu": cpu, "energies": out.energies.reshape(-1)[order].double().tolist(),
            "steps": out["n_steps"].reshape(-1)[order].tolist(),
            # atoms of moving (or just primed) systems over the atoms in the live batch's budget
            "occupancy": st.mean_occupancy, "refill_overhead": st.refill_seconds / wall,
            "refill_points": st.refill_points, "refill_ms": 1e3 * st.refill_seconds / max(st.refill_points, 1),
            "max_atoms": max_atoms, "chunk": chunk, "refill": refill}


# ---------------------------------------------------------------------------------- driver
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--n", type=int, default=wl.W5_N_STRUCTURES, help="structures (first n of W5)")
    p.add_argument("--device", default=os.environ.get("BENCH_DEVICE", "cpu"))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--batch-sizes", default="8,16,32,64", help="static batch sizes swept")
    p.add_argument("--chunks", default="0,256", help="static evaluation chunks (atoms per call; 0: none) swept")
    p.add_argument("--refill", type=int, default=5, help="inflight refill frequency (steps)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds of the best static and inflight")
    p.add_argument("--auto-budget", action="store_true", help="also run inflight with choose_budget's budget")
    p.add_argument("--torchsim", default=os.environ.get("BENCH_TORCHSIM_PYTHON"),
                   help="python of a TorchSim 0.6 venv: adds TorchSim's ts.optimize + InFlightAutoBatcher row "
                        "(MACE models only, same model file and atom budget)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    p.add_argument("--out", default=str(HERE / "w5_report.md"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    structures = wl.w5_structures(args.n)
    model, model_file = build_model(args.model, dtype, args.device)
    mean_atoms = sum(len(a) for a in structures) / len(structures)
    copies = lambda: [a.copy() for a in structures]  # noqa: E731
    print(f"W5: {len(structures)} structures, {sum(len(a) for a in structures)} atoms, model {args.model}, "
          f"{args.device} {args.dtype}", flush=True)
    run_static(copies()[:8], model, 8, 0, dtype, args.device)  # warm-up (kernels, allocator)

    # 1. the sweep (one round each), 2. the best static and inflight, interleaved rounds
    sweep = []
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        for c in [int(x) for x in args.chunks.split(",")]:
            if c and c >= b * wl.W5_MAX_ATOMS:
                continue  # chunking that never splits a batch
            r = run_static(copies(), model, b, c, dtype, args.device)
            sweep.append(r)
            print(f"[sweep] {r['mode']}: {r['wall']:.2f} s (CPU {r['cpu']:.2f} s), occupancy {r['occupancy']:.1%}", flush=True)
    best = min(sweep, key=lambda r: r["cpu"])  # CPU time: robust to other sessions' load (wall on GPUs)
    if str(args.device).startswith("cuda"):
        best = min(sweep, key=lambda r: r["wall"])
    budget = int(round(best["batch_size"] * mean_atoms))
    rows = {"static": [], "inflight": []}
    auto = None
    if args.auto_budget:
        from batchmd.data import AtomicData
        from batchmd.dynamics.budget import choose_budget

        auto = choose_budget(model, [AtomicData.from_ase(a, dtype=dtype) for a in structures[:10]],
                             device=args.device, dtype=dtype, cache=False)
        rows["inflight auto budget"] = []
        print(f"[budget] {auto.source}: max_atoms {auto.max_atoms}", flush=True)
    torchsim = None
    if args.torchsim and model_file:
        from benchmarks.peers.remote import RemotePeer

        if args.threads:  # the same torch threads in TorchSim's worker
            os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torchsim = RemotePeer("torchsim", args.torchsim)
        torchsim.setup()
        rows["torchsim"] = []
        lj = W5_LJ if args.model.endswith("+lj") else None
        torchsim.run_w5(copies()[:8], model_file, budget, args.dtype, lj=lj)  # warm-up
    for k in range(args.rounds):
        rows["static"].append(run_static(copies(), model, best["batch_size"], best["chunk"], dtype, args.device))
        rows["inflight"].append(run_inflight(copies(), model, budget, best["chunk"], args.refill, dtype, args.device))
        if auto is not None:
            rows["inflight auto budget"].append(run_inflight(copies(), model, auto.max_atoms, 0, args.refill, dtype,
                                                             args.device, label=" (choose_budget)"))
        if torchsim is not None:
            res = torchsim.run_w5(copies(), model_file, budget, args.dtype, lj=lj)
            rows["torchsim"].append({"mode": f"TorchSim: {res.variant}", "wall": res.wall, "cpu": float("nan"),
                                     "energies": res.energies, "steps": [], "occupancy": float("nan"),
                                     "refill_overhead": float("nan")})
        print(f"[round {k}] " + ", ".join(f"{name} {rs[-1]['wall']:.2f} s (CPU {rs[-1]['cpu']:.2f} s)" for name, rs in rows.items()), flush=True)
    write(args, structures, sweep, rows, best, budget)
    return 0


def _summary(rs):
    r = dict(rs[-1])
    r["wall_median"] = statistics.median(x["wall"] for x in rs)
    r["wall_min"] = min(x["wall"] for x in rs)
    r["cpu_median"] = statistics.median(x["cpu"] for x in rs)
    r["refill_overhead"] = statistics.median(x["refill_overhead"] for x in rs)
    return r


def write(args, structures, sweep, rows, best, budget) -> None:
    summ = {name: _summary(rs) for name, rs in rows.items() if rs}
    ref = summ["static"]
    steps = ref["steps"]
    lines = [f"# W5: relaxation campaign, static vs inflight (model {args.model}, {args.device}, {args.dtype})", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             f"`python -m benchmarks.w5 {' '.join(sys.argv[1:])}`; {os.cpu_count()} logical cores, "
             f"load average {os.getloadavg()[0]:.1f} at the end (other sessions share this machine).", "",
             f"{len(structures)} random symmetric crystals (Si, SiO2, TiO2, NaCl, LiCoO2; "
             f"{min(len(a) for a in structures)}-{max(len(a) for a in structures)} atoms, "
             f"{sum(len(a) for a in structures)} in all), FIRE to fmax {wl.W5_FMAX} eV/Å, at most {wl.W5_MAX_STEPS} "
             f"steps; FIRE steps per structure min / median / max: {min(steps)} / {int(statistics.median(steps))} / "
             f"{max(steps)}, {sum(s >= wl.W5_MAX_STEPS for s in steps)} out of steps.", "",
             "## Static sweep (one round each)", "", "| static mode | wall | CPU time | occupancy |", "|---|---|---|---|"]
    for r in sweep:
        lines.append(f"| {r['mode']} | {r['wall']:.2f} s | {r['cpu']:.2f} s | {r['occupancy']:.1%} |")
    lines += ["", f"Best static: {best['mode']}. Inflight gets the same atom budget ({budget} atoms = batch size x "
              "mean structure size) and the same evaluation chunking.", "",
              f"## Time to solution (median of {args.rounds} interleaved rounds)", "",
              "| mode | wall (median) | min | static / this | CPU time (median) | static / this (CPU) | mean occupancy "
              "| refill overhead | ms per refill point | max abs dE vs static (eV) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summ.items():
        de = max(abs(a - b) for a, b in zip(r["energies"], ref["energies"]))
        lines.append(f"| {r['mode']} | {r['wall_median']:.2f} s | {r['wall_min']:.2f} s | "
                     f"{ref['wall_median'] / r['wall_median']:.2f} | {r['cpu_median']:.2f} s | "
                     f"{ref['cpu_median'] / r['cpu_median']:.2f} | {r['occupancy']:.1%} | "
                     f"{r['refill_overhead']:.1%} | {r.get('refill_ms', 0.0):.2f} | {de:.2e} |")
    if "torchsim" in summ:
        lines += ["", f"TorchSim's wall / batchmd inflight's: "
                  f"{summ['torchsim']['wall_median'] / summ['inflight']['wall_median']:.2f} (target >= 3). TorchSim's FIRE "
                  "(ase flavour) scales alpha before mixing, unlike ASE and batchmd, so its relaxed energies differ."]
    lines += ["", "Occupancy: atoms of systems still moving (or getting their first evaluation) over the atoms "
              "evaluated (static: the whole batch at every step) or budgeted (inflight). Refill overhead: host time "
              "at refill points after the status read (graduation, sinks, sampling, the new live batch) over "
              "wall time. Targets (issue 16): inflight >= 1.5x static, >= 90% occupancy, refill overhead <= 5%, "
              "energies identical across modes."]
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "sweep": sweep, "rows": rows}, indent=1))
    print("\n".join(lines[-len(summ) - 4:]))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
