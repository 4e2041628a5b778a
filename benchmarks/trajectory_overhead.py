"""What recording costs: W2-like NVT argon with and without a trajectory store and a thermo log.

Run: ``python -m benchmarks.trajectory_overhead [OUT.md]`` (default ``benchmarks/trajectory_overhead.md``);
``BENCH_DEVICE=cuda`` for a GPU, ``BENCH_STEPS``, ``BENCH_ROUNDS``, ``BENCH_COPIES`` to change the size.

Workload: W2 (16 rattled argon crystals, 1,560 atoms, Lennard-Jones, Langevin 80 K, dt 2 fs)
repeated ``BENCH_COPIES`` times (default 4: 6,240 atoms), every system for ``BENCH_STEPS``
steps (default 400), through :func:`batchmd.ase.run_frames` (inflight batching, refill every
10 steps, as the CLI), float32. Variants, interleaved round by round (median of the rounds):

- ``none``: no recording;
- ``traj/10``: :class:`~batchmd.trajectory.TrajectoryWriter` every 10 steps (positions, cell);
- ``traj/10 +v,f``: with velocities and forces;
- ``log/10``: :class:`~batchmd.trajectory.ThermoLogHook` every 10 steps;
- ``traj/10 + log/10``: both (what ``batchmd md --trajectory ... --log-every 10`` does);
- ``traj/1``: a frame every step (the worst case: 10x the data).

Wall time includes closing the writers and merging the segments into the final files; CPU
time (``time.process_time``: every thread of the process, the writer's included) is the
steadier measure on a shared machine.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from batchmd.ase import run_frames
from batchmd.dynamics import NVTLangevin
from batchmd.models.lj import LennardJones
from batchmd.trajectory import ThermoLogHook, TrajectoryWriter

from benchmarks import workloads as wl

HERE = Path(__file__).parent
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
STEPS = int(os.environ.get("BENCH_STEPS", 400))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
COPIES = int(os.environ.get("BENCH_COPIES", 4))

VARIANTS = {
    "none": [],
    "traj/10": [("traj", 10, ())],
    "traj/10 +v,f": [("traj", 10, ("velocities", "forces"))],
    "log/10": [("log", 10, None)],
    "traj/10 + log/10": [("traj", 10, ()), ("log", 10, None)],
    "traj/1": [("traj", 1, ())],
}


def one_run(name: str, folder: Path) -> tuple[float, float, int]:
    frames = [a.copy() for _ in range(COPIES) for a in wl.w2_structures()]
    model = LennardJones(sigma=wl.SIGMA, epsilon=wl.EPSILON, cutoff=wl.CUTOFF)
    nvt = NVTLangevin(model, dt=wl.W2_DT, temperature=wl.W2_TEMPERATURE, friction=wl.W2_FRICTION, n_steps=STEPS,
                      random_seed=wl.W2_SEED)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    hooks = []
    for kind, every, fields in VARIANTS[name]:
        if kind == "traj":
            hooks.append(TrajectoryWriter(folder / "t.h5", every, fields, stages=[nvt], flush_every=10))
        else:
            hooks.append(ThermoLogHook(folder / "log.parquet", every, [nvt], flush_every=10))
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    run_frames(frames, [nvt], hooks=hooks, refill_frequency=10, device=DEVICE, dtype=torch.float32, collect=False)
    for hook in hooks:
        hook.close()
        hook.finalize()
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return elapsed, cpu, size


def main(out=None) -> None:
    out = Path(out) if out else HERE / "trajectory_overhead.md"
    folder = Path(tempfile.mkdtemp(prefix="bench_traj_"))
    for name in VARIANTS:  # compile kernels, import h5py / pyarrow, warm caches
        one_run(name, folder / "warm")
    times = {name: [] for name in VARIANTS}
    cpus = {name: [] for name in VARIANTS}
    sizes = {}
    for _ in range(ROUNDS):
        for name in VARIANTS:
            elapsed, cpu, size = one_run(name, folder / "run")
            times[name].append(elapsed)
            cpus[name].append(cpu)
            sizes[name] = size
    shutil.rmtree(folder, ignore_errors=True)
    base = statistics.median(times["none"])
    base_cpu = statistics.median(cpus["none"])
    n_atoms = COPIES * wl.W2_N_ATOMS
    lines = [
        "# Trajectory and thermo-log overhead (W2-like NVT argon)",
        "",
        f"`python -m benchmarks.trajectory_overhead`: {COPIES} x W2 ({16 * COPIES} argon crystals, {n_atoms} atoms), "
        f"Lennard-Jones, Langevin 80 K, dt 2 fs, {STEPS} steps per system, inflight (refill every 10), float32, "
        f"device {DEVICE}; median of {ROUNDS} interleaved rounds; wall time includes closing and merging the files.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if DEVICE.startswith("cuda") else "") + ".",
        "",
        "| variant | wall time (s) | overhead vs none | CPU time, all threads (s) | CPU overhead | files (MB) "
        "| rounds, wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        t = statistics.median(times[name])
        c = statistics.median(cpus[name])
        over = "-" if name == "none" else f"{100 * (t / base - 1):+.1f}%"
        cover = "-" if name == "none" else f"{100 * (c / base_cpu - 1):+.1f}%"
        rounds = ", ".join(f"{x:.2f}" for x in times[name])
        lines.append(f"| {name} | {t:.3f} | {over} | {c:.3f} | {cover} | {sizes[name] / 1e6:.2f} | {rounds} |")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)


def scale_check(n_systems: int = 100_000, frames: int = 5, atoms: int = 8) -> str:
    """Store many systems without running dynamics: writer thread, merge, index, readers (synthetic rows).

    ``python -m benchmarks.trajectory_overhead --scale 100000 [FRAMES ATOMS]``: ``n_systems`` systems of
    ``atoms`` atoms, ``frames`` frames each, interleaved as an inflight run writes them
    (snapshots of 10,000 systems), through the real writer (segments of 64 MiB), then merged.
    """
    import numpy as np

    from batchmd.trajectory import list_systems, read_trajectory
    from batchmd.trajectory.capture import HostSnapshot

    folder = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    store = folder / "big.h5"
    writer = TrajectoryWriter(store, every=1, commit_seconds=1e9)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    chunk = 10_000
    for frame in range(frames):
        for first in range(0, n_systems, chunk):
            ids = np.arange(first, min(first + chunk, n_systems))
            b = len(ids)
            sys_int = np.zeros((b, 8), np.int64)
            sys_int[:, 0], sys_int[:, 1], sys_int[:, 3], sys_int[:, 4], sys_int[:, 5:] = ids, frame, frame, atoms, 1
            cell = np.tile((np.eye(3, dtype=np.float32) * 10).reshape(1, 9), (b, 1))
            snap = {"sys_float": cell, "sys_int": sys_int,
                    "atom_float": rng.random((b * atoms, 3), dtype=np.float32),
                    "atom_int": np.full(b * atoms, 18, np.int64)}
            writer.writer.put(HostSnapshot({k: torch.from_numpy(v) for k, v in snap.items()}))
    writer.writer.mark_done(range(n_systems))
    writer.close()
    written = time.perf_counter() - start
    start = time.perf_counter()
    writer.finalize()
    merged = time.perf_counter() - start
    start = time.perf_counter()
    ids = list_systems(store)
    listed = time.perf_counter() - start
    start = time.perf_counter()
    picks = rng.choice(n_systems, 20, replace=False)
    for sid in picks:
        assert read_trajectory(store, int(sid), as_arrays=True)["positions"].shape == (frames, atoms, 3)
    read = (time.perf_counter() - start) / len(picks)
    size = store.stat().st_size
    shutil.rmtree(folder, ignore_errors=True)
    text = (f"{n_systems} systems x {frames} frames x {atoms} atoms (float32): written through the writer thread "
            f"in {written:.1f} s, merged in {merged:.1f} s, {size / 1e6:.0f} MB; list_systems {listed * 1e3:.0f} ms "
            f"({len(ids)} ids); read_trajectory of one system {read * 1e3:.1f} ms")
    print(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--scale":
        scale_check(int(float(sys.argv[2])), *(int(x) for x in sys.argv[3:5]))
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else None)
