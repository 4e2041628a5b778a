"""batchmd through its public API (skipped with a message until FIRE and LJ land).

The API this runner expects:

    from batchmd.data import Batch
    from batchmd.models.lj import LennardJones
    from batchmd.dynamics import FIRE, NVE, NVTLangevin, ConvergenceHook

    batch = Batch.from_ase(atoms_list, dtype=torch.float32)
    model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
    out = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=500).run(batch)
    out.energies [B,1], out.n_steps [B], out.status [B] (0 active, 1 converged, 2 out of steps)
    NVTLangevin(model, dt=2.0, temperature=80.0, friction=0.01, random_seed=0, n_steps=200).run(batch)
    NVE(model, dt=2.0, n_steps=1000).run(batch)

W4 runs static batching and inflight batching (FusedStage + SizeAwareSampler) over the same
structures, with the same live-batch load.
"""

from __future__ import annotations

import os

from benchmarks import workloads as wl
from benchmarks.common import PeerUnavailable, Result, Timer, bench_device, require

NAME = "batchmd"
DTYPE = os.environ.get("BENCH_BATCHMD_DTYPE", "float32")
DEVICE = os.environ.get("BENCH_BATCHMD_DEVICE", bench_device())


def setup() -> None:
    require("batchmd", "-e /work/main")
    try:
        from batchmd.data import Batch  # noqa: F401
        from batchmd.dynamics import FIRE, NVE, ConvergenceHook, NVTLangevin  # noqa: F401
        from batchmd.models.lj import LennardJones  # noqa: F401
    except Exception as exc:
        raise PeerUnavailable(
            f"batchmd's public API is not there yet ({type(exc).__name__}: {exc}); "
            "needs batchmd.data.Batch, batchmd.models.lj.LennardJones and "
            "batchmd.dynamics.{FIRE, NVE, NVTLangevin, ConvergenceHook}"
        ) from exc


def _torch_dtype():
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[DTYPE]


def _batch(structures):
    from batchmd.data import Batch

    batch = Batch.from_ase(structures, dtype=_torch_dtype())
    return batch.to(DEVICE) if DEVICE != "cpu" and hasattr(batch, "to") else batch


def _model(skip_finished: bool = True):
    from batchmd.models.lj import LennardJones

    if skip_finished:
        return LennardJones(sigma=wl.SIGMA, epsilon=wl.EPSILON, cutoff=wl.CUTOFF)

    class RecomputingLennardJones(LennardJones):
        """Evaluates finished systems too, as models that cannot skip systems do."""

        supports_skip_finished = False

    return RecomputingLennardJones(sigma=wl.SIGMA, epsilon=wl.EPSILON, cutoff=wl.CUTOFF)


CUDA_GRAPH = os.environ.get("BENCH_BATCHMD_CUDA_GRAPH", "auto")  # "0": eager steps on GPUs too


def _where() -> str:
    """Dtype and device for the variant label (and 'no CUDA graphs' when they are turned off)."""
    off = CUDA_GRAPH == "0" and DEVICE.startswith("cuda")
    return f"{DTYPE}, {DEVICE}" + (", no CUDA graphs" if off else "")


def _configured(method):
    """``method`` with its run loop's CUDA-graph policy set from ``BENCH_BATCHMD_CUDA_GRAPH``."""
    method._solo_loop().cuda_graph = False if CUDA_GRAPH == "0" else "auto"
    return method


def _sync():
    if DEVICE.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _fire(n_steps: int = wl.FIRE_MAX_STEPS, skip_finished: bool = True):
    from batchmd.dynamics import FIRE, ConvergenceHook

    return _configured(FIRE(_model(skip_finished), convergence_hook=ConvergenceHook.from_forces(wl.FMAX),
                            n_steps=n_steps))


def relax(structures) -> tuple[Result, object]:
    """One batched FIRE over ``structures``; returns the Result and the final batch."""
    setup()
    batch = _batch(structures)
    fire = _fire()
    _sync()
    with Timer() as t:
        out = fire.run(batch)
        _sync()
    energies = out.energies.reshape(-1).double().cpu().tolist()
    steps = out.n_steps.reshape(-1).cpu().tolist()
    status = out.status.reshape(-1).cpu().tolist()
    n_loop = max(steps) + 1  # one priming evaluation, then one per step
    atom_evals = sum((s + 1) * len(a) for s, a in zip(steps, structures))
    res = Result(NAME, "W1", t.elapsed, atom_evals, n_loop, energies, [int(s) for s in steps],
                 [st == 1 for st in status], variant=f"FIRE, one batch ({_where()})")
    return res, out


def run_w1(structures) -> Result:
    return relax(structures)[0]


def run_w2(structures, n_steps: int = wl.W2_STEPS) -> Result:
    setup()
    from batchmd.dynamics import NVTLangevin

    batch = _batch(structures)
    dyn = _configured(NVTLangevin(_model(), dt=wl.W2_DT, temperature=wl.W2_TEMPERATURE,
                                  friction=wl.W2_FRICTION, random_seed=0, n_steps=n_steps))
    _sync()
    with Timer() as t:
        dyn.run(batch)
        _sync()
    return Result(NAME, "W2", t.elapsed, wl.n_atoms(structures) * n_steps, n_steps + 1,
                  variant=f"NVTLangevin, one batch ({_where()})")


def run_w3(atoms, n_steps: int) -> Result:
    setup()
    from batchmd.dynamics import NVE

    batch = _batch([atoms])
    dyn = _configured(NVE(_model(), dt=wl.W3_DT, n_steps=n_steps))
    _sync()
    with Timer() as t:
        dyn.run(batch)
        _sync()
    return Result(NAME, "W3", t.elapsed, len(atoms) * n_steps, n_steps + 1,
                  variant=f"NVE ({_where()})")


def md_rate(structures, n_steps: int = 50) -> float:
    """NVE atom-steps per second on one batch of ``structures`` (for the sweeps)."""
    setup()
    from batchmd.dynamics import NVE

    batch = _batch(structures)
    NVE(_model(), dt=wl.W3_DT, n_steps=2).run(_batch(structures))  # warm kernels
    dyn = NVE(_model(), dt=wl.W3_DT, n_steps=n_steps)
    _sync()
    with Timer() as t:
        dyn.run(batch)
        _sync()
    return wl.n_atoms(structures) * n_steps / t.elapsed


# ---- W4: static vs inflight batching --------------------------------------------------------

def run_w4_static(structures, batch_size: int, skip_finished: bool = True) -> Result:
    """Fixed batches of ``batch_size`` systems; each batch waits for its slowest member.

    Occupancy = useful atom-steps / (atoms in the batch x steps the batch ran), the same
    definition as batchmd's inflight ``RunStats.mean_occupancy`` (atoms of active systems
    over the live batch's capacity).
    """
    setup()
    fire = _fire(skip_finished=skip_finished)
    energies, steps, useful, capacity = [], [], 0, 0
    with Timer() as t:
        for i in range(0, len(structures), batch_size):
            chunk = structures[i:i + batch_size]
            out = fire.run(_batch(chunk))
            _sync()
            s = [int(x) for x in out.n_steps.reshape(-1).cpu().tolist()]
            energies += out.energies.reshape(-1).double().cpu().tolist()
            steps += s
            sizes = [len(a) for a in chunk]
            useful += sum(n * k for n, k in zip(sizes, s))
            capacity += sum(sizes) * max(s)
    atom_evals = sum((s + 1) * len(a) for s, a in zip(steps, structures))
    return Result(NAME, "W4", t.elapsed, atom_evals, None, energies, steps,
                  variant=f"static, batch {batch_size} ({_where()})" + ("" if skip_finished else ", finished systems recomputed"),
                  extra={"mean_occupancy": useful / capacity if capacity else float("nan")})


def _inflight(structures, batch_size: int, refill_frequency: int | None = None, in_place: bool = False,
              cuda_graph: bool = False):
    """FIRE with inflight refill (FusedStage + SizeAwareSampler): energies, n_steps, occupancy.

    The live batch holds at most ``batch_size`` systems and as many atoms as the
    ``batch_size`` average-sized structures, so it carries the same load as a static batch.
    """
    import torch

    from batchmd.ase import AtomsDataset
    from batchmd.dynamics import FusedStage, SizeAwareSampler
    from batchmd.dynamics.sinks import HostMemory

    mean_atoms = sum(len(a) for a in structures) / len(structures)
    max_atoms = max(int(round(batch_size * mean_atoms)), max(len(a) for a in structures))
    sampler = SizeAwareSampler(AtomsDataset(structures, dtype=_torch_dtype()), max_atoms=max_atoms,
                               max_batch_size=batch_size, prefetch=int(os.environ.get("BENCH_W4_PREFETCH", "0")))
    sink = HostMemory(capacity=len(structures))
    if refill_frequency is None:
        refill_frequency = int(os.environ.get("BENCH_W4_REFILL", "5"))
    fused = FusedStage([_fire()], sampler=sampler, sinks=[sink], refill_frequency=refill_frequency,
                       device=DEVICE, refill_in_place=in_place, cuda_graph=True if cuda_graph else "auto")
    fused.run(batch=None)
    _sync()
    out = sink.drain()
    order = torch.argsort(out["input_index"].reshape(-1))
    return {
        "energies": out.energies.reshape(-1)[order].double().tolist(),
        "n_steps": out["n_steps"].reshape(-1)[order].tolist(),
        "mean_occupancy": fused.stats.mean_occupancy,
        "refill_seconds": fused.stats.refill_seconds,
        "refill_points": fused.stats.refill_points,
    }


def run_w4_inflight(structures, batch_size: int, refill_frequency: int | None = None,
                    in_place: bool = False, cuda_graph: bool = False) -> Result:
    setup()
    with Timer() as t:
        out = _inflight(structures, batch_size, refill_frequency, in_place, cuda_graph)
        _sync()
    energies = [float(e) for e in out["energies"]]
    steps = [int(s) for s in out["n_steps"]]
    atom_evals = sum((s + 1) * len(a) for s, a in zip(steps, structures))
    return Result(NAME, "W4", t.elapsed, atom_evals, None, energies, steps,
                  variant=f"inflight ({DEVICE}), {batch_size} slots, refill every {refill_frequency or os.environ.get('BENCH_W4_REFILL', '5')}"
                          + (", refills in place (padded slots)" if in_place else "")
                          + (", CUDA graphs" if cuda_graph and DEVICE.startswith("cuda") else ""),
                  extra={"mean_occupancy": float(out.get("mean_occupancy", float("nan"))),
                         "refill_overhead": out["refill_seconds"] / t.elapsed,
                         "refill_ms": 1e3 * out["refill_seconds"] / max(out["refill_points"], 1)})
