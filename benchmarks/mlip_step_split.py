"""Per-step cost of MLIP dynamics, split by phase, against each model's ASE calculator one at a time.

Run: ``python -m benchmarks.mlip_step_split`` (writes ``benchmarks/mlip_step_split.md`` and
``.json``); options ``--models sevennet-0,mace`` ``--sizes 1,4,16,64`` ``--steps 3``
``--dtype float32`` ``--chunks 64,128,256,512,0`` (a chunk sweep on the largest batch, 0 = no
chunking); ``BENCH_DEVICE=cuda`` runs it on a GPU (device synchronised around each phase).

Workload: rattled 8-atom cubic silicon cells (SevenNet-0) / rattled 8-atom rocksalt NaCl cells
(a small random-weight MACE, ``batchmd.models.mlip.mace.random_mace``; small random-weight
TensorNet / M3GNet, ``--models tensornet,m3gnet``, and PET, ``pet`` / ``pet-nc``, see
:func:`build_matgl_pet`), ``B`` structures per batch, FIRE steps through ``FusedStage`` (the path every run takes). ``--models chgnet``: CHGNet
0.3.0 (shipped weights) on the silicon cells; ``--models orb``: the orb-v3-conservative
architecture (k = 20 neighbours, random weights, ``orb_models.forcefield.pretrained``) on the
NaCl cells. Phases:

- ``neighbors``: :class:`batchmd.models.edges.EdgeNeighborList` (skin check, rebuilds, edges);
- ``graph``: strain, shifts, edge vectors, the model's input dict (graph assembly), plus the
  adapter's own index building inside its forward (phase ``adapter``: CHGNet's bond pairing and
  angle list, ORB's k-nearest selection);
- ``model``: the network's forward plus the autograd backward for forces and stress;
- ``loop``: everything else in the step: FIRE's kernels, convergence bookkeeping, Python.

``overhead`` = (neighbors + graph + loop) / step: the fraction of a step spent outside the
model. The ASE column runs the same structures one at a time through the model's own
calculator (``SevenNetCalculator`` / ``MACECalculator``), ``get_forces`` after a small move
(as an optimizer step does), and reports the time per step of the whole set.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

HERE = Path(__file__).parent
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")


def _sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


class PhaseTimer:
    """Accumulates wall time per phase (the model's ``timer`` hook)."""

    def __init__(self):
        self.totals = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name):
        _sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.totals[name] += time.perf_counter() - t0


def structures(kind: str, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        atoms = (bulk("Si", "diamond", a=5.43, cubic=True) if kind == "si"
                 else bulk("NaCl", "rocksalt", a=5.64, cubic=True))
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        out.append(atoms)
    return out


def build(name: str, dtype, tmp: str):
    from batchmd.models import load_model

    if name == "chgnet":
        model = load_model("chgnet", dtype=dtype)
        from chgnet.model.dynamics import CHGNetCalculator

        return model, "si", lambda: CHGNetCalculator(model=copy.deepcopy(model.module).to(dtype), use_device=DEVICE)
    if name == "orb":
        from orb_models.forcefield import pretrained
        from orb_models.forcefield.atomic_system import SystemConfig
        from orb_models.forcefield.calculator import ORBCalculator

        from batchmd.models.mlip.orb import ORBModel

        torch.manual_seed(0)
        net = pretrained.orb_v3_conservative_architecture(system_config=SystemConfig(radius=6.0, max_num_neighbors=20))
        model = ORBModel(copy.deepcopy(net).eval(), dtype=dtype)
        return model, "nacl", lambda: ORBCalculator(copy.deepcopy(net).eval().to(dtype), device=DEVICE)
    if name == "sevennet-0":
        model = load_model("sevennet-0", dtype=dtype)  # imports sevenn/e3nn in the order they need
        from sevenn.calculator import SevenNetCalculator

        return model, "si", lambda: SevenNetCalculator("7net-0", device=DEVICE)
    if name in ("tensornet", "m3gnet", "pet", "pet-nc"):
        return build_matgl_pet(name, dtype, tmp)
    from mace.calculators import MACECalculator

    from batchmd.models.mlip.mace import random_mace

    path = os.path.join(tmp, "bench_mace.model")
    torch.save(random_mace(atomic_numbers=(11, 17), hidden="16x0e + 16x1o", seed=1), path)
    label = "float64" if dtype == torch.float64 else "float32"
    return (load_model(f"mace:{path}", dtype=dtype), "nacl",
            lambda: MACECalculator(model_paths=path, device=DEVICE, default_dtype=label))


def build_matgl_pet(name: str, dtype, tmp: str):
    """Small random-weight TensorNet / M3GNet (matgl) and PET (upet's architecture) on NaCl cells.

    ASE references: ``matgl.ext.ase.PESCalculator`` (stress in eV/Å^3) and
    ``metatomic_ase.MetatomicCalculator`` (what ``upet``'s ``UPETCalculator`` wraps). ``pet-nc``:
    PET with its non-conservative force and stress heads (one forward, no backward).
    """
    from batchmd.models import load_model

    if name in ("tensornet", "m3gnet"):
        import logging

        from matgl.ext.ase import PESCalculator

        from batchmd.models.mlip.matgl import random_matgl

        logging.getLogger("matgl").setLevel(logging.ERROR)
        arch = "TensorNet" if name == "tensornet" else "M3GNet"
        path = os.path.join(tmp, name)
        random_matgl(arch, element_types=("Na", "Cl"), units=32, nblocks=2, seed=1, dtype=dtype).save(path)
        model = load_model(f"matgl:{path}", dtype=dtype)
        return model, "nacl", lambda: PESCalculator(random_matgl(arch, element_types=("Na", "Cl"), units=32,
                                                                 nblocks=2, seed=1, dtype=dtype), stress_unit="eV/A3")
    import metatomic_ase

    from batchmd.models.mlip.pet import PETModel, random_pet

    path = random_pet(os.path.join(tmp, "bench_pet.pt"), atomic_types=(11, 17), width=32, dtype=dtype)
    nc = name == "pet-nc"
    return (PETModel.from_spec(path, non_conservative=nc), "nacl",
            lambda: metatomic_ase.MetatomicCalculator(path, device=DEVICE, non_conservative=nc))


def batchmd_step(model, frames, dtype, steps: int, chunk_atoms=None):
    from batchmd.data import Batch
    from batchmd.dynamics import FIRE, ConvergenceHook, FusedStage

    model.chunk_atoms = chunk_atoms
    batch = Batch.from_ase(frames, dtype=dtype).to(DEVICE)
    stage = FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-9), n_steps=10_000)
    fused = FusedStage([(0, stage)], refill_frequency=1000)
    fused.run(batch, n_steps=3)  # warm-up: first builds, TorchScript profiling runs
    timer = PhaseTimer()
    model.timer = timer
    _sync()
    t0 = time.perf_counter()
    fused.run(batch, n_steps=steps)
    _sync()
    wall = (time.perf_counter() - t0) / steps
    model.timer = None
    phases = {k: v / steps for k, v in timer.totals.items()}
    split = {
        "neighbors": phases.get("neighbors", 0.0),
        "graph": phases.get("graph", 0.0) + phases.get("adapter", 0.0),
        "model_time": phases.get("forward", 0.0) - phases.get("adapter", 0.0) + phases.get("backward", 0.0),
    }
    split["loop"] = max(0.0, wall - sum(split.values()))
    split["step"] = wall
    split["overhead"] = (split["neighbors"] + split["graph"] + split["loop"]) / wall
    return split


def ase_step(make_calc, frames, steps: int):
    calc = make_calc()
    copies = [a.copy() for a in frames]
    for atoms in copies:
        atoms.calc = calc
        atoms.get_forces()  # warm-up
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for _ in range(steps):
        for atoms in copies:
            atoms.positions += rng.normal(0.0, 1e-4, atoms.positions.shape)
            calc.calculate(atoms, ["energy", "forces", "stress"], ["positions"])  # one evaluation for all three
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sevennet-0,mace")
    parser.add_argument("--sizes", default="1,4,16,64")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--chunks", default="", help="chunk_atoms sweep on the largest size, e.g. 64,128,256,0")
    parser.add_argument("--no-ase", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as PEERS.md)")
    parser.add_argument("--out", default=str(HERE / "mlip_step_split.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, sweep = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, kind, make_calc = build(name, dtype, tmp)
            for b in sizes:
                frames = structures(kind, b)
                split = batchmd_step(model, frames, dtype, args.steps)
                split.update(model=name, structures=b, atoms=sum(len(a) for a in frames))
                if not args.no_ase:
                    split["ase"] = ase_step(make_calc, frames, max(1, args.steps // 2))
                    split["speedup_vs_ase"] = split["ase"] / split["step"]
                rows.append(split)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in split.items()}, flush=True)
            if args.chunks:
                frames = structures(kind, max(sizes))
                for c in [int(x) for x in args.chunks.split(",")]:
                    split = batchmd_step(model, frames, dtype, args.steps, chunk_atoms=c or 10**9)
                    sweep.append({"model": name, "chunk_atoms": c or None, "step": split["step"],
                                  "atoms": sum(len(a) for a in frames)})
                    print(sweep[-1], flush=True)
    meta = {"device": DEVICE, "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "load": os.getloadavg()}
    Path(args.out).with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "sweep": sweep}, indent=1))
    lines = [f"# MLIP step split ({DEVICE}, {args.dtype}, {meta['torch_threads']} torch threads, "
             f"load {meta['load'][0]:.1f})", "",
             "Times per FIRE step in ms. overhead = (neighbors + graph + loop) / step. ASE: the model's own "
             "calculator, structures one at a time (forces and stress).", "",
             "| model | structures | atoms | neighbors | graph | model fwd+bwd | loop+FIRE | step | overhead | "
             "ASE one at a time | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ase = f"{1e3 * r['ase']:.1f}" if "ase" in r else "-"
        speed = f"{r['speedup_vs_ase']:.2f}x" if "ase" in r else "-"
        lines.append(f"| {r['model']} | {r['structures']} | {r['atoms']} | {1e3 * r['neighbors']:.1f} | "
                     f"{1e3 * r['graph']:.1f} | {1e3 * r['model_time']:.1f} | {1e3 * r['loop']:.1f} | "
                     f"{1e3 * r['step']:.1f} | {100 * r['overhead']:.1f}% | {ase} | {speed} |")
    if sweep:
        lines += ["", "Chunk sweep (chunk_atoms; None = the whole batch in one graph):", "",
                  "| model | atoms | chunk_atoms | step ms |", "|---|---|---|---|"]
        lines += [f"| {s['model']} | {s['atoms']} | {s['chunk_atoms']} | {1e3 * s['step']:.1f} |" for s in sweep]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
