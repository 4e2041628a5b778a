"""Equilibration as graduation against fixed-length runs: time to solution on a mixed set.

    PYTHONPATH=src:. python -m benchmarks.equilibration [--quick] [--systems N] [--device cpu|cuda] [--repeat R]
        [--json PATH]

The set: ``N`` (default 96; 32 with ``--quick``) 32-atom Lennard-Jones argon crystals, NVT
Langevin at 40 K (friction 0.002/fs, dt 5 fs), of three kinds, interleaved:

* *near* (1/2): rattled 0.02 Å, Maxwell-Boltzmann momenta at 80 K (equipartition halves it);
* *hot* (1/4): momenta at 320 K, cooled by the thermostat (energy relaxation time 1/friction = 500 fs);
* *disordered* (1/4): rattled 0.25 Å: the potential energy released heats the crystal first.

Two ways to get ``production_steps`` (default 2000; 1000 with ``--quick``) of equilibrated
production per system, both inflight with the same live-batch budget (``slots`` systems):

1. **equilibrate-then-produce**: :class:`~batchmd.dynamics.equilibration.Equilibrate` --
   each system runs until pymbar's detection (plus a trend test) passes, then its
   production, then graduates and hands its slot to the next system;
2. **fixed length** (the conventional practice): every system runs the same
   ``N_eq + production_steps`` steps, with ``N_eq`` the *largest* equilibration time that
   run 1 detected -- an oracle: in practice ``N_eq`` is guessed, and guessed generously.

Reported: wall and process CPU time of each (time to solution; on a shared machine CPU time is
the steadier), their ratios, steps per system, mean live-batch
occupancy (``RunStats.occupancy_sum / steps``), and the agreement of the production averages
(T, E_pot): run 2's averages are taken over its last ``production_steps`` steps, and the
fraction of systems whose means agree within 4 combined standard errors (pymbar) is printed.
The fixed run's recording hook costs it a little; the note (``equilibration.md``) states it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings

import numpy as np


def build_frames(n: int):
    from ase.build import bulk
    from ase.md import velocitydistribution as vd

    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    frames, kinds = [], []
    for i in range(n):
        kind = ("near", "hot", "near", "disordered")[i % 4]
        atoms = bulk("Ar", "fcc", a=5.3, cubic=True) * (2, 2, 2)
        atoms.rattle(0.25 if kind == "disordered" else 0.02, seed=i)
        thermalize(atoms, temperature_K=320.0 if kind == "hot" else 80.0, rng=np.random.default_rng(i))
        vd.Stationary(atoms)
        frames.append(atoms)
        kinds.append(kind)
    return frames, kinds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 systems, 1000 production steps (~1 min on 2 cores)")
    parser.add_argument("--systems", type=int, default=None)
    parser.add_argument("--slots", type=int, default=None, help="systems in the live batch (default: systems / 4)")
    parser.add_argument("--production-steps", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time each run this many times, interleaved, and keep the fastest (the results are "
                             "deterministic: the same every time)")
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    import torch

    from batchmd.ase import run_frames
    from batchmd.dynamics import NVTLangevin
    from batchmd.dynamics.equilibration import Equilibrate, _observables, production_statistics
    from batchmd.dynamics.hooks import Hook, HookStage
    from batchmd.models.lj import LennardJones

    n = args.systems or (32 if args.quick else 96)
    production = args.production_steps or (1000 if args.quick else 2000)
    slots = args.slots or max(1, n // 4)
    frames, kinds = build_frames(n)
    model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
    common = dict(max_atoms=32 * slots, max_batch_size=slots, refill_frequency=10, device=args.device,
                  dtype=torch.float64)

    def nvt(n_steps=None, seed=11):
        return NVTLangevin(model, dt=5.0, temperature=40.0, friction=0.002, random_seed=seed, n_steps=n_steps)

    # Warm-up: Warp kernels compiled and torch allocators primed outside the timings.
    run_frames(frames[:2], [nvt(20)], **common)
    run_frames(frames[:2], [Equilibrate(nvt(), production_steps=100, max_equilibration_steps=20,
                                        min_samples=8)], **common)

    def run_equilibrate():
        return run_frames(frames, [Equilibrate(nvt(), production_steps=production, max_equilibration_steps=20000)],
                          **common)

    def timed(function):
        t0, c0 = time.perf_counter(), time.process_time()
        out = function()
        return out, time.perf_counter() - t0, time.process_time() - c0

    eq, t_eq, c_eq = timed(run_equilibrate)
    info = [a.info for a in eq.frames]
    statuses = [i["equilibration_status"] for i in info]
    detected = np.array([i["equilibration_detected_at_step"] for i in info])
    steps_eq = np.array([i["n_steps"] for i in info])
    n_eq_fixed = int(detected.max())
    fixed_steps = n_eq_fixed + production

    records = []

    class Record(Hook):
        """The fixed run's production samples (last ``production`` steps), every 10 steps: one host copy a call."""
        stage = HookStage.AFTER_STEP
        frequency = 10

        def __call__(self, batch, context):
            moving = (batch["status"] == 0) & (batch["stage_steps"] > n_eq_fixed)
            values = _observables(batch)[:, :2].double()
            ids = batch["system_id"].reshape(-1).to(values.dtype)
            records.append(torch.cat([moving.to(values.dtype)[:, None], ids[:, None], values], dim=1).cpu())

    # Another noise seed: the two runs are independent trajectories (with the same seed they would be the same
    # trajectory, batchmd's Langevin noise being keyed on the seed, the system and the step).
    def run_fixed():
        records.clear()
        return run_frames(frames, [nvt(fixed_steps, seed=12)], hooks=[Record()], **common)

    fixed, t_fixed, c_fixed = timed(run_fixed)
    for _ in range(args.repeat - 1):  # interleaved: both see the same machine load
        _, t, c = timed(run_equilibrate)
        t_eq, c_eq = min(t_eq, t), min(c_eq, c)
        _, t, c = timed(run_fixed)
        t_fixed, c_fixed = min(t_fixed, t), min(c_fixed, c)

    series: dict[int, list] = {}
    for rows in records:
        for moving, ident, *values in rows.numpy():
            if moving:
                series.setdefault(int(ident), []).append(values)
    agree = {"temperature_K": 0, "potential_energy_eV": 0}
    outliers = []  # (system, kind, observable, z, effective samples of the equilibrate run's production)
    zs = {name: [] for name in agree}
    for k, i in enumerate(info):
        data = np.array(series.get(k, []))
        if i["equilibration_status"] != "equilibrated" or len(data) < 10:
            continue
        for c, name in enumerate(agree):
            ref_mean, ref_sem, _ = production_statistics(data[:, c])
            mean, sem = i[f"production_mean_{name}"], i[f"production_sem_{name}"]
            z = abs(mean - ref_mean) / math.hypot(sem, ref_sem)
            agree[name] += int(z < 4)
            zs[name].append((mean - ref_mean) / math.hypot(sem, ref_sem))
            if z >= 4:
                outliers.append((k, kinds[k], name, round(z, 1), round(i["production_samples"]
                                                                      / i[f"production_g_{name}"], 1)))

    def occupancy(stats):
        return stats.occupancy_sum / max(1, stats.steps)

    by_kind = {kind: float(np.mean([d for d, k in zip(detected, kinds) if k == kind])) for kind in sorted(set(kinds))}
    result = {
        "device": args.device, "systems": n, "atoms_per_system": 32, "slots": slots, "production_steps": production,
        "equilibrated": statuses.count("equilibrated"),
        "detected_step_min": int(detected.min()), "detected_step_median": float(np.median(detected)),
        "detected_step_max": n_eq_fixed, "mean_detected_step_by_kind": by_kind,
        "equilibrate_then_produce_s": round(t_eq, 2), "fixed_length_s": round(t_fixed, 2),
        "speedup": round(t_fixed / t_eq, 2), "equilibrate_then_produce_cpu_s": round(c_eq, 2),
        "fixed_length_cpu_s": round(c_fixed, 2), "speedup_cpu": round(c_fixed / c_eq, 2),
        "steps_per_system_equilibrate": float(steps_eq.mean()), "steps_per_system_fixed": fixed_steps,
        "loop_steps_equilibrate": eq.stats.steps, "loop_steps_fixed": fixed.stats.steps,
        "occupancy_equilibrate": round(occupancy(eq.stats), 3), "occupancy_fixed": round(occupancy(fixed.stats), 3),
        "refill_seconds_equilibrate": round(eq.stats.refill_seconds, 2),
        "agree_within_4_sem": {name: f"{count}/{n}" for name, count in agree.items()},
        "outliers": outliers, "std_of_z": {name: round(float(np.std(v)), 2) for name, v in zs.items()},
    }
    print(f"{n} systems x 32 atoms, {slots} slots, production {production} steps, device {args.device}, "
          f"best of {args.repeat}")
    print(f"equilibrated: {result['equilibrated']}/{n}; detected at step {result['detected_step_min']} .. "
          f"{n_eq_fixed} (median {result['detected_step_median']:.0f}); by kind: "
          + ", ".join(f"{k} {v:.0f}" for k, v in by_kind.items()))
    print("| run | wall s | CPU s | steps/system (mean) | loop steps | occupancy |")
    print("|---|---|---|---|---|---|")
    print(f"| equilibrate-then-produce | {t_eq:.1f} | {c_eq:.1f} | {steps_eq.mean():.0f} | {eq.stats.steps} | "
          f"{result['occupancy_equilibrate']:.2f} |")
    print(f"| fixed length ({n_eq_fixed} + {production}) | {t_fixed:.1f} | {c_fixed:.1f} | {fixed_steps} | "
          f"{fixed.stats.steps} | {result['occupancy_fixed']:.2f} |")
    print(f"time-to-solution ratio (fixed / equilibrate): wall {result['speedup']:.2f}x, CPU "
          f"{result['speedup_cpu']:.2f}x; refill points of run 1: {eq.stats.refill_seconds:.1f} s (tests, pymbar)")
    print(f"production means agree within 4 combined SEM: T {result['agree_within_4_sem']['temperature_K']}, "
          f"E_pot {result['agree_within_4_sem']['potential_energy_eV']}")
    spread = result["std_of_z"]
    print(f"std of the differences in combined SEM (1 if the error bars are right): T {spread['temperature_K']}, "
          f"E_pot {spread['potential_energy_eV']}")
    for k, kind, name, z, neff in outliers:
        print(f"  system {k} ({kind}): {name} differs by {z} combined SEM (effective production samples {neff})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    main()
