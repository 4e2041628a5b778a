"""Cost of batchmd's TorchSim bridge (batchmd.models.torchsim) per call, against the model's forward.

Run (in an environment with torch-sim-atomistic >= 0.6 and mace-torch, e.g. ``.ci/run-torchsim``'s):
``python -m benchmarks.torchsim_bridge_overhead --sizes 16,64 --calls 5`` (prints a Markdown
table to paste into ``benchmarks/mlip_step_split.md``). ``BENCH_DEVICE=cuda`` runs it on a GPU
(synchronised around each phase).

Workload: rattled 8-atom rocksalt NaCl cells (as ``mlip_step_split.py``'s MACE rows), ``B`` per
batch, through (a) mace's own TorchSim adapter ``MaceTorchSimModel`` wrapping a small
random-weight MACE (``batchmd.models.mlip.mace.random_mace``) and (b) TorchSim's
``LennardJonesModel`` (a cheap model, where the bridge's share is largest). Positions move a
little before every call (as a dynamics step does). Phases of one bridge call
(``TorchSimModel.timer``):

- ``convert``: which systems to evaluate (one host read of a [B] code) and the SimState (built
  on the first call of a layout, then new positions and cell assigned);
- ``model``: the TorchSim model's forward (its neighbor list, network, forces and stress);
- ``outputs``: zero-volume stress masking, dtype/device casts, writing into the outputs.

``bridge share`` = (convert + outputs) / call (medians of interleaved calls, after 2 warm-up
calls). ``direct`` times ``ts_model(state)`` on a state built beforehand, the cost without batchmd; ``first call`` is the convert phase when the layout is
new (SimState construction and validation). ``batchmd's own adapter``: the same batch through
batchmd's MACE adapter (``load_model("mace:...")``, batchmd's edge list) / batchmd's Warp
Lennard-Jones, for scale.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch
from ase.build import bulk

DEVICE = os.environ.get("BENCH_DEVICE", "cpu")


def _sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


class PhaseTimer:
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


def frames(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        out.append(atoms)
    return out


def measure(ts_model, count: int, dtype, calls: int, native=None, warmup: int = 2) -> dict:
    """Medians (ms) over ``calls`` interleaved bridge calls and direct ``ts_model(state)`` calls."""
    from batchmd.data import Batch
    from batchmd.models.torchsim import TorchSimModel

    batch = Batch.from_ase(frames(count), dtype=dtype, device=DEVICE)
    bridge = TorchSimModel(ts_model)
    first = PhaseTimer()
    bridge.timer = first
    bridge(batch)  # first call: the SimState is built
    from torch_sim import SimState

    state = SimState(positions=batch.positions.clone(), masses=batch.atomic_masses.clone(),
                     cell=batch.cell.transpose(1, 2).clone(), pbc=True, atomic_numbers=batch.atomic_numbers.long(),
                     system_idx=batch.batch_idx.long())
    gen = torch.Generator(device="cpu").manual_seed(1)
    rows = defaultdict(list)
    for k in range(warmup + calls):
        batch.positions.add_(1e-3 * torch.randn(batch.positions.shape, generator=gen, dtype=dtype).to(DEVICE))
        timer = PhaseTimer()
        bridge.timer = timer
        _sync()
        t0 = time.perf_counter()
        bridge(batch)
        _sync()
        t1 = time.perf_counter()
        state.positions = batch.positions.clone()
        _sync()
        t2 = time.perf_counter()
        ts_model(state)
        _sync()
        t3 = time.perf_counter()
        if native is not None:
            native(batch)
        _sync()
        t4 = time.perf_counter()
        if k >= warmup:
            rows["native"].append(t4 - t3)
            for name, value in timer.totals.items():
                rows[name].append(value)
            rows["call"].append(t1 - t0)
            rows["direct"].append(t3 - t2)
    ms = {k: 1e3 * float(np.median(v)) for k, v in rows.items()}
    ms["first_convert"] = 1e3 * first.totals["convert"]
    ms["atoms"] = batch.num_nodes
    return ms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,64")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="mace,lj")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(DEVICE)
    models, natives = {}, {}
    if "mace" in args.models:
        from mace.calculators.mace_torchsim import MaceTorchSimModel

        from batchmd.models.mlip.mace import random_mace

        path = os.path.join(tempfile.mkdtemp(), "small_mace.model")
        torch.save(random_mace(seed=0), path)
        models["MaceTorchSimModel (small MACE)"] = MaceTorchSimModel(path, device=device, dtype=dtype)
        from batchmd.models import load_model

        natives["MaceTorchSimModel (small MACE)"] = load_model(f"mace:{path}")
    if "lj" in args.models:
        from torch_sim.models.lennard_jones import LennardJonesModel

        models["TorchSim LennardJonesModel"] = LennardJonesModel(sigma=2.5, epsilon=0.01, cutoff=6.0, dtype=dtype,
                                                                 compute_stress=True, device=device)
        from batchmd.models.lj import LennardJones

        natives["TorchSim LennardJonesModel"] = LennardJones(sigma=2.5, epsilon=0.01, cutoff=6.0, compute_stress=True)
    print(f"| model | structures | atoms | convert | model | outputs | call | bridge share | direct "
          f"ts_model(state) | first-call convert | batchmd's own adapter |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, ts_model in models.items():
        for count in [int(s) for s in args.sizes.split(",")]:
            ms = measure(ts_model, count, dtype, args.calls, natives.get(name))
            share = (ms["convert"] + ms["outputs"]) / ms["call"]
            print(f"| {name} | {count} | {ms['atoms']} | {ms['convert']:.2f} | {ms['model']:.1f} | "
                  f"{ms['outputs']:.2f} | {ms['call']:.1f} | {100 * share:.2f}% | {ms['direct']:.1f} | "
                  f"{ms['first_convert']:.2f} | {ms.get('native', float('nan')):.1f} |", flush=True)


if __name__ == "__main__":
    main()
