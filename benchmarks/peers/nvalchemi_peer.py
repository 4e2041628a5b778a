"""nvalchemi-toolkit 0.3.0 (or 0.2.0): FIRE inside a FusedStage (W1), NVTLangevin (W2), NVE (W3).

0.3.0 needs Python >= 3.11 and numpy >= 2, which batchmd's benchmark venv (numpy 2.3.5 for
0.2.0) does not give it: run it in the TorchSim venv through ``peers/remote.py``
(``BENCH_NVALCHEMI_PYTHON=/work/venv-ts312/bin/python``; torch 2.14.1 there). The same
calls work with both versions. Measured on the loaded 2-core machine (2026-11-29, W1 quick):
its W1 steps are 33 / 41 / 44 (ASE 29 / 31 / 41) and final energies within 6.9e-3 eV of ASE's.

Fairness settings (shared/PEERS.md):
- Its FIRE integrates ``v += dt F/m`` while ASE's uses no masses, so W1 atoms get unit
  masses; dt 0.1 and dt_max 1.0 are in ASE time units there, as in ASE.
- ``FIRE.run(batch)`` takes its first step before computing forces, so FIRE runs inside a
  ``FusedStage``, which primes forces and freezes converged systems.
- ``NeighborListHook`` is registered at ``DynamicsStage.BEFORE_COMPUTE``.
- Its LJ energy is unshifted; the runner adds ASE's shift (pairs inside the cutoff times
  V(rc)) outside the timed region before energies are compared.
- The first call in a process costs seconds even with Warp's kernel cache warm: the harness
  reports that first call ("cold") apart from the warm rounds.
"""

from __future__ import annotations

import os

from benchmarks import workloads as wl
from benchmarks.common import Result, Timer, bench_device, require
from benchmarks.peers.shift import shift_energy

NAME = "nvalchemi"
DTYPE = os.environ.get("BENCH_NVALCHEMI_DTYPE", "float64")


def setup() -> None:
    require("nvalchemi", "nvalchemi-toolkit (0.3.0 in a Python >= 3.11 venv with numpy >= 2, or 0.2.0)")
    require("nvalchemi.dynamics", "nvalchemi-toolkit")


def _version() -> str:
    from importlib.metadata import version

    return version("nvalchemi-toolkit")


def _dtype():
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[DTYPE]


def _batch(structures, unit_masses: bool = False):
    import torch
    from nvalchemi.data import AtomicData, Batch

    data = []
    for atoms in structures:
        a = atoms.copy()
        if unit_masses:
            a.set_masses([1.0] * len(a))
        d = AtomicData.from_atoms(a, dtype=_dtype())
        data.append(d)
    batch = Batch.from_data_list(data)
    if bench_device() != "cpu":
        batch = batch.to(bench_device())
    # compute() writes into existing fields only: give it forces and energy to fill.
    batch["forces"] = torch.zeros_like(batch.positions)
    batch["energy"] = torch.zeros(batch.num_graphs, 1, dtype=batch.positions.dtype, device=batch.positions.device)
    return batch


def _model():
    from nvalchemi.models.lj import LennardJonesModelWrapper

    return LennardJonesModelWrapper(epsilon=wl.EPSILON, sigma=wl.SIGMA, cutoff=wl.CUTOFF)


def _nl_hook(model):
    from nvalchemi.dynamics import DynamicsStage
    from nvalchemi.hooks import NeighborListHook

    return NeighborListHook(model.model_config.neighbor_config, stage=DynamicsStage.BEFORE_COMPUTE)


def run_w1(structures) -> Result:
    setup()
    from nvalchemi.dynamics import FIRE, ConvergenceHook, FusedStage

    batch = _batch(structures, unit_masses=True)
    model = _model()
    fire = FIRE(model, dt=0.1, dt_max=1.0, n_steps=wl.FIRE_MAX_STEPS,
                convergence_hook=ConvergenceHook.from_fmax(wl.FMAX))
    fused = FusedStage(sub_stages=[(0, fire)])
    fused.register_hook(_nl_hook(model))
    with Timer() as t:
        out = fused.run(batch, n_steps=wl.FIRE_MAX_STEPS + 1)
    n_steps = None
    counter = getattr(out, "n_steps_counter_0", None)
    if counter is not None:
        n_steps = [int(s) for s in counter.reshape(-1).tolist()]
    status = out.status.reshape(-1).tolist()
    energies = [float(e) for e in out.energy.reshape(-1).double().tolist()]
    positions = out.positions.detach().double().cpu().numpy()
    ptr = out.batch_ptr.tolist()
    energies = [shift_energy(a, positions[ptr[i]:ptr[i + 1]], e)
                for i, (a, e) in enumerate(zip(structures, energies))]
    loop_steps = int(fused.step_count) if hasattr(fused, "step_count") else None
    if n_steps is not None:
        atom_evals = sum((s + 1) * len(a) for s, a in zip(n_steps, structures))
    else:
        atom_evals = wl.n_atoms(structures) * ((loop_steps or 0) + 1)
    return Result(NAME, "W1", t.elapsed, atom_evals, (loop_steps or 0) + 1, energies, n_steps,
                  [s == fused.exit_status for s in status],
                  variant=f"FusedStage(FIRE), one batch ({DTYPE}, {bench_device()}, nvalchemi {_version()})",
                  notes=["unit masses", "LJ energy shift-corrected outside the timing"])


def _md(structures, method) -> float:
    from nvalchemi.dynamics import FusedStage

    batch = _batch(structures)
    model = method.model
    fused = FusedStage(sub_stages=[(0, method)])
    fused.register_hook(_nl_hook(model))
    with Timer() as t:
        fused.run(batch, n_steps=method.n_steps)
    return t.elapsed


def run_w2(structures, n_steps: int = wl.W2_STEPS) -> Result:
    setup()
    from nvalchemi.dynamics import NVTLangevin

    dyn = NVTLangevin(_model(), dt=wl.W2_DT, temperature=wl.W2_TEMPERATURE,
                      friction=wl.W2_FRICTION, random_seed=0, n_steps=n_steps)
    wall = _md(structures, dyn)
    return Result(NAME, "W2", wall, wl.n_atoms(structures) * n_steps, n_steps + 1,
                  variant=f"FusedStage(NVTLangevin), one batch ({DTYPE}, {bench_device()}, nvalchemi {_version()})")


W3_MAX_STEPS = int(os.environ.get("BENCH_W3_PEER_STEPS", "20"))  # ~8k atom-steps/s on 32k atoms here: 1,000 steps would take minutes


def run_w3(atoms, n_steps: int) -> Result:
    setup()
    from nvalchemi.dynamics import NVE

    run_steps = min(n_steps, W3_MAX_STEPS)
    dyn = NVE(_model(), dt=wl.W3_DT, n_steps=run_steps)
    wall = _md([atoms], dyn)
    return Result(NAME, "W3", wall * n_steps / run_steps, len(atoms) * n_steps, n_steps + 1,
                  extrapolated_from=run_steps if run_steps < n_steps else None,
                  variant=f"FusedStage(NVE) ({DTYPE}, {bench_device()}, nvalchemi {_version()})")
