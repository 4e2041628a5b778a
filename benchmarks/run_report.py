"""Run the workloads for every available peer in one process and write the report.

    LD_LIBRARY_PATH=$PWD/.venv-bench/lib OMP_NUM_THREADS=1 \
        .venv-bench/bin/python -m benchmarks.run_report --workloads W1,W2 --rounds 5

Each (peer, workload) runs once untimed-for-comparison first (its "first call", which holds
JIT/kernel loading and torch.compile), then ``--rounds`` timed rounds interleaved across
peers (round 1: every peer, round 2: every peer, ...), because this machine's speed drifts
between runs; medians and ratios come from the same run. ``--cold`` additionally starts one
fresh process per peer and workload to time import + first call and peak memory.

Writes report.md, report.json and report.png (batchmd's sweeps) under --out-dir.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from benchmarks import workloads as wl
from benchmarks.common import PeerUnavailable, Result

HERE = Path(__file__).resolve().parent
PEERS = ["batchmd", "ase", "torchsim", "nvalchemi", "lammps"]
WORKLOADS = ["W1", "W2", "W3", "W4", "W4W"]
ENERGY_TOL = 1e-4  # eV, the issue's per-structure target for batchmd


@dataclass
class Entry:
    """One timed thing: a peer's function for one workload."""

    label: str  # row name in the tables
    peer: str
    workload: str
    func: str  # function name in the peer module
    kwargs: dict


#: W4/W4W: static batching (finished systems skipped by the model, batchmd's default, or
#: recomputed, as by models that cannot skip), and inflight refilling every step (fullest
#: batch) or every 5 steps (fewer refills).
W4_ENTRIES = [("batchmd static", "batchmd", "run_w4_static"),
              ("batchmd static recomputing", "batchmd", "run_w4_static", {"skip_finished": False}),
              ("batchmd inflight rf1", "batchmd", "run_w4_inflight", {"refill_frequency": 1}),
              ("batchmd inflight rf5", "batchmd", "run_w4_inflight", {"refill_frequency": 5}),
              ("batchmd inflight rf1 in place", "batchmd", "run_w4_inflight", {"refill_frequency": 1, "in_place": True}),
              ("batchmd inflight rf5 in place", "batchmd", "run_w4_inflight", {"refill_frequency": 5, "in_place": True})]


#: On a GPU also: in-place refills with the steps between refill points replayed as CUDA graphs.
W4_GPU_ENTRIES = [("batchmd inflight rf5 in place graphs", "batchmd", "run_w4_inflight",
                   {"refill_frequency": 5, "in_place": True, "cuda_graph": True})]


def entries_for(workload: str, peers: list[str]) -> list[Entry]:
    gpu_rows = W4_GPU_ENTRIES if os.environ.get("BENCH_DEVICE", "cpu").startswith("cuda") else []
    table = {
        "W1": [("batchmd", "batchmd", "run_w1"), ("ase", "ase", "run_w1"),
               ("torchsim batch", "torchsim", "run_w1_batch"),
               ("torchsim inflight", "torchsim", "run_w1_inflight"),
               ("nvalchemi", "nvalchemi", "run_w1"), ("lammps", "lammps", "run_w1")],
        "W2": [(p, p, "run_w2") for p in PEERS],
        "W3": [(p, p, "run_w3") for p in PEERS],
        "W4": W4_ENTRIES + gpu_rows,
        "W4W": W4_ENTRIES + gpu_rows,
    }[workload]
    return [Entry(lab, p, workload, f, rest[0] if rest else {}) for lab, p, f, *rest in table if p in peers]



class Inputs:
    """Builds each workload's structures once; every call hands out fresh copies."""

    def __init__(self, quick: bool):
        self.quick = quick
        self.w1_n = 16 if quick else wl.W1_N_STRUCTURES
        self.w2_steps = 50 if quick else wl.W2_STEPS
        self.w3_steps = int(os.environ.get("BENCH_W3_STEPS", 50 if quick else wl.W3_STEPS))
        self.w4_n = int(os.environ.get("BENCH_W4_N", 200 if quick else wl.W4_N_STRUCTURES))
        self.w4_batch = int(os.environ.get("BENCH_W4_BATCH", "64"))

    # Built on first use, so a cold-start child holds only its own workload's structures.
    @functools.cached_property
    def _w1(self):
        return wl.w1_structures(self.w1_n)

    @functools.cached_property
    def _w2(self):
        return wl.w2_structures()

    @functools.cached_property
    def _w3(self):
        return wl.w3_structure()

    @functools.cached_property
    def _w4(self):
        return wl.w4_structures(self.w4_n)

    @functools.cached_property
    def _w4w(self):
        return wl.w4w_structures(self.w4_n)

    def args(self, workload: str) -> tuple[tuple, dict]:
        if workload == "W1":
            return ([a.copy() for a in self._w1],), {}
        if workload == "W2":
            return ([a.copy() for a in self._w2],), {"n_steps": self.w2_steps}
        if workload == "W3":
            return (self._w3.copy(), self.w3_steps), {}
        if workload in ("W4", "W4W"):
            source = self._w4 if workload == "W4" else self._w4w
            return ([a.copy() for a in source], self.w4_batch), {}
        raise KeyError(workload)


def load_peer(name: str):
    """Import a peer runner and run its setup(); returns (module, None) or (None, reason).

    With ``BENCH_<NAME>_PYTHON`` set (e.g. ``BENCH_TORCHSIM_PYTHON=/work/venv-ts312/bin/python``
    for TorchSim 0.6, which needs Python 3.12 and its own torch), the peer runs in a warm
    worker process under that interpreter (``peers/remote.py``).
    """
    try:
        python = os.environ.get(f"BENCH_{name.upper()}_PYTHON")
        if python:
            from benchmarks.peers.remote import RemotePeer

            mod = RemotePeer(name, python)
            mod.setup()
            return mod, None
        mod = importlib.import_module(f"benchmarks.peers.{name}_peer")
        mod.setup()
        return mod, None
    except PeerUnavailable as exc:
        return None, str(exc)
    except Exception as exc:  # a broken install is a skip, not a crash of the whole report
        return None, f"{type(exc).__name__}: {exc}"


def call(mod, entry: Entry, inputs: Inputs) -> Result:
    args, kwargs = inputs.args(entry.workload)
    return getattr(mod, entry.func)(*args, **kwargs, **entry.kwargs)


# ---- machine description ---------------------------------------------------------------------

PACKAGES = ["torch", "warp-lang", "numpy", "ase", "torch-sim-atomistic", "nvalchemi-toolkit",
            "nvalchemi-toolkit-ops", "nvidia-physicsnemo", "lammps", "mpich", "asap3",
            "batchmd", "matplotlib", "pytest-benchmark", "vesin"]


def machine() -> dict:
    from importlib import metadata

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    info = {"cpu": cpu, "logical_cores": os.cpu_count(),
            "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "memory": mem, "python": platform.python_version(), "platform": platform.platform(),
            "packages": versions,
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "LD_LIBRARY_PATH")}}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["device"] = os.environ.get("BENCH_DEVICE", "cpu")
        if info["device"].startswith("cuda") and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.device(info["device"]))
            info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
            info["cuda"] = torch.version.cuda
    except Exception:
        pass
    return info


# ---- cold start (one fresh process per peer and workload) --------------------------------------

def _peak_rss_mib() -> float:
    """This process's peak resident memory (MiB) from /proc (VmHWM).

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used: Linux carries it across ``exec``, so a
    child started by a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_cold(peer: str, workload: str, quick: bool) -> None:
    """Runs in a fresh process: import, build inputs, first call; prints one JSON line."""
    t0 = time.perf_counter()
    mod, why = load_peer(peer)
    t_import = time.perf_counter() - t0
    out = {"peer": peer, "workload": workload, "import_s": t_import}
    if mod is None:
        out["skipped"] = why
    else:
        inputs = Inputs(quick)
        entry = entries_for(workload, [peer])[0]
        t1 = time.perf_counter()
        try:
            res = call(mod, entry, inputs)
            out["first_call_s"] = time.perf_counter() - t1
            out["timed_wall_s"] = res.wall
        except PeerUnavailable as exc:
            out["skipped"] = str(exc)
    out["process_s"] = time.perf_counter() - t0
    out["peak_rss_mib"] = _peak_rss_mib()
    print("COLD-JSON " + json.dumps(out), flush=True)


def run_cold(peers, workloads, quick) -> list[dict]:
    rows = []
    for w in workloads:
        for p in peers:
            if not entries_for(w, [p]):
                continue
            cmd = [sys.executable, "-m", "benchmarks.run_report", "--child-cold", f"{p}:{w}"]
            if quick:
                cmd.append("--quick")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
            wall = time.perf_counter() - t0
            line = next((l for l in proc.stdout.splitlines() if l.startswith("COLD-JSON ")), None)
            if line is None:
                rows.append({"peer": p, "workload": w, "error": proc.stderr[-800:],
                             "wall_with_interpreter_s": wall})
            else:
                row = json.loads(line[len("COLD-JSON "):])
                row["wall_with_interpreter_s"] = wall
                rows.append(row)
            print(f"[cold] {p} {w}: {rows[-1]}", flush=True)
    return rows


# ---- batchmd sweeps --------------------------------------------------------------------------

def sweeps(mod) -> dict:
    """batchmd NVE atom-steps/s against batch size (copies of a 108-atom cell) and against
    system size (one cubic box of n^3 cells)."""
    out = {"batch_size": [], "system_size": []}
    for b in (1, 2, 4, 8, 16, 32, 64, 128):
        structs = [wl.shape_sweep_structure(3) for _ in range(b)]
        out["batch_size"].append({"batch": b, "atoms": wl.n_atoms(structs),
                                  "rate": mod.md_rate(structs)})
        print(f"[sweep] batch {b}: {out['batch_size'][-1]['rate']:.3g} atom-steps/s", flush=True)
    for n in (2, 3, 4, 6, 8, 10, 12, 16, 20):
        s = [wl.shape_sweep_structure(n)]
        out["system_size"].append({"atoms": len(s[0]), "rate": mod.md_rate(s)})
        print(f"[sweep] {len(s[0])} atoms: {out['system_size'][-1]['rate']:.3g}", flush=True)
    return out


def plot(sweep: dict, path: Path) -> bool:
    if not sweep or not sweep.get("batch_size"):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    bs = sweep["batch_size"]
    a.loglog([r["batch"] for r in bs], [r["rate"] for r in bs], "o-")
    a.set_xlabel("batch size (108-atom systems)")
    a.set_ylabel("atom-steps / s (NVE)")
    a.set_title("batchmd: batch size")
    ss = sweep["system_size"]
    b.loglog([r["atoms"] for r in ss], [r["rate"] for r in ss], "s-")
    b.set_xlabel("atoms in one system")
    b.set_title("batchmd: system size")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---- report --------------------------------------------------------------------------------

def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def fmt(x, spec=".3g"):
    if x is None or x != x:
        return "–"
    return format(x, spec)


def rate_fmt(x):
    if x is None or x != x:
        return "–"
    return f"{x / 1e6:.3g} M" if x >= 1e6 else f"{x / 1e3:.3g}k"


def summarize(label_results: dict[str, list[Result]], first: dict[str, Result]) -> dict:
    out = {}
    for label, rs in label_results.items():
        if not rs:
            continue
        r0 = rs[-1]
        out[label] = {
            "peer": r0.peer, "variant": r0.variant, "notes": r0.notes,
            "wall_median": med([r.wall for r in rs]), "wall_min": min(r.wall for r in rs),
            "rate_median": med([r.rate for r in rs]),
            "first_call": first[label].wall if label in first else None,
            "n_force_evals": r0.n_force_evals, "n_steps": r0.n_steps,
            "converged": r0.converged, "energies": r0.energies,
            "extrapolated_from": r0.extrapolated_from, "extra": r0.extra,
            "rounds": len(rs),
        }
    return out


def energy_check(summary: dict, reference: list[float] | None) -> None:
    if reference is None:
        return
    for row in summary.values():
        e = row.get("energies")
        if not e:
            continue
        d = [abs(a - b) for a, b in zip(e, reference)]
        row["max_abs_dE"] = max(d)
        row["n_over_tol"] = sum(x > ENERGY_TOL for x in d)


def w1_table(s: dict) -> list[str]:
    base = s.get("batchmd", {}).get("wall_median")
    ase = s.get("ase", {}).get("wall_median")
    lines = ["| peer | API | W1 wall (median) | min | first call | peer / batchmd | vs ASE | "
             "atom-evals/s | steps min/med/max | converged | max abs dE vs ASE (eV) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in s.items():
        steps = r.get("n_steps")
        st = f"{min(steps)} / {int(statistics.median(steps))} / {max(steps)}" if steps else "–"
        conv = f"{sum(r['converged'])}/{len(r['converged'])}" if r.get("converged") else "–"
        lines.append(
            f"| {label} | {r['variant']} | {fmt(r['wall_median'])} s | {fmt(r['wall_min'])} s | "
            f"{fmt(r['first_call'])} s | {fmt(r['wall_median'] / base if base else None)} | "
            f"{fmt(r['wall_median'] / ase if ase else None, '.2f')} | {rate_fmt(r['rate_median'])} | "
            f"{st} | {conv} | {fmt(r.get('max_abs_dE'), '.2e')} |")
    return lines


def rate_table(s: dict, what: str) -> list[str]:
    base = s.get("batchmd", {}).get("rate_median")
    ase = s.get("ase", {}).get("rate_median")
    lines = [f"| peer | API | {what} atom-steps/s (median) | wall (median) | first call | "
             "batchmd / peer | vs ASE | note |", "|---|---|---|---|---|---|---|---|"]
    for label, r in s.items():
        note = (f"extrapolated from {r['extrapolated_from']} steps" if r.get("extrapolated_from")
                else "")
        lines.append(
            f"| {label} | {r['variant']} | {rate_fmt(r['rate_median'])} | {fmt(r['wall_median'])} s | "
            f"{fmt(r['first_call'])} s | {fmt(base / r['rate_median'] if base else None)} | "
            f"{fmt(r['rate_median'] / ase if ase else None, '.2f')} | {note} |")
    return lines


def w4_table(s: dict) -> list[str]:
    static = s.get("batchmd static", {})
    st = static.get("wall_median")
    st_re = s.get("batchmd static recomputing", {}).get("wall_median")
    occ_static = static.get("extra", {}).get("mean_occupancy")
    e_static = static.get("energies")
    lines = ["| mode | wall (median) | min | mean occupancy | steps min/med/max | static / this | "
             "recomputing static / this | occupancy / static's | refill overhead | ms per refill point | "
             "max abs dE vs static (eV) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in s.items():
        occ = r.get("extra", {}).get("mean_occupancy")
        steps = r.get("n_steps") or []
        spread = f"{min(steps)} / {int(statistics.median(steps))} / {max(steps)}" if steps else "–"
        bound = occ / occ_static if occ and occ_static else None
        e = r.get("energies")
        de = max(abs(a - b) for a, b in zip(e, e_static)) if e and e_static and len(e) == len(e_static) else None
        w = r["wall_median"]
        lines.append(f"| {r['variant']} | {fmt(w)} s | {fmt(r.get('wall_min'))} s | "
                     f"{fmt(occ, '.1%')} | {spread} | {fmt(st / w if st else None)} | "
                     f"{fmt(st_re / w if st_re else None)} | {fmt(bound)} | "
                     f"{fmt(r.get('extra', {}).get('refill_overhead'), '.1%')} | "
                     f"{fmt(r.get('extra', {}).get('refill_ms'), '.2f')} | {fmt(de, '.2e')} |")
    return lines


def write_report(data: dict, out_dir: Path) -> Path:
    m = data["machine"]
    L = ["# batchmd benchmark report", "",
         f"Generated {data['started']} by `python -m benchmarks.run_report {' '.join(data['argv'])}`.",
         f"Rounds: {data['rounds']} timed, interleaved across peers, after one first call each; "
         f"medians reported{' (--quick: reduced workloads)' if data['quick'] else ''}.",
         "Compare ratios within this report only: the machine's speed drifts between runs.", ""]
    for merge in data.get("merged", []):
        what = ", ".join(merge["workloads"]) or "no timed workload"
        L[-1:-1] = [f"Rerun and merged in {merge['started']}: {what}"
                    f"{', and cold starts' if merge.get('cold') else ''} "
                    f"(`{' '.join(f'{k}={v}' for k, v in merge.get('env', {}).items())}"
                    f"{' ' if merge.get('env') else ''}python -m benchmarks.run_report {' '.join(merge['argv'])}`"
                    f"{', ' + merge['note'] if merge.get('note') else ''})."]
    L += [
         "## Machine", "",
         f"- CPU: {m['cpu']}, {m['logical_cores']} logical cores "
         f"({m.get('affinity_cores')} usable), memory {m['memory']}",
         f"- Device for batchmd, TorchSim and nvalchemi: {m.get('device', 'cpu')}"
         + (f" ({m['gpu']}, CUDA {m.get('cuda')})" if m.get("gpu") else ""),
         f"- Python {m['python']} on {m['platform']}; torch threads {m.get('torch_threads')}; "
         f"OMP_NUM_THREADS={m['env'].get('OMP_NUM_THREADS')}",
         "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
         "- Not installed: " + (", ".join(k for k, v in m["packages"].items() if not v) or "none"),
         ""]
    if data.get("lammps_version"):
        L[-1:-1] = [f"- LAMMPS version id {data['lammps_version']}"]
    if data["skipped"]:
        L += ["## Skipped", ""] + [f"- **{k}**: {v}" for k, v in data["skipped"].items()] + [""]
    if data["errors"]:
        L += ["## Errors", ""] + [f"- **{k}**: `{v.splitlines()[-1] if v else ''}`"
                                  for k, v in data["errors"].items()] + [""]
    res = data["results"]
    if "W1" in res:
        q = data["inputs"]
        L += ["## W1: FIRE to fmax 0.01 eV/Å", "",
              f"{q['w1_n']} rattled argon supercells ({q['w1_atoms']} atoms), LJ sigma 3.405 Å, "
              "epsilon 0.0104 eV, cutoff 8.5125 Å (shifted), ASE FIRE defaults, <= 500 steps. "
              "'peer / batchmd' is how many times longer the peer takes than batchmd; "
              "'vs ASE' is wall / ASE's wall (as in shared/PEERS.md). "
              "Energies are checked against ASE's per structure (unshifted LJ energies are "
              "shift-corrected first); batchmd's target is 1e-4 eV.", ""]
        L += w1_table(res["W1"]) + [""]
    if "W2" in res:
        L += ["## W2: NVT Langevin 80 K, 2 fs, friction 0.01/fs", "",
              f"First 16 W1 structures (1,560 atoms), {data['inputs']['w2_steps']} steps.", ""]
        L += rate_table(res["W2"], "W2") + [""]
    if "W3" in res:
        L += ["## W3: NVE, 32,000-atom argon box, 2 fs", "",
              f"{data['inputs']['w3_steps']} steps (ASE and TorchSim run fewer and are "
              "extrapolated, as noted). Target: batchmd >= half of single-core LAMMPS.", ""]
        L += rate_table(res["W3"], "W3") + [""]
    for key, amplitudes in (("W4", "0.01..0.3 Å (the issue's example)"), ("W4W", "0.01..0.6 Å (wide spread)")):
        if key in res:
            L += [f"## {key}: inflight vs static batching (batchmd), rattle {amplitudes}", "",
                  f"{data['inputs']['w4_n']} cells of 32..108 atoms, FIRE to 0.01 eV/Å, "
                  f"{data['inputs']['w4_batch']} slots. Static: batches of that many structures, each "
                  "waiting for its slowest member; by default the model skips systems that finished "
                  "(their forces stay valid), 'recomputing' evaluates them too, as models that cannot "
                  "skip systems do. Inflight: the live batch holds as many atoms as 64 average "
                  "structures and is refilled every 1 or 5 steps; 'refills in place (padded slots)': "
                  "newcomers are written into the live batch's rows (dynamics/slot_layout.py). Target "
                  "(issue 16): inflight >= 1.0x static, no loss, with this model that skips finished "
                  "systems (the 1.5x target belongs to MLIP campaigns, W5). 'occupancy / static's' is what inflight could gain over the "
                  "recomputing static batching if refills were free. See benchmarks/README.md, "
                  "'Reading W4'.", ""]
            L += w4_table(res[key]) + [""]
    if data.get("cold"):
        L += ["## Cold start (fresh process per peer and workload)", "",
              "| peer | workload | import | first call | whole process | peak RSS |",
              "|---|---|---|---|---|---|"]
        for c in data["cold"]:
            if "skipped" in c or "error" in c:
                L.append(f"| {c['peer']} | {c['workload']} | skipped/error | | | |")
                continue
            L.append(f"| {c['peer']} | {c['workload']} | {fmt(c['import_s'])} s | "
                     f"{fmt(c.get('first_call_s'))} s | {fmt(c['wall_with_interpreter_s'])} s | "
                     f"{c['peak_rss_mib']:.0f} MiB |")
        L.append("")
    if data.get("plot"):
        L += ["## batchmd throughput sweeps", "", f"![sweeps]({data['plot']})", ""]
    elif "sweep_skipped" in data:
        L += ["## batchmd throughput sweeps", "", f"Not run: {data['sweep_skipped']}", ""]
    L += ["## Fairness notes", "",
          "- TorchSim: 0.6.x (Python 3.12, run in its own venv through `peers/remote.py`) returns "
          "LJ forces equal to -dE/dx and is used as is; 0.3.0 returned 2x -dE/dx and is halved in "
          "a wrapper. Its `ase_fire` diverges from ASE's FIRE at the first step with "
          "`n_pos > n_min` (it scales alpha before mixing), hence its step counts and energies. "
          "Its LJ energies are unshifted and shift-corrected here; its default neighbor list is "
          "O(N^2) per system.",
          "- nvalchemi-toolkit (0.3.0 here, 0.2.0 before): W1 atoms get unit masses (its FIRE "
          "divides by mass, ASE's does not); FIRE runs inside a FusedStage; its LJ energy is "
          "unshifted (corrected here); its first call costs seconds even with Warp's kernel "
          "cache warm.",
          "- LAMMPS `min_style fire` takes different paths from ASE's FIRE: energies agree to "
          "~0.01 eV, not to round-off. Single thread, `pair_modify shift yes`, "
          "`neighbor 1.0 bin`.",
          "- ASE/TorchSim/nvalchemi run float64 by default (BENCH_*_DTYPE to change); batchmd "
          "float32 (BENCH_BATCHMD_DTYPE).", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(L))
    return path


def merge_into_existing(path: Path, new: dict, new_raw: dict, workloads: list[str]) -> tuple[dict, dict]:
    """The earlier report at ``path`` with this run's workloads, cold rows and sweep put in."""
    if not path.exists():
        raise SystemExit(f"--merge: no earlier report at {path}")
    old = json.loads(path.read_text())
    if old.get("quick") != new.get("quick"):
        raise SystemExit("--merge: this run and the earlier report differ in --quick; rerun both the same way")
    raw = old.pop("raw", {})
    for w in workloads:
        if w in new["results"]:
            old["results"][w] = new["results"][w]
            for key in (w, w + "_first"):
                if key in new_raw:
                    raw[key] = new_raw[key]
    if new.get("cold"):
        rerun = {(c["peer"], c["workload"]) for c in new["cold"]}
        old["cold"] = [c for c in old.get("cold", []) if (c["peer"], c["workload"]) not in rerun] + new["cold"]
    if "sweep" in new:
        old["sweep"], old["plot"] = new["sweep"], new.get("plot")
    for key in ("skipped", "errors"):
        old.setdefault(key, {}).update(new[key])
    old.setdefault("merged", []).append({"started": new["started"], "argv": new["argv"], "rounds": new["rounds"],
                                         "workloads": [w for w in workloads if w in new["results"]],
                                         "cold": bool(new.get("cold")),
                                         "env": {k: v for k, v in os.environ.items() if k.startswith("BENCH_")}})
    return old, raw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="W1,W2", help="comma list of W1,W2,W3,W4,W4W")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list of " + ",".join(PEERS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="W1: 16 structures, W2: 50 steps, W3: 50 steps (extrapolated), W4: 200")
    ap.add_argument("--cold", action="store_true", help="also time a fresh process per peer")
    ap.add_argument("--cold-only", action="store_true", help="only the fresh-process timings (implies --cold)")
    ap.add_argument("--no-sweep", action="store_true", help="skip batchmd's throughput sweeps")
    ap.add_argument("--out-dir", default=str(HERE))
    ap.add_argument("--merge", action="store_true",
                    help="update the existing report.json/report.md of --out-dir with the workloads (and "
                         "cold starts) run now; everything else is kept and the report says what was rerun")
    ap.add_argument("--device", default=None,
                    help="cpu or cuda: where batchmd, TorchSim and nvalchemi run (sets BENCH_DEVICE; "
                         "ASE and LAMMPS always run on the CPU)")
    ap.add_argument("--child-cold", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device is not None:
        os.environ["BENCH_DEVICE"] = args.device  # read by the peer modules, imported below

    if args.child_cold:
        peer, workload = args.child_cold.split(":")
        child_cold(peer, workload, args.quick)
        return 0

    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": argv or sys.argv[1:],
            "rounds": args.rounds, "quick": args.quick, "machine": machine(),
            "skipped": {}, "errors": {}, "results": {}}

    mods = {}
    for p in peers:
        mod, why = load_peer(p)
        if mod is None:
            data["skipped"][p] = why
            print(f"[skip] {p}: {why}", flush=True)
        else:
            mods[p] = mod
    if "lammps" in mods:
        try:
            data["lammps_version"] = mods["lammps"].version()
        except Exception:
            pass

    inputs = Inputs(args.quick)
    data["inputs"] = {"w1_n": inputs.w1_n, "w1_atoms": wl.n_atoms(inputs._w1),
                      "w2_steps": inputs.w2_steps, "w3_steps": inputs.w3_steps,
                      "w4_n": inputs.w4_n, "w4_batch": inputs.w4_batch}

    # W1 energies are checked against ASE's, which are computed (untimed) if ASE isn't run.
    reference = None
    if "W1" in workloads and "ase" not in mods:
        ase_mod, why = load_peer("ase")
        if ase_mod is not None:
            reference = ase_mod.run_w1(inputs.args("W1")[0][0]).energies

    raw = {}
    if args.cold_only:
        args.cold, args.no_sweep = True, True
    for w in ([] if args.cold_only else workloads):
        entries = [e for e in entries_for(w, list(mods)) if e.peer in mods]
        first, results = {}, {e.label: [] for e in entries}
        for e in entries:  # first call: loading, JIT, compile
            try:
                first[e.label] = call(mods[e.peer], e, inputs)
                print(f"[first] {w} {e.label}: {first[e.label].wall:.3g} s", flush=True)
            except PeerUnavailable as exc:
                data["skipped"][f"{e.label} {w}"] = str(exc)
                print(f"[skip] {e.label} {w}: {exc}", flush=True)
            except Exception:
                data["errors"][f"{e.label} {w}"] = traceback.format_exc()
                print(f"[error] {e.label} {w}:\n{traceback.format_exc()}", flush=True)
        live = [e for e in entries if e.label in first]
        for r in range(args.rounds):
            for e in live:
                try:
                    res = call(mods[e.peer], e, inputs)
                    results[e.label].append(res)
                    print(f"[round {r + 1}] {w} {e.label}: {res.wall:.3g} s, "
                          f"{res.rate:.3g} /s", flush=True)
                except Exception:
                    data["errors"][f"{e.label} {w} round {r + 1}"] = traceback.format_exc()
        if args.rounds == 0:
            results = {k: [v] for k, v in first.items()}
        summary = summarize(results, first)
        if w == "W1":
            ref = summary.get("ase", {}).get("energies") or reference
            energy_check(summary, ref)
        data["results"][w] = summary
        raw[w] = {k: [x.to_dict() for x in v] for k, v in results.items()}
        raw[w + "_first"] = {k: v.to_dict() for k, v in first.items()}

    if args.cold:
        data["cold"] = run_cold([p for p in peers if p in mods], [w for w in workloads if not w.startswith("W4")],
                                args.quick)

    if args.no_sweep:
        data["sweep_skipped"] = "--no-sweep"
    elif "batchmd" not in mods:
        data["sweep_skipped"] = data["skipped"].get("batchmd", "batchmd not selected")
    else:
        try:
            data["sweep"] = sweeps(mods["batchmd"])
            if plot(data["sweep"], out_dir / "report.png"):
                data["plot"] = "report.png"
        except Exception:
            data["sweep_skipped"] = traceback.format_exc().splitlines()[-1]

    if args.merge:
        data, raw = merge_into_existing(out_dir / "report.json", data, raw, workloads)
    (out_dir / "report.json").write_text(json.dumps({**data, "raw": raw}, indent=1, default=str))
    path = write_report(data, out_dir)
    print(f"wrote {path}, {out_dir / 'report.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
