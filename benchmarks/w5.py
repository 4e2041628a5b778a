"""W5: a structure-prediction-style relaxation campaign, static against inflight batching.

    PYTHONPATH=src:. python -m benchmarks.w5 --model mace-random+lj --n 300 --threads 1   # + TorchSim when
    PYTHONPATH=src:. python -m benchmarks.w5 --model demo --cell fixed --n 300             # BENCH_TORCHSIM_PYTHON
    PYTHONPATH=src:. python -m benchmarks.w5 --model sevennet-0 --n 24 --batch-sizes 8 --chunks 0

Random symmetric crystals (``workloads.w5_structures``: Si, SiO2, TiO2, NaCl, LiCoO2,
4-32 atoms, fixed seed) relaxed with FIRE (ASE's parameters) to fmax 0.05 eV/Å (at most 400
steps), by default atoms and cell together through ``FrechetCellFilter`` (``--cell
frechet``; ``--cell fixed``: positions only), with a model that evaluates every atom of its
batch (every MLIP does: nothing is skipped).

- **Static batching**, the best the user could do by hand with the same engine: the
  structures in fixed batches of B (dataset order), each batch run until its slowest
  member finishes (graduation checked every ``--refill`` steps, as inflight); the model
  evaluated in chunks of at most C atoms per call (C = 0: one call). A sweep over B and C
  picks the fastest; its time is the static time.
- **Inflight batching**: ``FusedStage`` + ``SizeAwareSampler`` with the *same atom budget*
  as the best static batch (B times the mean structure size, C as found), refilled every
  ``--refill`` steps (default 1: an MLIP step costs far more than a refill point), same-size
  slots overwritten in place. Optionally the budget chosen by
  :func:`batchmd.dynamics.budget.choose_budget` as a second row.
- **TorchSim** (``--torchsim PYTHON`` or ``BENCH_TORCHSIM_PYTHON``; MACE models): its
  ``ts.optimize`` with FIRE (``ase_fire``), its Frechet cell filter when ``--cell frechet``, and
  an ``InFlightAutoBatcher`` with the same atom budget, on the same MACE file and dtype
  (``peers/torchsim_peer.run_w5``). Before the timed rounds, batchmd's and TorchSim's
  models are compared on one structure in float64 (energy, forces, stress).

Reported: time to solution (median of the timed rounds, interleaved; wall and CPU time),
mean occupancy (atoms of moving systems / atoms evaluated or budgeted), useful / evaluated
atom-evaluations (counted at the model), the inflight drain tail (share of the wall time
after the sampler ran out, occupancy before it), refill overhead (host time at refill
points / wall time, ``RunStats.refill_seconds``), FIRE steps, and the largest per-structure
energy difference between modes (batch invariance). Writes ``--out`` (markdown) and a JSON
next to it. Where the time goes, on both sides: ``benchmarks/w5_profile.py``.

Models: ``mace-random+lj`` (a small MACE with random weights, issue-14 adapter, on an
unshifted Lennard-Jones baseline so that structures have minima), ``mace-random``,
``mace:PATH``, ``sevennet-0`` (the real potential; on CPU use a small ``--n``), ``demo``
(batchmd's demo network through the torch adapter: a Morse pair term plus an MLP correction,
all pairs within a system, no periodic images, no stress: ``--cell fixed`` only).
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
    """Energies, forces and (when every part computes it) stress of several batchmd models added
    (e.g. an MLIP on a pair baseline). In-place refills are passed on to every part."""

    def __init__(self, *models):
        super().__init__()
        self.parts = torch.nn.ModuleList(models)
        self.cutoff = max(getattr(m, "cutoff", 0.0) or 0.0 for m in models)

    @property
    def computes_stress(self) -> bool:
        return all(getattr(m, "computes_stress", False) for m in self.parts)

    @computes_stress.setter
    def computes_stress(self, value: bool) -> None:
        for m in self.parts:
            m.computes_stress = bool(value)

    def systems_replaced(self, batch, systems) -> None:
        for m in self.parts:
            notify = getattr(m, "systems_replaced", None)
            if notify is not None:
                notify(batch, systems)

    def forward(self, batch):
        outs = [m(batch) for m in self.parts]
        keys = ("energy", "forces") + (("stress",) if self.computes_stress else ())
        return {k: sum(o[k] for o in outs) for k in keys}


class Counted(torch.nn.Module):
    """Counts the model evaluations (calls) and the atoms they evaluate (atom-steps)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.atoms = 0

    def forward(self, batch):
        self.calls += 1
        self.atoms += int(batch.num_nodes)
        return self.inner(batch)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def build_model(name: str, dtype: torch.dtype, device: str, stress: bool = False):
    """(batchmd model, MACE model file or None) for ``name``: demo, mace-random, mace-random+lj,
    sevennet-0, mace:PATH; ``stress``: the model computes the stress (variable-cell runs).

    ``mace-random``: a small MACE with random weights (``batchmd.models.mlip.mace.random_mace``,
    seed 0) saved to ``benchmarks/.cache/mace_random_w5.model`` and loaded back through
    ``load_model("mace:PATH")``, so that TorchSim can load the very same file.
    ``mace-random+lj`` adds an unshifted Lennard-Jones baseline (``W5_LJ``; unshifted like
    TorchSim's, so that energies compare across the two: the shift changes no force or stress).
    """
    if name == "demo":
        if stress:
            raise SystemExit("w5: the demo model has no periodic images and no stress: use --cell fixed")
        from batchmd.models.torch_adapter import TorchModelAdapter

        return TorchModelAdapter(_DemoEnergy().to(device=device, dtype=dtype)), None
    from batchmd.models import load_model  # issue 14: "sevennet-0", "mace:PATH"

    path, baseline = None, None
    if name == "mace-random+lj":
        from batchmd.models.lj import LennardJones

        sigma, epsilon, cutoff = W5_LJ
        baseline = LennardJones(sigma=sigma, epsilon=epsilon, cutoff=cutoff, shift=False, compute_stress=stress)
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
    # Fixed cells: no stress (one gradient less), as TorchSim's fixed-cell row is run; the
    # adapter's own evaluation chunks are off, W5 sweeps chunking itself (--chunks).
    model.computes_stress = bool(stress)
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


def _fire(model, cell: str = "fixed"):
    """ASE's FIRE (its defaults) to fmax ``W5_FMAX`` in at most ``W5_MAX_STEPS`` steps; ``cell="frechet"``:
    atoms and cell through ``FrechetCellFilter`` (fmax over the N atom rows and the 3 cell rows, as ASE)."""
    from batchmd.dynamics import FIRE, ConvergenceHook, FrechetCellFilter

    cell_filter = FrechetCellFilter() if cell == "frechet" else None
    return FIRE(model, convergence_hook=ConvergenceHook.from_forces(wl.W5_FMAX), n_steps=wl.W5_MAX_STEPS,
                cell_filter=cell_filter)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------- modes
def _useful(sizes, steps) -> int:
    """Atom-evaluations a system needs: its priming evaluation and one per FIRE step."""
    return sum(n * (k + 1) for n, k in zip(sizes, steps))


def run_static(structures, model, batch_size: int, chunk: int, dtype, device, cell: str = "fixed",
               check: int = 1) -> dict:
    """Fixed batches of ``batch_size`` structures; each runs until its slowest member finishes
    (graduation checked every ``check`` steps, as inflight refills)."""
    from batchmd.data import Batch

    counted = Counted(model)
    fire = _fire(Chunked(counted, chunk) if chunk else counted, cell)
    energies, steps, capacity = [], [], 0
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(structures), batch_size):
        part = structures[i:i + batch_size]
        out = fire.run(Batch.from_ase(part, dtype=dtype).to(device), check_frequency=check)
        s = out.n_steps.reshape(-1).tolist()
        energies += out.energies.reshape(-1).double().cpu().tolist()
        steps += s
        capacity += sum(len(a) for a in part) * (max(s) + 1)
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    useful = _useful([len(a) for a in structures], steps)
    return {"cpu": cpu, "mode": f"static, batch {batch_size}" + (f", chunks of {chunk} atoms" if chunk else ""),
            "wall": wall, "energies": energies, "steps": steps, "occupancy": useful / capacity,
            "evaluated_occupancy": useful / max(counted.atoms, 1), "atom_evals": counted.atoms,
            "model_calls": counted.calls, "refill_overhead": 0.0, "batch_size": batch_size, "chunk": chunk}


class _DrainProbe:
    """Host-only AFTER_STEP hook: per step (time, steps, occupancy sum, samples left), so that the
    campaign's drain tail (the sampler exhausted, the live batch emptying) can be told apart."""

    frequency = 1
    host_only = True

    def __init__(self, sampler):
        from batchmd.dynamics.hooks import HookStage

        self.stage = HookStage.AFTER_STEP
        self.sampler = sampler
        self.rows = []

    def __call__(self, batch, context):
        st = context.stats
        self.rows.append((time.perf_counter(), st.steps, st.occupancy_sum, self.sampler.remaining))

    def split(self, t0: float, t1: float) -> dict:
        """Occupancy before the drain, the drain's share of wall time and of the loop's steps."""
        first = next((r for r in self.rows if r[3] == 0), None)
        if first is None or not self.rows:
            return {}
        t, steps, occ, _ = first
        total_steps = self.rows[-1][1]
        return {"occupancy_before_drain": occ / max(steps, 1), "drain_wall_fraction": (t1 - t) / (t1 - t0),
                "drain_step_fraction": (total_steps - steps) / max(total_steps, 1), "steps_total": total_steps}


def run_inflight(structures, model, max_atoms: int, chunk: int, refill: int, dtype, device,
                 in_place: bool = True, label: str = "", cell: str = "fixed") -> dict:
    """FusedStage + SizeAwareSampler with an atom budget of ``max_atoms``."""
    from batchmd.ase import AtomsDataset
    from batchmd.dynamics import FusedStage, SizeAwareSampler
    from batchmd.dynamics.sinks import HostMemory

    max_atoms = max(int(max_atoms), max(len(a) for a in structures))
    sampler = SizeAwareSampler(AtomsDataset(structures, dtype=dtype), max_atoms=max_atoms, max_batch_size=max_atoms)
    sink = HostMemory(capacity=len(structures))
    counted = Counted(model)
    probe = _DrainProbe(sampler)
    fused = FusedStage([_fire(Chunked(counted, chunk) if chunk else counted, cell)], sampler=sampler, sinks=[sink],
                       refill_frequency=refill, device=device, dtype=dtype, refill_in_place=in_place, hooks=[probe])
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fused.run(batch=None)
    _sync(device)
    t1 = time.perf_counter()
    wall, cpu = t1 - t0, time.process_time() - c0
    out = sink.drain()
    order = torch.argsort(out["input_index"].reshape(-1))
    st = fused.stats
    steps = out["n_steps"].reshape(-1)[order].tolist()
    useful = _useful([len(a) for a in structures], steps)
    return {"mode": f"inflight{label}, {max_atoms} atoms, refill every {refill}" + (", in place" if in_place else "")
                    + (f", chunks of {chunk} atoms" if chunk else ""),
            "wall": wall, "cpu": cpu, "energies": out.energies.reshape(-1)[order].double().tolist(), "steps": steps,
            # atoms of moving (or just primed) systems over the atoms in the live batch's budget
            "occupancy": st.mean_occupancy, "evaluated_occupancy": useful / max(counted.atoms, 1),
            "atom_evals": counted.atoms, "model_calls": counted.calls, "refills_in_place": st.refills_in_place,
            "refill_overhead": st.refill_seconds / wall,
            "refill_points": st.refill_points, "refill_ms": 1e3 * st.refill_seconds / max(st.refill_points, 1),
            "max_atoms": max_atoms, "chunk": chunk, "refill": refill, **probe.split(t0, t1)}


# ---------------------------------------------------------------------------------- driver
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--n", type=int, default=wl.W5_N_STRUCTURES, help="structures (first n of W5)")
    p.add_argument("--device", default=os.environ.get("BENCH_DEVICE", "cpu"))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--batch-sizes", default="8,16,32,64", help="static batch sizes swept")
    p.add_argument("--chunks", default="0,256", help="static evaluation chunks (atoms per call; 0: none) swept")
    p.add_argument("--cell", default="frechet", choices=["fixed", "frechet"],
                   help="fixed cells (positions only) or atoms and cell through FrechetCellFilter (default; "
                        "TorchSim too: its Frechet cell filter)")
    p.add_argument("--refill", type=int, default=1,
                   help="inflight refill frequency (steps); static runs check graduation as often")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds of the best static and inflight")
    p.add_argument("--auto-budget", action="store_true", help="also run inflight with choose_budget's budget")
    p.add_argument("--torchsim", default=os.environ.get("BENCH_TORCHSIM_PYTHON"),
                   help="python of a TorchSim 0.6 venv: adds TorchSim's ts.optimize + InFlightAutoBatcher row "
                        "(MACE models only, same model file and atom budget)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    p.add_argument("--out", default=str(HERE / "w5_report.md"))
    p.add_argument("--from-json", help="only write the markdown again from a report's JSON (no run)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.from_json:
        rerender(args.from_json, args.out if "--out" in (argv if argv is not None else sys.argv) else None)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    structures = wl.w5_structures(args.n)
    model, model_file = build_model(args.model, dtype, args.device, stress=args.cell == "frechet")
    mean_atoms = sum(len(a) for a in structures) / len(structures)
    copies = lambda: [a.copy() for a in structures]  # noqa: E731
    print(f"W5: {len(structures)} structures, {sum(len(a) for a in structures)} atoms, model {args.model}, "
          f"{args.device} {args.dtype}, cell {args.cell}", flush=True)
    run_static(copies()[:8], model, 8, 0, dtype, args.device, args.cell)  # warm-up (kernels, allocator)

    # 1. the sweep (one round each), 2. the best static and inflight, interleaved rounds
    sweep = []
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        for c in [int(x) for x in args.chunks.split(",")]:
            if c and c >= b * wl.W5_MAX_ATOMS:
                continue  # chunking that never splits a batch
            r = run_static(copies(), model, b, c, dtype, args.device, args.cell, args.refill)
            sweep.append(r)
            print(f"[sweep] {r['mode']}: {r['wall']:.2f} s (CPU {r['cpu']:.2f} s), occupancy {r['occupancy']:.1%}", flush=True)
    best = _best(sweep, args.device)
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
    torchsim, check = None, None
    if args.torchsim and model_file:
        from benchmarks.peers.remote import RemotePeer

        if args.threads:  # the same torch threads in TorchSim's worker
            os.environ["OMP_NUM_THREADS"] = str(args.threads)
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # torch.jit.load notices from e3nn
        torchsim = RemotePeer("torchsim", args.torchsim)
        torchsim.setup()
        rows["torchsim"] = []
        lj = W5_LJ if args.model.endswith("+lj") else None
        torchsim.run_w5(copies()[:8], model_file, budget, args.dtype, lj=lj, cell=args.cell)  # warm-up
        check = stress_check(structures[0], model_file, lj, torchsim) if args.cell == "frechet" else None
    for k in range(args.rounds):
        rows["static"].append(run_static(copies(), model, best["batch_size"], best["chunk"], dtype, args.device,
                                         args.cell, args.refill))
        rows["inflight"].append(run_inflight(copies(), model, budget, best["chunk"], args.refill, dtype, args.device,
                                             cell=args.cell))
        if auto is not None:
            rows["inflight auto budget"].append(run_inflight(copies(), model, auto.max_atoms, 0, args.refill, dtype,
                                                             args.device, label=" (choose_budget)", cell=args.cell))
        if torchsim is not None:
            res = torchsim.run_w5(copies(), model_file, budget, args.dtype, lj=lj, cell=args.cell)
            useful = _useful([len(a) for a in structures], res.n_steps)
            rows["torchsim"].append({"mode": f"TorchSim: {res.variant}", "wall": res.wall, "cpu": res.extra["cpu"],
                                     "energies": res.energies, "steps": res.n_steps, "occupancy": float("nan"),
                                     "evaluated_occupancy": useful / max(res.atom_evals, 1),
                                     "atom_evals": int(res.atom_evals), "model_calls": res.n_force_evals,
                                     "refill_overhead": float("nan")})
        print(f"[round {k}] " + ", ".join(f"{name} {rs[-1]['wall']:.2f} s (CPU {rs[-1]['cpu']:.2f} s)" for name, rs in rows.items()), flush=True)
    if torchsim is not None:
        torchsim.close()
    write(args, structures, sweep, rows, best, budget, check)
    return 0


def stress_check(atoms, model_file: str, lj, torchsim) -> dict:
    """batchmd's model (MACE adapter, + LJ) against TorchSim's MaceModel (+ its LJ) on one structure, float64:
    largest absolute differences of energy (eV), forces (eV/Å) and stress (eV/Å^3)."""
    import numpy as np

    from batchmd.data import Batch

    from batchmd.models import load_model
    from batchmd.models.lj import LennardJones

    mine = load_model(f"mace:{model_file}")
    mine.computes_stress = True
    if lj:
        mine = SumModel(mine, LennardJones(sigma=lj[0], epsilon=lj[1], cutoff=lj[2], shift=False, compute_stress=True))
    out = mine(Batch.from_ase([atoms], dtype=torch.float64))
    theirs = torchsim.w5_single_point(atoms, model_file, "float64", lj=lj)
    diff = {k: float(np.abs(out[k2].detach().numpy().reshape(theirs[k].shape) - theirs[k]).max())
            for k, k2 in (("energy", "energy"), ("forces", "forces"), ("stress", "stress"))}
    diff["stress_max"] = float(np.abs(theirs["stress"]).max())
    print(f"[check] batchmd vs TorchSim on structure 0 ({len(atoms)} atoms, float64): max |dE| {diff['energy']:.2e} eV, "
          f"max |dF| {diff['forces']:.2e} eV/Å, max |dsigma| {diff['stress']:.2e} eV/Å^3 "
          f"(max |sigma| {diff['stress_max']:.2e})", flush=True)
    return diff


def _summary(rs):
    r = dict(rs[-1])
    r["wall_median"] = statistics.median(x["wall"] for x in rs)
    r["wall_min"] = min(x["wall"] for x in rs)
    r["cpu_median"] = statistics.median(x["cpu"] for x in rs)
    r["refill_overhead"] = statistics.median(x["refill_overhead"] for x in rs)
    return r


def _pct(x) -> str:
    return "--" if x is None or x != x else f"{x:.1%}"


def _steps(steps) -> str:
    return f"{min(steps)} / {int(statistics.median(steps))} / {statistics.fmean(steps):.1f} / {max(steps)}" if steps else "--"


def _best(sweep, device: str) -> dict:
    """The fastest static mode: by CPU time on a CPU (robust to other sessions' load), by wall time on GPUs."""
    return min(sweep, key=lambda r: r["wall" if str(device).startswith("cuda") else "cpu"])


def rerender(path: str, out: str | None = None) -> None:
    """Write the markdown report again from its JSON (same numbers, date, command and load average)."""
    data = json.loads(Path(path).read_text())
    args = argparse.Namespace(**data["args"])
    args.out = out or str(Path(path).with_suffix(".md"))
    structures = wl.w5_structures(args.n)
    best = _best(data["sweep"], args.device)
    budget = int(round(best["batch_size"] * sum(len(a) for a in structures) / len(structures)))
    write(args, structures, data["sweep"], data["rows"], best, budget, data.get("check"), data.get("meta"))


def _dE(r, ref) -> str:
    de = sorted(abs(a - b) for a, b in zip(r["energies"], ref["energies"]))
    return f"{statistics.median(de):.1e} / {de[-1]:.1e} / {sum(d > 1e-3 for d in de)}"


def write(args, structures, sweep, rows, best, budget, check=None, meta=None) -> None:
    summ = {name: _summary(rs) for name, rs in rows.items() if rs}
    ref = summ["static"]
    steps = ref["steps"]
    cell = {"fixed": "positions only (fixed cells)",
            "frechet": "atoms and cell through FrechetCellFilter (fmax over atom and cell rows, as ASE)"}[args.cell]
    meta = meta or {"generated": time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                    "command": f"python -m benchmarks.w5 {' '.join(sys.argv[1:])}", "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())}
    load = meta["loadavg"]
    lines = [f"# W5: relaxation campaign, static vs inflight (model {args.model}, {args.device}, {args.dtype}, "
             f"cell {args.cell})", "",
             f"Generated {meta['generated']} by `{meta['command']}`; {meta['cores']} logical cores, "
             f"torch threads {meta['threads']}, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
             "(1 / 5 / 15 min) at the end (other sessions share this machine).", "",
             f"{len(structures)} random symmetric crystals (Si, SiO2, TiO2, NaCl, LiCoO2; "
             f"{min(len(a) for a in structures)}-{max(len(a) for a in structures)} atoms, "
             f"{sum(len(a) for a in structures)} in all), FIRE (ASE's parameters) to fmax {wl.W5_FMAX} eV/Å, at most "
             f"{wl.W5_MAX_STEPS} steps, {cell}; FIRE steps per structure (static) min / median / mean / max: "
             f"{_steps(steps)}, {sum(s >= wl.W5_MAX_STEPS for s in steps)} out of steps.", "",
             "## Static sweep (one round each)", "",
             "| static mode | wall | CPU time | occupancy | atom-evaluations |", "|---|---|---|---|---|"]
    for r in sweep:
        lines.append(f"| {r['mode']} | {r['wall']:.2f} s | {r['cpu']:.2f} s | {r['occupancy']:.1%} | "
                     f"{r['atom_evals']:,} |")
    lines += ["", f"Best static (by {'wall' if str(args.device).startswith('cuda') else 'CPU'} time): {best['mode']}. "
              f"Inflight gets the same atom budget ({budget} atoms = batch size x mean structure size) and the same "
              f"evaluation chunking; graduation is checked every {args.refill} step(s) in both.", "",
              f"## Time to solution (median of {args.rounds} interleaved rounds)", "",
              "| mode | wall (median) | min | static / this | CPU time (median) | static / this (CPU) | mean occupancy "
              "| useful / evaluated | atom-evaluations | FIRE steps min / median / mean / max | refill overhead "
              "| ms per refill point | abs dE vs static (eV): median / max / structures > 1 meV |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summ.items():
        cpu_ratio = ref["cpu_median"] / r["cpu_median"] if r["cpu_median"] == r["cpu_median"] else float("nan")
        lines.append(f"| {r['mode']} | {r['wall_median']:.2f} s | {r['wall_min']:.2f} s | "
                     f"{ref['wall_median'] / r['wall_median']:.2f} | {r['cpu_median']:.2f} s | {cpu_ratio:.2f} | "
                     f"{_pct(r['occupancy'])} | {_pct(r.get('evaluated_occupancy'))} | {r.get('atom_evals', 0):,} | "
                     f"{_steps(r['steps'])} | {_pct(r['refill_overhead'])} | {r.get('refill_ms', 0.0):.2f} | {_dE(r, ref)} |")
    inf = summ["inflight"]
    if "drain_wall_fraction" in inf:
        lines += ["", f"Inflight drain tail: the sampler ran out of structures after "
                  f"{inf['steps_total'] - round(inf['drain_step_fraction'] * inf['steps_total'])} of "
                  f"{inf['steps_total']} loop steps; from then on the live batch only empties. The drain took "
                  f"{inf['drain_wall_fraction']:.1%} of the wall time ({inf['drain_step_fraction']:.1%} of the steps); "
                  f"mean occupancy before it {inf['occupancy_before_drain']:.1%}, over the whole run "
                  f"{inf['occupancy']:.1%} (the number the target is about)."]
    if "torchsim" in summ:
        ts = summ["torchsim"]
        lines += ["", f"TorchSim's wall / batchmd inflight's: {ts['wall_median'] / inf['wall_median']:.2f}; CPU time: "
                  f"{ts['cpu_median'] / inf['cpu_median']:.2f} (target >= 3). TorchSim evaluates "
                  f"{ts['atom_evals'] / inf['atom_evals']:.2f}x the atoms batchmd's inflight run does (its FIRE steps "
                  "differ: its 'ase_fire' scales alpha before the velocity mixing, ASE and batchmd after, so "
                  "trajectories and relaxed energies differ; its convergence test is strict, <, "
                  + ("on raw atom forces and its cell forces, batchmd's ASE's <= through the filter)."
                     if args.cell == "frechet" else "batchmd's ASE's <=).")]
        de = sorted(abs(a - b) for a, b in zip(ts["energies"], inf["energies"]))
        lines += ["", f"TorchSim's relaxed energies vs batchmd's (inflight), per structure: median |dE| "
                  f"{statistics.median(de):.1e} eV; {sum(d < 1e-3 for d in de)} of {len(de)} within 1 meV, "
                  f"{sum(d > 0.1 for d in de)} more than 0.1 eV apart (different FIRE trajectories ending in "
                  "different local minima of these random crystals)."]
    if check:
        lines += ["", f"Same model on both sides (structure 0, float64, batchmd's MACE adapter + LJ vs TorchSim's "
                  f"MaceModel + LJ): max |dE| {check['energy']:.1e} eV, max |dF| {check['forces']:.1e} eV/Å, "
                  f"max |dsigma| {check['stress']:.1e} eV/Å^3 (max |sigma| {check['stress_max']:.1e})."]
    if args.dtype == "float32":
        lines += ["", "Energies across batchmd's modes in float32: the MACE network's float32 matrix products round "
                  "differently with the batch's shape (one evaluation of a structure alone and inside a batch of 30 "
                  "differ by up to ~2e-6 eV; batchmd's own kernels are batch invariant, and float64 agrees to "
                  "~1e-17, see test_bench_w5.py), and FIRE carries such differences to the relaxed energies."]
    lines += ["", "Occupancy: atoms of systems still moving (or getting their first evaluation) over the atoms "
              "evaluated (static: the whole batch at every step) or budgeted (inflight). useful / evaluated: "
              "atom-evaluations the relaxations needed (priming + one per FIRE step) over those the model did "
              "(counted at the model). Refill overhead: host time "
              "at refill points after the status read (graduation, sinks, sampling, the new live batch) over "
              "wall time. Targets (issue 16): inflight >= 1.5x static, >= 90% occupancy, refill overhead <= 5%, "
              "energies identical across modes."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "sweep": sweep, "rows": rows, "check": check,
                                                    "meta": meta}, indent=1))
    print("\n".join(lines[-len(summ) - 10:]))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
