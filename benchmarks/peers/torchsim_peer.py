"""TorchSim (torch-sim-atomistic) 0.6.x, or 0.3.0, through its public API.

0.6.x (the current release; Python >= 3.12, so it runs in its own venv through
``peers/remote.py``: ``BENCH_TORCHSIM_PYTHON=/work/venv-ts312/bin/python``): FIRE is
``torch_sim.optimizers.fire_init`` / ``fire_step`` (``fire_flavor="ase_fire"``), Langevin
``nvt_langevin_init`` / ``nvt_langevin_step``, NVE ``nve_init`` / ``nve_step``; its LJ forces
equal -dE/dx (no halving). Its ``ase_fire`` follows ASE's FIRE until the first step with
``n_pos > n_min``, then scales alpha before mixing (ASE after): final W1 energies differ
from ASE's by up to ~8e-3 eV (shared/PEERS.md).

Fairness notes (shared/PEERS.md):
- 0.3.0 only: its ``LennardJonesModel`` returns forces of exactly 2x -dE/dx (full neighbor
  list, both directions added); ``HalvedForcesLJ`` halves them, after which ``ts.fire`` (ASE
  flavour) follows ASE's FIRE step for step. Its LJ loops over systems in Python.
- Its LJ energy is unshifted: ASE's shift is added outside the timed region.
- W1 is run two ways and the report keeps both:
  "batch": one fixed batch of all structures driven by ``ts.fire``'s (init, step) pair,
  each system's energy taken at the step it first meets fmax (converged systems keep
  moving, as they do in a fixed batch);
  "inflight": ``ts.optimize`` with an ``InFlightAutoBatcher`` given an explicit atom budget
  (``memory_scales_with="n_atoms"``; its memory estimator refuses to run on CPU), which
  checks convergence every ``steps_between_swaps`` steps.
- W2 uses its Langevin (BAOAB) on one batch.
- W5 (``run_w5``): ``ts.optimize`` with FIRE (ase flavour) and an ``InFlightAutoBatcher``
  given an explicit atom budget, with TorchSim's own MACE adapter on the same MACE module.
"""

from __future__ import annotations

import os

from benchmarks import workloads as wl
from benchmarks.common import Result, Timer, bench_device, require
from benchmarks.peers.shift import shift_energy

NAME = "torchsim"
DTYPE = os.environ.get("BENCH_TORCHSIM_DTYPE", "float64")
INFLIGHT_ATOMS = int(os.environ.get("BENCH_TORCHSIM_INFLIGHT_ATOMS", "2048"))
STEPS_BETWEEN_SWAPS = int(os.environ.get("BENCH_TORCHSIM_SWAP_EVERY", "1"))

_model_cls = None


def setup() -> None:
    require("torch_sim", "torch-sim-atomistic (0.6.x in a Python 3.12 venv, or 0.3.0)")


def _new_api() -> bool:
    """TorchSim >= 0.4: optimizers as (init, step) functions, LJ forces no longer doubled."""
    import torch_sim.optimizers as opt

    return hasattr(opt, "fire_init")


def _version() -> str:
    from importlib.metadata import version

    return version("torch-sim-atomistic")


def _max_force(state):
    import torch_sim as ts

    if hasattr(ts, "system_wise_max_force"):
        return ts.system_wise_max_force(state)
    from torch_sim.quantities import systemwise_max_force

    return systemwise_max_force(state)


def _fire_pair(model):
    """(init, step) of ASE-flavoured FIRE bound to ``model``."""
    if _new_api():
        from torch_sim.optimizers import fire_init, fire_step

        return (lambda state: fire_init(state, model, fire_flavor="ase_fire"),
                lambda state: fire_step(state, model, fire_flavor="ase_fire"))
    from torch_sim.optimizers import fire

    return fire(model=model, md_flavor="ase_fire")


def _notes():
    base = ["LJ energy shift-corrected outside the timing", f"torch-sim-atomistic {_version()}"]
    return base if _new_api() else ["forces halved"] + base


def _dtype():
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[DTYPE]


def _model():
    global _model_cls
    if _new_api():
        import torch
        from torch_sim.models.lennard_jones import LennardJonesModel

        return LennardJonesModel(sigma=wl.SIGMA, epsilon=wl.EPSILON, cutoff=wl.CUTOFF,
                                 device=torch.device(bench_device()), dtype=_dtype())
    if _model_cls is None:
        from torch_sim.models.lennard_jones import LennardJonesModel

        class HalvedForcesLJ(LennardJonesModel):
            """TorchSim 0.3.0's LJ with its doubled forces halved."""

            def forward(self, state):
                out = super().forward(state)
                out["forces"] = 0.5 * out["forces"]
                return out

        _model_cls = HalvedForcesLJ
    import torch

    return _model_cls(sigma=wl.SIGMA, epsilon=wl.EPSILON, cutoff=wl.CUTOFF,
                      device=torch.device(bench_device()), dtype=_dtype())


def _state(structures, model):
    import torch_sim as ts

    return ts.initialize_state(list(structures), model.device, model.dtype)


def _shifted(structures, positions, ptr, energies):
    return [shift_energy(a, positions[ptr[i]:ptr[i + 1]], e)
            for i, (a, e) in enumerate(zip(structures, energies))]


def run_w1_batch(structures) -> Result:
    setup()
    import torch

    model = _model()
    state = _state(structures, model)
    init_fn, step_fn = _fire_pair(model)
    systemwise_max_force = _max_force
    B = len(structures)
    with Timer() as t:
        state = init_fn(state)
        done = systemwise_max_force(state) <= wl.FMAX
        energy = state.energy.detach().clone()
        positions = state.positions.detach().clone()
        n_steps = torch.zeros(B, dtype=torch.long, device=state.positions.device)
        evals = 1
        for step in range(1, wl.FIRE_MAX_STEPS + 1):
            if bool(done.all()):
                break
            state = step_fn(state)
            evals += 1
            active = ~done
            n_steps[active] = step
            now = (systemwise_max_force(state) <= wl.FMAX) & active
            if bool(now.any()):
                energy[now] = state.energy.detach()[now]
                atom_now = now[state.system_idx]
                positions[atom_now] = state.positions.detach()[atom_now]
                done |= now
        left = ~done  # out of steps: keep their last state
        if bool(left.any()):
            energy[left] = state.energy.detach()[left]
            positions[left[state.system_idx]] = state.positions.detach()[left[state.system_idx]]
    counts = [len(a) for a in structures]
    ptr = [0]
    for c in counts:
        ptr.append(ptr[-1] + c)
    energies = _shifted(structures, positions.double().cpu().numpy(), ptr, energy.double().tolist())
    steps = [int(s) for s in n_steps.tolist()]
    atom_evals = wl.n_atoms(structures) * evals  # a fixed batch evaluates every atom each step
    return Result(NAME, "W1", t.elapsed, atom_evals, evals, energies, steps,
                  [bool(d) for d in done.tolist()],
                  variant=f"fire(ase_fire), one fixed batch ({DTYPE}, {bench_device()}, TorchSim {_version()})", notes=_notes())


def run_w1_inflight(structures, max_atoms: int = INFLIGHT_ATOMS) -> Result:
    setup()
    model = _model()
    state = _state(structures, model)
    with Timer() as t:
        final, _ = _optimize(state, model, max_atoms, wl.FMAX, wl.FIRE_MAX_STEPS)
    ptr = [0]
    for a in structures:
        ptr.append(ptr[-1] + len(a))
    energies = _shifted(structures, final.positions.detach().double().cpu().numpy(), ptr,
                        final.energy.detach().double().tolist())
    return Result(NAME, "W1", t.elapsed, float("nan"), None, energies, None, None,
                  variant=f"optimize + InFlightAutoBatcher({max_atoms} atoms, swap every "
                          f"{STEPS_BETWEEN_SWAPS}) ({DTYPE}, {bench_device()}, TorchSim {_version()})", notes=_notes())


def _optimize(state, model, max_atoms: int, fmax: float, max_steps: int, cell: str = "fixed"):
    """``ts.optimize`` with ASE-flavoured FIRE and an in-flight autobatcher of ``max_atoms`` atoms.

    Returns (final state, the autobatcher). ``cell="frechet"`` (TorchSim >= 0.4): FIRE over its
    Frechet cell filter, converged when atom and cell forces are below ``fmax``.
    """
    import torch_sim as ts

    batcher = ts.InFlightAutoBatcher(model=model, memory_scales_with="n_atoms", max_memory_scaler=float(max_atoms))
    with_cell = cell == "frechet"
    convergence = ts.generate_force_convergence_fn(force_tol=fmax, include_cell_forces=with_cell)
    if _new_api():
        init_kwargs = {"fire_flavor": "ase_fire"}
        if with_cell:
            init_kwargs["cell_filter"] = ts.CellFilter.frechet
        final = ts.optimize(state, model, optimizer=ts.Optimizer.fire, convergence_fn=convergence,
                            autobatcher=batcher, max_steps=max_steps, steps_between_swaps=STEPS_BETWEEN_SWAPS,
                            init_kwargs=init_kwargs, fire_flavor="ase_fire")
        return final, batcher
    if with_cell:
        raise RuntimeError("TorchSim peer: the Frechet cell filter needs TorchSim >= 0.4")
    from torch_sim.optimizers import fire

    final = ts.optimize(state, model, optimizer=fire, convergence_fn=convergence, autobatcher=batcher,
                        max_steps=max_steps, steps_between_swaps=STEPS_BETWEEN_SWAPS, md_flavor="ase_fire")
    return final, batcher


def run_w1(structures) -> Result:
    return run_w1_batch(structures)


VARIANTS_W1 = {"batch": run_w1_batch, "inflight": run_w1_inflight}


def _md(structures, integrator, n_steps, **kwargs) -> float:
    """Time ``n_steps`` of ``integrator`` ("nvt_langevin" or "nve") from its init."""
    model = _model()
    state = _state(structures, model)
    if _new_api():
        import torch_sim.integrators as integ

        init, step = getattr(integ, f"{integrator}_init"), getattr(integ, f"{integrator}_step")
        seed = kwargs.pop("seed", None)
        if seed is not None:
            state.rng = seed
        init_fn = lambda s: init(s, model, kT=kwargs["kT"])  # noqa: E731
        step_fn = lambda s: step(s, model, **kwargs)  # noqa: E731
    else:
        import torch_sim as ts

        init_fn, step_fn = getattr(ts, integrator)(model=model, **kwargs)
    with Timer() as t:
        state = init_fn(state)
        for _ in range(n_steps):
            state = step_fn(state)
    return t.elapsed


def run_w2(structures, n_steps: int = wl.W2_STEPS) -> Result:
    setup()
    import torch
    import torch_sim as ts
    from ase import units

    d = dict(dtype=_dtype(), device=torch.device(bench_device()))
    wall = _md(structures, "nvt_langevin", n_steps,
               dt=torch.tensor(wl.W2_DT * units.fs, **d),
               kT=torch.tensor(wl.W2_TEMPERATURE * units.kB, **d),
               gamma=torch.tensor(wl.W2_FRICTION / units.fs, **d), seed=0)
    return Result(NAME, "W2", wall, wl.n_atoms(structures) * n_steps, n_steps + 1,
                  variant=f"nvt_langevin, one batch ({DTYPE}, {bench_device()}, TorchSim {_version()})", notes=_notes()[:1])


W3_MAX_STEPS = int(os.environ.get("BENCH_W3_PEER_STEPS", "10"))


def run_w3(atoms, n_steps: int) -> Result:
    setup()
    import torch
    import torch_sim as ts
    from ase import units

    run_steps = min(n_steps, W3_MAX_STEPS)
    d = dict(dtype=_dtype(), device=torch.device(bench_device()))
    wall = _md([atoms], "nve", run_steps, dt=torch.tensor(wl.W3_DT * units.fs, **d),
               kT=torch.tensor(wl.W3_TEMPERATURE * units.kB, **d))
    return Result(NAME, "W3", wall * n_steps / run_steps, len(atoms) * n_steps, n_steps,
                  extrapolated_from=run_steps if run_steps < n_steps else None,
                  variant=f"nve ({DTYPE}, {bench_device()}, TorchSim {_version()})", notes=_notes()[:1])


def _timed(obj, attr: str, tally: dict, key: str, count_atoms: bool = False) -> None:
    """Replace the bound method ``obj.attr`` by one adding its wall time (and calls, atoms) to ``tally``."""
    import time

    inner = getattr(obj, attr)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            tally[key] = tally.get(key, 0.0) + time.perf_counter() - t0
            tally[key + "_calls"] = tally.get(key + "_calls", 0) + 1
            if count_atoms:
                tally["atom_evals"] = tally.get("atom_evals", 0) + int(args[0].n_atoms)

    setattr(obj, attr, wrapper)


def w5_model(model_path: str, dtype: str = "float32", lj=None, stress: bool = False):
    """TorchSim's MaceModel on the MACE file (plus its LennardJonesModel through SumModel when ``lj``)."""
    import torch
    from torch_sim.models.mace import MaceModel

    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    device = torch.device(bench_device())
    module = torch.load(model_path, weights_only=False, map_location=device)
    mace = MaceModel(model=module, device=device, dtype=torch_dtype, compute_forces=True, compute_stress=stress)
    model, parts = mace, {"mace": mace}
    if lj is not None:
        from torch_sim.models.interface import SumModel
        from torch_sim.models.lennard_jones import LennardJonesModel

        sigma, epsilon, cutoff = lj
        parts["lj"] = LennardJonesModel(sigma=sigma, epsilon=epsilon, cutoff=cutoff, device=device, dtype=torch_dtype,
                                        compute_stress=stress)
        model = SumModel(mace, parts["lj"])
    return model, parts


def w5_single_point(atoms, model_path: str, dtype: str = "float64", lj=None) -> dict:
    """Energy (eV), forces (eV/Å) and stress (eV/Å^3, 3x3) of one structure with TorchSim's models (W5's check
    that batchmd's MACE adapter and TorchSim's MaceModel compute the same stress)."""
    setup()
    model, _ = w5_model(model_path, dtype, lj=lj, stress=True)
    out = model(_state([atoms], model))
    return {k: out[k].detach().double().cpu().numpy() for k in ("energy", "forces", "stress")}


def run_w5(structures, model_path: str, max_atoms: int, dtype: str = "float32", lj=None,
           cell: str = "fixed", profile: bool = False) -> Result:
    """W5 with TorchSim's best API: ``ts.optimize`` (FIRE, ase flavour) + ``InFlightAutoBatcher``.

    ``model_path``: a MACE model file (``torch.save`` of the module), wrapped by TorchSim's
    own MACE adapter (``torch_sim.models.mace.MaceModel``; the stress only with a cell filter).
    The autobatcher gets ``max_atoms`` as its budget (its memory estimator refuses the CPU), the
    same live-batch budget as batchmd's inflight row. ``lj=(sigma, epsilon, cutoff)`` adds
    TorchSim's Lennard-Jones through its ``SumModel`` (W5's "mace-random+lj"; unshifted, as
    batchmd's W5 baseline). ``cell="frechet"``: ``fire_init(cell_filter=CellFilter.frechet)``
    and convergence on atom forces and cell forces (``include_cell_forces=True``).

    Also returned: model evaluations (``n_force_evals``: calls of its MaceModel; ``atom_evals``:
    atoms they evaluated), per-structure iterations (``n_steps``, the autobatcher's
    ``iteration_count``: steps with ``steps_between_swaps=1``), CPU time (``extra["cpu"]``) and,
    with ``profile``, the wall time inside the MACE network (its forward and its own force /
    stress backward), inside TorchSim's MaceModel (plus its neighbor list and input building)
    and inside the Lennard-Jones model (``extra["profile"]``, seconds).
    """
    setup()
    import time

    import torch

    model, parts = w5_model(model_path, dtype, lj=lj, stress=cell == "frechet")
    tally: dict = {}
    _timed(parts["mace"], "forward", tally, "mace_adapter", count_atoms=True)
    if profile:
        _timed(parts["mace"].model, "forward", tally, "mace_network")
        if "lj" in parts:
            _timed(parts["lj"], "forward", tally, "lj")
    state = _state(structures, model)
    c0 = time.process_time()
    with Timer() as t:
        final, batcher = _optimize(state, model, max_atoms, wl.W5_FMAX, wl.W5_MAX_STEPS, cell=cell)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    cpu = time.process_time() - c0
    energies = final.energy.detach().double().cpu().tolist()
    steps = [int(k) for k in batcher.iteration_count]
    extra = {"cpu": cpu, "cell": cell}
    if profile:
        extra["profile"] = {k: v for k, v in tally.items() if k != "atom_evals"}
    return Result(NAME, "W5", t.elapsed, float(tally.get("atom_evals", 0)), int(tally.get("mace_adapter_calls", 0)),
                  energies, steps, None,
                  variant=f"optimize + InFlightAutoBatcher({max_atoms} atoms, swap every {STEPS_BETWEEN_SWAPS}), "
                          f"MaceModel{' + FrechetCellFilter' if cell == 'frechet' else ''} "
                          f"({dtype}, {model.device}, TorchSim {_version()})",
                  notes=[f"torch-sim-atomistic {_version()}"], extra=extra)
