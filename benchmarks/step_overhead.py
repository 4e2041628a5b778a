"""Fixed cost per step: one 32-atom argon system (2x2x2 FCC cells), batchmd only.

Run: ``python -m benchmarks.step_overhead`` (writes ``benchmarks/step_overhead.md``);
``BENCH_DEVICE=cuda python -m benchmarks.step_overhead OUT.md`` measures it on a GPU
(the device is synchronised before and after the timed steps, not inside).
The time per step of a tiny system is almost all fixed cost (Python, kernel launches),
so this is the floor under every batchmd step whatever the batch size.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch
from ase.build import bulk

from batchmd.data import Batch
from batchmd.dynamics import FIRE, NVE, ConvergenceHook, NVTLangevin
from batchmd.models.lj import LennardJones

HERE = Path(__file__).parent
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def per_step_us(make, steps: int = 2000, repeats: int = 5) -> float:
    """Best of ``repeats`` of the mean wall time per step (µs) over ``steps`` steps."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=0)
    best = float("inf")
    for _ in range(repeats):
        batch = Batch.from_ase([atoms], dtype=torch.float32)
        batch.set_field("system_id", torch.zeros(1, 1, dtype=torch.int64), "system")
        batch = batch.to(DEVICE)
        dynamics = make()
        for _ in range(10):
            dynamics.step(batch)
        _sync()
        start = time.perf_counter()
        for _ in range(steps):
            dynamics.step(batch)
        _sync()
        best = min(best, (time.perf_counter() - start) / steps * 1e6)
    return best


def run_per_step_us(make, cuda_graph, steps: int = 2000, repeats: int = 5) -> float:
    """Best of ``repeats`` of the wall time per step (µs) of ``FusedStage.run`` over ``steps`` steps."""
    from batchmd.dynamics import FusedStage

    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=0)
    best = float("inf")
    for _ in range(repeats):
        batch = Batch.from_ase([atoms], dtype=torch.float32).to(DEVICE)
        loop = FusedStage([make()], refill_frequency=50, cuda_graph=cuda_graph)
        loop.run(batch, n_steps=100)  # warm: kernels, recorded launches
        _sync()
        start = time.perf_counter()
        loop.run(batch, n_steps=steps)
        _sync()
        best = min(best, (time.perf_counter() - start) / steps * 1e6)
    return best


def main() -> None:
    model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
    rows = {
        "FIRE": lambda: FIRE(model, convergence_hook=ConvergenceHook.from_forces(1e-12)),
        "NVE": lambda: NVE(model, dt=2.0),
        "NVTLangevin": lambda: NVTLangevin(model, dt=2.0, temperature=80.0, friction=0.01, random_seed=0),
    }
    lines = [
        "# Fixed cost per step: one 32-atom system",
        "",
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, float32, "
        f"{DEVICE if DEVICE == 'cpu' else torch.cuda.get_device_name(DEVICE)}; "
        "`python -m benchmarks.step_overhead`; best of 5 x 2,000 steps.",
        "",
        "| method | µs per step |",
        "|---|---|",
    ]
    for name, make in rows.items():
        us = per_step_us(make)
        print(f"{name}: {us:.1f} µs/step", flush=True)
        lines.append(f"| {name} | {us:.1f} |")
    if DEVICE.startswith("cuda"):  # whole runs: steps between refill points replayed as CUDA graphs or not
        for name in ("NVE", "FIRE"):
            for graph in (False, True):
                us = run_per_step_us(rows[name], graph)
                label = f"{name} in FusedStage.run, refill every 50, cuda_graph={graph}"
                print(f"{label}: {us:.1f} µs/step", flush=True)
                lines.append(f"| {label} | {us:.1f} |")
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "step_overhead.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
