"""LennardJones against ase.calculators.lj.LennardJones; batch invariance; dtypes; validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ

from batchmd.data import Batch
from batchmd.models.lj import LennardJones

SIGMA, EPSILON, CUTOFF = 3.405, 0.0104, 8.5125


def _rattle(atoms: Atoms, seed: int, scale: float = 0.1) -> Atoms:
    atoms = atoms.copy()
    atoms.positions += np.random.default_rng(seed).normal(0.0, scale, atoms.positions.shape)
    return atoms


def structures() -> dict[str, Atoms]:
    """Named test systems covering the boundary/cell cases of the issue."""
    fcc = bulk("Ar", "fcc", a=5.26, cubic=True)
    rng = np.random.default_rng(7)
    cluster = Atoms("Ar13", positions=rng.uniform(0.0, 9.0, (13, 3)))
    cluster.positions += 0.0  # no cell, no pbc
    tri = _rattle(bulk("Ar", "fcc", a=5.26).repeat((3, 2, 2)), 3)  # primitive cell: triclinic
    tri.set_cell(tri.cell[:] + np.array([[0, 0, 0], [0.4, 0, 0], [0.3, -0.2, 0]]), scale_atoms=False)
    slab = _rattle(fcc.repeat((2, 2, 2)), 4)
    slab.pbc = (True, True, False)
    slab.cell[2] = [0.0, 0.0, 30.0]
    wire = _rattle(fcc.repeat((1, 1, 3)), 5)
    wire.pbc = (False, False, True)
    one = Atoms("Ar", positions=[[0.1, 0.2, 0.3]], cell=[[3.0, 0, 0], [0.5, 3.2, 0], [0.2, 0.4, 3.5]], pbc=True)
    four = _rattle(fcc, 6, 0.2)
    return {
        "cluster": cluster,
        "fcc222": _rattle(fcc.repeat((2, 2, 2)), 1),
        "fcc234": _rattle(fcc.repeat((2, 3, 4)), 2),
        "triclinic": tri,
        "slab": slab,
        "wire": wire,
        "one_atom": one,
        "four_atoms": four,
    }


def ase_reference(atoms: Atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = AseLJ(sigma=SIGMA, epsilon=EPSILON, rc=CUTOFF, smooth=False)
    ref = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.cell.rank == 3:
        ref["stress"] = atoms.get_stress(voigt=False)
    return ref


def model(**kw) -> LennardJones:
    return LennardJones(sigma=SIGMA, epsilon=EPSILON, cutoff=CUTOFF, **kw)


@pytest.mark.parametrize("half", [False, True], ids=["full", "half"])
@pytest.mark.parametrize("name", list(structures()))
def test_matches_ase(name, half):
    atoms = structures()[name]
    ref = ase_reference(atoms)
    out = model(half_list=half)(Batch.from_ase([atoms], dtype=torch.float64))
    np.testing.assert_allclose(out["energy"].item(), ref["energy"], rtol=1e-10, atol=1e-13)
    scale = np.abs(ref["forces"]).max()
    np.testing.assert_allclose(out["forces"].numpy(), ref["forces"], rtol=1e-10, atol=max(1e-10 * scale, 1e-13))
    if "stress" in ref:
        s = np.abs(ref["stress"]).max()
        np.testing.assert_allclose(out["stress"][0].numpy(), ref["stress"], rtol=1e-10, atol=1e-10 * s)


@pytest.mark.parametrize("half", [False, True], ids=["full", "half"])
def test_batch_equals_each_alone_bitwise(half):
    systems = list(structures().values())
    lj = model(half_list=half)
    alone = [lj(Batch.from_ase([a], dtype=torch.float64)) for a in systems]
    for order in (list(range(len(systems))), list(reversed(range(len(systems))))):
        batch = Batch.from_ase([systems[i] for i in order], dtype=torch.float64)
        out = model(half_list=half)(batch)
        ptr = batch.ptr.tolist()
        for slot, i in enumerate(order):
            assert torch.equal(out["energy"][slot], alone[i]["energy"][0])
            assert torch.equal(out["forces"][ptr[slot] : ptr[slot + 1]], alone[i]["forces"])
            assert torch.equal(out["stress"][slot], alone[i]["stress"][0])


def test_float32_agrees_with_float64():
    systems = [structures()[k] for k in ("fcc222", "triclinic", "slab", "cluster")]
    out64 = model()(Batch.from_ase(systems, dtype=torch.float64))
    out32 = model()(Batch.from_ase(systems, dtype=torch.float32))
    assert out32["forces"].dtype == torch.float32
    np.testing.assert_allclose(out32["energy"].double().numpy(), out64["energy"].numpy(), rtol=1e-5)
    fscale = out64["forces"].abs().max().item()
    np.testing.assert_allclose(out32["forces"].double().numpy(), out64["forces"].numpy(), rtol=1e-5,
                               atol=1e-5 * fscale)
    sscale = out64["stress"].abs().max().item()
    np.testing.assert_allclose(out32["stress"].double().numpy(), out64["stress"].numpy(), atol=1e-5 * sscale)


def test_unshifted_energy_differs_by_pair_count_times_shift():
    atoms = structures()["cluster"]
    batch = Batch.from_ase([atoms], dtype=torch.float64)
    shifted, plain = model()(batch), model(shift=False)(batch)
    d = atoms.get_all_distances()
    npairs = int((d[np.triu_indices(len(atoms), 1)] <= CUTOFF).sum())
    c6 = (SIGMA / CUTOFF) ** 6
    expected = npairs * 4 * EPSILON * (c6 * c6 - c6)
    np.testing.assert_allclose((plain["energy"] - shifted["energy"]).item(), expected, rtol=1e-9)
    assert torch.equal(plain["forces"], shifted["forces"])


def test_dynamics_like_reuse_matches_fresh_model():
    atoms = structures()["fcc234"]
    batch = Batch.from_ase([atoms, structures()["triclinic"]], dtype=torch.float64)
    lj = model(skin=0.5)
    lj(batch)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        batch.positions.add_(0.08 * torch.randn(batch.positions.shape, generator=gen, dtype=torch.float64))
        out = lj(batch)
        fresh = model(skin=0.5)(Batch.from_ase(batch.to_ase(), dtype=torch.float64))
        # same pairs; only the summation order may differ (list built at older positions)
        torch.testing.assert_close(out["forces"], fresh["forces"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(out["energy"], fresh["energy"], rtol=1e-12, atol=0.0)


def test_no_stress_option():
    out = model(compute_stress=False)(Batch.from_ase([structures()["fcc222"]], dtype=torch.float64))
    assert set(out) == {"energy", "forces"}


def test_contract_attributes():
    lj = model()
    assert lj.cutoff == CUTOFF and lj.needs_neighbors and lj.computes_stress
    assert isinstance(lj, torch.nn.Module)


@pytest.mark.parametrize("kw", [dict(cutoff=0.0), dict(cutoff=-1.0), dict(sigma=0.0), dict(epsilon=-1.0),
                                dict(skin=-0.1), dict(sigma=float("nan"))])
def test_invalid_parameters(kw):
    args = dict(sigma=SIGMA, epsilon=EPSILON, cutoff=CUTOFF)
    args.update(kw)
    with pytest.raises(ValueError):
        LennardJones(**args)


def test_zero_periodic_cell_vector_rejected():
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [3.8, 0, 0]], cell=[[10, 0, 0], [0, 10, 0], [0, 0, 0]],
                  pbc=(True, True, True))
    with pytest.raises(ValueError, match="zero"):
        model()(Batch.from_ase([atoms], dtype=torch.float64))


def test_degenerate_periodic_cell_rejected():
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [3.8, 0, 0]], cell=[[10, 0, 0], [5, 0, 0], [0, 0, 10]],
                  pbc=True)
    with pytest.raises(ValueError, match="linearly dependent"):
        model()(Batch.from_ase([atoms], dtype=torch.float64))


@pytest.mark.parametrize("half", [False, True], ids=["full", "half"])
def test_skip_finished_keeps_outputs_of_finished_systems_and_recomputes_the_rest(half):
    systems = structures()
    names = ["fcc222", "triclinic", "slab", "four_atoms", "cluster"]
    batch = Batch.from_ase([systems[k] for k in names], dtype=torch.float64)
    n, b = batch.num_nodes, batch.num_graphs
    full = model(half_list=half)(batch)
    # ACTIVE, CONVERGED, PENDING, FAILED, OUT_OF_STEPS
    batch.set_field("status", torch.tensor([0, 1, 4, 3, 2], dtype=torch.int32), "system")
    out = {"forces": torch.full((n, 3), 7.0, dtype=torch.float64), "energy": torch.full((b, 1), 7.0, dtype=torch.float64),
           "stress": torch.full((b, 3, 3), 7.0, dtype=torch.float64)}
    model(half_list=half)(batch, out=out, skip_finished=True)
    atom_system = batch.batch_idx.long()
    for s in range(b):
        rows = atom_system == s
        if s in (0, 2):
            assert torch.equal(out["forces"][rows], full["forces"][rows])
            assert torch.equal(out["energy"][s], full["energy"][s]) and torch.equal(out["stress"][s], full["stress"][s])
        else:
            assert (out["forces"][rows] == 7.0).all() and (out["energy"][s] == 7.0).all()
            assert (out["stress"][s] == 7.0).all()


def test_skip_finished_needs_out_and_an_int32_status():
    batch = Batch.from_ase([structures()["fcc222"]], dtype=torch.float64)
    lj = model()
    with pytest.raises(ValueError, match="needs out="):
        lj(batch, skip_finished=True)
    out = {"forces": torch.zeros(batch.num_nodes, 3, dtype=torch.float64), "energy": torch.zeros(1, 1, dtype=torch.float64)}
    with pytest.raises(ValueError, match="int32 'status'"):
        lj(batch, out=out, skip_finished=True)
    batch.set_field("status", torch.zeros(1, dtype=torch.int64), "system")
    with pytest.raises(ValueError, match="int32 'status'"):
        lj(batch, out=out, skip_finished=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_system_sums_equal_plain_sums(dtype):
    """The GPU path's chunked energy/virial sums (forced here on the CPU): bitwise the plain
    sums for systems of at most one chunk (256 atoms), the same to rounding above."""
    from ase.build import bulk as ase_bulk

    frames = [ase_bulk("Ar", "fcc", a=5.26, cubic=True).repeat(r) for r in [(2, 2, 2), (3, 3, 3), (6, 6, 6), (4, 4, 4)]]
    for k, atoms in enumerate(frames):
        atoms.rattle(0.1, seed=k)
    outs = {}
    for chunked in (False, True):
        model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
        model.chunked_reductions = chunked
        outs[chunked] = model(Batch.from_ase(frames, dtype=dtype))
    plain, chunked = outs[False], outs[True]
    assert torch.equal(plain["forces"], chunked["forces"])
    for s in (0, 1, 3):  # 32, 108 and 256 atoms: one chunk
        assert torch.equal(plain["energy"][s], chunked["energy"][s])
        assert torch.equal(plain["stress"][s], chunked["stress"][s])
    rel = 1e-14 if dtype == torch.float64 else 1e-5
    assert torch.allclose(plain["energy"][2], chunked["energy"][2], rtol=rel, atol=0)
    assert torch.allclose(plain["stress"][2], chunked["stress"][2], rtol=rel, atol=1e-12)


# ----------------------------------------------------------------------------- several species (issue 13)
def _reference_lj(atoms, params, cutoff, rule="lorentz-berthelot"):
    """Energy (eV) and forces (eV/Å) of a non-periodic cluster by a direct pair sum, shifted at the cutoff."""
    from batchmd.models.lj import mix

    syms = atoms.get_chemical_symbols()
    x = atoms.positions
    energy, forces = 0.0, np.zeros_like(x)
    for i in range(len(atoms)):
        for j in range(i + 1, len(atoms)):
            sigma, eps = mix(params[syms[i]], params[syms[j]], rule) if syms[i] != syms[j] else params[syms[i]]
            d = x[j] - x[i]
            r = np.linalg.norm(d)
            if r > cutoff:
                continue
            sr6, sc6 = (sigma / r) ** 6, (sigma / cutoff) ** 6
            energy += 4 * eps * (sr6 * sr6 - sr6) - 4 * eps * (sc6 * sc6 - sc6)
            dudr = 4 * eps * (-12 * sr6 * sr6 + 6 * sr6) / r
            forces[i] += dudr * d / r
            forces[j] -= dudr * d / r
    return energy, forces


@pytest.mark.parametrize("rule", ["lorentz-berthelot", "geometric"])
def test_several_species_match_a_direct_pair_sum(rule):
    from ase import Atoms

    from batchmd.models.lj import LJ_PRESETS, LennardJones

    rng = np.random.default_rng(4)
    grid = np.array([[a, b, c] for a in range(2) for b in range(2) for c in range(2)], dtype=float)
    atoms = Atoms("ArKrXeNeArKrArXe", positions=3.9 * grid + rng.normal(scale=0.15, size=(8, 3)))
    model = LennardJones(species=["Ne", "Ar", "Kr", "Xe"], mixing=rule, cutoff=9.0)
    out = model(Batch.from_ase([atoms], dtype=torch.float64))
    energy, forces = _reference_lj(atoms, LJ_PRESETS, 9.0, rule)
    assert float(out["energy"]) == pytest.approx(energy, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(out["forces"].numpy(), forces, rtol=1e-10, atol=1e-12)
    assert model.model_info()["lj_mixing"] == rule
    with pytest.raises(Exception, match="no parameters for Cu"):
        model.check_species(torch.tensor([29, 18]))


def test_one_species_is_bitwise_one_parameter_pair():
    """Per-species tables with one element give exactly the numbers of LennardJones(sigma, epsilon)."""
    from batchmd.models.lj import LennardJones

    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 1))
    atoms.rattle(0.1, seed=3)
    for dtype in (torch.float32, torch.float64):
        batch = Batch.from_ase([atoms], dtype=dtype)
        a = LennardJones()(batch)  # the argon preset
        b = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=3 * 3.405)(Batch.from_ase([atoms], dtype=dtype))
        for key in ("energy", "forces", "stress"):
            assert torch.equal(a[key], b[key]), key


def test_parameters_are_checked():
    from batchmd.models.lj import LennardJones

    for kwargs, message in [({"sigma": 3.0}, "both sigma and epsilon"),
                            ({"sigma": 3.0, "epsilon": 0.01, "species": ["Ar"]}, "not both"),
                            ({"species": ["Cu"]}, "no preset for Cu"),
                            ({"species": {"Ar": (3.4, -1.0)}}, "epsilon of Ar"),
                            ({"species": ["Ar"], "mixing": "arithmetic"}, "mixing")]:
        with pytest.raises(ValueError, match=message):
            LennardJones(**kwargs)
