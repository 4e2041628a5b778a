"""The CUDA path: the same dynamics on a GPU, against ASE and against batchmd's invariants.

Skipped where torch or Warp sees no CUDA device (CI and the development machines have none;
every kernel module is still compiled for sm_80/sm_90 by ``test_aot_compile.py``). On a GPU
machine: ``python -m pytest tests/test_cuda.py -v``. Float64 throughout, so the comparisons
with ASE are exact to rounding (tolerances stated per test).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.cluster import Icosahedron
from ase.md.verlet import VelocityVerlet
from ase.optimize import FIRE as AseFIRE

from batchmd.data import Batch
from batchmd.dynamics import FIRE, NVE, ConvergenceHook, FusedStage, NVTLangevin, SizeAwareSampler
from batchmd.dynamics.sinks import HostMemory
from batchmd.models.lj import LennardJones

SIGMA, EPS = 3.405, 0.0104  # argon, Å and eV
RC = 2.5 * SIGMA


def _cuda_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import warp as wp

        wp.init()
        return wp.get_cuda_device_count() > 0
    except Exception:  # pragma: no cover - depends on the machine
        return False


pytestmark = pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU seen by torch and Warp")
DEVICE = "cuda"


def _lj(**kwargs) -> LennardJones:
    return LennardJones(sigma=SIGMA, epsilon=EPS, cutoff=RC, **kwargs)


def _ase_calc() -> AseLJ:
    return AseLJ(sigma=SIGMA, epsilon=EPS, rc=RC, smooth=False)  # shifted to zero at rc, as ours


def _crystals(shapes=((2, 2, 2), (2, 2, 3), (3, 3, 3), (2, 3, 4)), rattle=0.1, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(shape)
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        out.append(atoms)
    return out


def _cluster(seed=1):
    atoms = Icosahedron("Ar", noshells=2, latticeconstant=5.4)
    atoms.rattle(0.1, seed=seed)
    atoms.center(vacuum=6.0)
    return atoms


def _ase_energy_forces(atoms):
    atoms = atoms.copy()
    atoms.calc = _ase_calc()
    return atoms.get_potential_energy(), atoms.get_forces()


@pytest.mark.parametrize("half_list", [None, False])
def test_lennard_jones_matches_ase_on_cuda(half_list):
    systems = _crystals() + [_cluster()] + _crystals(shapes=((6, 6, 6),), seed=9)  # 864 atoms: chunked sums
    batch = Batch.from_ase(systems, dtype=torch.float64).to(DEVICE)
    out = _lj(half_list=half_list)(batch)
    assert out["energy"].device.type == torch.device(DEVICE).type
    energies = out["energy"].reshape(-1).cpu().numpy()
    forces = out["forces"].cpu().numpy()
    ptr = batch.ptr.tolist()
    for k, atoms in enumerate(systems):
        e_ref, f_ref = _ase_energy_forces(atoms)
        assert abs(energies[k] - e_ref) < 1e-10
        assert np.abs(forces[ptr[k]:ptr[k + 1]] - f_ref).max() < 1e-10


def test_half_list_on_cuda_is_refused():
    """The half list's reaction-force scatter races on a GPU: a clear error, not wrong forces."""
    batch = Batch.from_ase(_crystals()[:1], dtype=torch.float64).to(DEVICE)
    with pytest.raises(ValueError, match="half neighbor lists run on the CPU only"):
        _lj(half_list=True)(batch)


def test_fire_matches_ase_on_cuda():
    systems = _crystals()
    fire = FIRE(_lj(), convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=500)
    out = fire.run(Batch.from_ase(systems, dtype=torch.float64).to(DEVICE))
    assert out.positions.device.type == torch.device(DEVICE).type
    steps = out["n_steps"].reshape(-1).tolist()
    energies = out.energies.reshape(-1).cpu().tolist()
    for k, atoms in enumerate(systems):
        atoms = atoms.copy()
        atoms.calc = _ase_calc()
        opt = AseFIRE(atoms, logfile=None)
        opt.run(fmax=0.01, steps=500)
        assert steps[k] == opt.nsteps
        assert abs(energies[k] - atoms.get_potential_energy()) < 1e-9


def test_nve_matches_ase_velocity_verlet_on_cuda():
    systems = _crystals(shapes=((2, 2, 2), (3, 3, 3)), rattle=0.2, seed=3)
    n_steps, dt = 40, 2.0
    out = NVE(_lj(), dt=dt, n_steps=n_steps).run(Batch.from_ase(systems, dtype=torch.float64).to(DEVICE))
    positions = out.positions.cpu().numpy()
    ptr = out.ptr.tolist()
    for k, atoms in enumerate(systems):
        atoms = atoms.copy()
        atoms.calc = _ase_calc()
        VelocityVerlet(atoms, timestep=dt * units.fs, logfile=None).run(n_steps)
        assert np.abs(positions[ptr[k]:ptr[k + 1]] - atoms.positions).max() < 1e-9


def test_langevin_is_batch_invariant_on_cuda():
    systems = _crystals(shapes=((2, 2, 2), (2, 2, 3), (3, 3, 3)), seed=4)

    def run(indices):
        batch = Batch.from_ase([systems[i] for i in indices], dtype=torch.float64)
        batch.set_field("system_id", torch.tensor(indices, dtype=torch.int64).reshape(-1, 1), "system")
        nvt = NVTLangevin(_lj(), dt=2.0, temperature=80.0, friction=0.01, random_seed=5, n_steps=30)
        return nvt.run(batch.to(DEVICE))

    together = run([0, 1, 2])
    for k in range(3):
        alone = run([k])
        got = together.index_select(torch.tensor([k], device=DEVICE))
        assert torch.equal(got.positions, alone.positions)
        assert torch.equal(got.velocities, alone.velocities)


def test_inflight_on_cuda_graduates_each_once_and_equals_static():
    from batchmd.ase import AtomsDataset

    shapes = [(2, 2, 2), (2, 2, 3), (2, 3, 3), (3, 3, 3)] * 3
    systems = _crystals(shapes=shapes, rattle=0.15, seed=6)
    sink = HostMemory(capacity=len(systems))
    fused = FusedStage(
        [FIRE(_lj(), convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300)],
        sampler=SizeAwareSampler(AtomsDataset(systems, dtype=torch.float64), max_atoms=250, max_batch_size=4),
        sinks=[sink],
        refill_frequency=3,
        device=DEVICE,
    )
    fused.run(batch=None)
    out = sink.drain()
    order = torch.argsort(out["input_index"].reshape(-1)).tolist()
    assert sorted(out.system_id.reshape(-1).tolist()) == list(range(len(systems)))
    static = FIRE(_lj(), convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300).run(
        Batch.from_ase(systems, dtype=torch.float64).to(DEVICE))
    inflight_e = out.energies.reshape(-1)[order].double()
    assert out["n_steps"].reshape(-1)[order].tolist() == static["n_steps"].reshape(-1).cpu().tolist()
    assert torch.allclose(inflight_e, static.energies.reshape(-1).cpu(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["FIRE", "NVTLangevin", "NVE"])
def test_steady_state_step_on_cuda_has_no_host_reads_and_no_allocations(method):
    from torch.profiler import ProfilerActivity, profile

    from test_hot_path import _argon_batch, _methods, count_host_reads

    dynamics = _methods(_lj())[method]
    batch = _argon_batch().to(DEVICE)
    for _ in range(4):
        dynamics.step(batch)
    torch.cuda.synchronize()
    with count_host_reads() as reads:
        for _ in range(5):
            dynamics.step(batch)
    assert reads == [], f"{method}: host reads in the steady-state step: {reads}"
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], profile_memory=True) as prof:
        for _ in range(5):
            dynamics.step(batch)
        torch.cuda.synchronize()
    allocations = [e.name for e in prof.events()
                   if e.cpu_memory_usage > 0 or getattr(e, "device_memory_usage", 0) > 0]
    assert allocations == [], f"{method}: allocations in the steady-state step: {allocations}"


def test_steady_nve_step_can_be_captured_in_a_cuda_graph():
    """The steady step neither syncs nor allocates, so torch can capture and replay it."""
    from test_hot_path import _argon_batch

    eager_batch = _argon_batch().to(DEVICE).to(dtype=torch.float64)
    graph_batch = _argon_batch().to(DEVICE).to(dtype=torch.float64)
    eager, graphed = NVE(_lj(), dt=2.0), NVE(_lj(), dt=2.0)
    for dyn, batch in ((eager, eager_batch), (graphed, graph_batch)):
        for _ in range(4):
            dyn.step(batch)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        graphed.step(graph_batch)  # a step on the capture stream first (recorded launches)
    torch.cuda.current_stream().wait_stream(side)
    eager.step(eager_batch)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed.step(graph_batch)
    for _ in range(10):
        graph.replay()
        eager.step(eager_batch)
    torch.cuda.synchronize()
    assert torch.allclose(graph_batch.positions, eager_batch.positions, rtol=0, atol=1e-12)
    assert not torch.equal(graph_batch.positions, _argon_batch().positions.to(DEVICE).double())


@pytest.mark.parametrize("method", ["FIRE", "NVTLangevin", "NVE"])
def test_cuda_graph_replay_is_bitwise_the_eager_run(method):
    """FusedStage(cuda_graph=...) replays chunks of steps; every result is bitwise the eager one."""
    systems = _crystals(shapes=((2, 2, 2), (2, 2, 3), (3, 3, 3), (2, 3, 4)), rattle=0.15, seed=8)

    def run(cuda_graph):
        model = _lj()
        stage = {
            "FIRE": lambda: FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300),
            "NVTLangevin": lambda: NVTLangevin(model, dt=2.0, temperature=80.0, friction=0.01, random_seed=3,
                                               n_steps=95),
            "NVE": lambda: NVE(model, dt=2.0, n_steps=95),
        }[method]()
        loop = FusedStage([stage], refill_frequency=10, cuda_graph=cuda_graph)
        batch = Batch.from_ase(systems, dtype=torch.float64)
        batch.set_field("system_id", torch.arange(len(systems)).reshape(-1, 1), "system")
        out = loop.run(batch.to(DEVICE))
        torch.cuda.synchronize()
        return out, loop

    eager, eager_loop = run(False)
    graphed, graphed_loop = run(True)
    assert eager_loop._graphs.replays == 0
    assert graphed_loop._graphs.replays >= 3
    assert graphed_loop.stats.steps == eager_loop.stats.steps
    for name in ("positions", "velocities", "forces", "energies", "n_steps", "status"):
        assert torch.equal(graphed[name], eager[name]), name
    auto = FusedStage([NVE(_lj(), dt=2.0, n_steps=30)], refill_frequency=10)
    auto.run(Batch.from_ase(systems, dtype=torch.float64).to(DEVICE))
    assert auto._graphs.replays >= 1  # "auto" replays Lennard-Jones steps


def test_inflight_in_place_refills_with_cuda_graphs_equal_eager():
    """Inflight, same-size refills in place, steps replayed as CUDA graphs: bitwise the eager run."""
    from batchmd.ase import AtomsDataset

    shapes = [(2, 2, 2), (2, 2, 3), (3, 3, 3)] * 5
    systems = _crystals(shapes=shapes, rattle=0.12, seed=12)

    def run(cuda_graph):
        sink = HostMemory(capacity=len(systems))
        fused = FusedStage(
            [FIRE(_lj(), convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=300)],
            sampler=SizeAwareSampler(AtomsDataset(systems, dtype=torch.float64), max_atoms=250, max_batch_size=4),
            sinks=[sink], refill_frequency=5, device=DEVICE, refill_in_place=True, cuda_graph=cuda_graph)
        fused.run(batch=None)
        out = sink.drain()
        return out.index_select(torch.argsort(out["sample_index"].reshape(-1))), fused

    eager, _ = run(False)
    graphed, loop = run(True)
    assert loop._graphs.replays > 0 and loop.stats.refills_in_place > 0
    for name in ("positions", "forces", "energies", "n_steps", "status"):
        assert torch.equal(graphed[name], eager[name]), name
