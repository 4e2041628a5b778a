"""CHGNet (its shipped 0.3.0 weights) through batchmd equals CHGNet's own ASE calculator; batched, relaxed."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

pytest.importorskip("chgnet")

from ase.build import bulk  # noqa: E402
from ase.filters import FrechetCellFilter  # noqa: E402
from ase.optimize import FIRE as AseFIRE  # noqa: E402
from ase.spacegroup import crystal  # noqa: E402
from mlip_cases import compare_with_calculator, mixed_structures  # noqa: E402

from batchmd.data import Batch  # noqa: E402
from batchmd.models import UnsupportedSpeciesError, load_model  # noqa: E402

TOL = {torch.float64: (1e-10, 1e-10, 1e-12), torch.float32: (2e-5, 1e-4, 2e-6)}  # energy eV, forces eV/Å, stress eV/Å^3


@functools.lru_cache(maxsize=None)
def chgnet_model():
    return load_model("chgnet")


@functools.lru_cache(maxsize=None)
def reference_calculator(dtype: torch.dtype):
    """``chgnet.model.dynamics.CHGNetCalculator`` with the same network.

    float32: as shipped. float64: the same calculator and code path with CHGNet's hard-coded
    float32 graph dtype (``TORCH_DTYPE`` of its converter and batching) switched to float64
    during each calculation, the network in float64, and the composition model's element
    fractions computed in float64 (chgnet computes them in float32).
    """
    import chgnet.graph.converter as converter
    import chgnet.model.model as chgnet_model_module
    from chgnet.model.dynamics import CHGNetCalculator

    net = copy.deepcopy(chgnet_model().module).to(dtype)
    if dtype == torch.float32:
        return CHGNetCalculator(model=net, use_device="cpu")

    comp = net.composition_model
    comp._assemble_graphs = lambda graphs: torch.stack([
        torch.bincount(g.atomic_number.long() - 1, minlength=comp.max_num_elements).double() / len(g.atomic_number)
        for g in graphs])

    class Float64CHGNetCalculator(CHGNetCalculator):
        def calculate(self, *args, **kwargs):
            saved = converter.TORCH_DTYPE, chgnet_model_module.TORCH_DTYPE
            converter.TORCH_DTYPE = chgnet_model_module.TORCH_DTYPE = torch.float64
            try:
                super().calculate(*args, **kwargs)
            finally:
                converter.TORCH_DTYPE, chgnet_model_module.TORCH_DTYPE = saved

    return Float64CHGNetCalculator(model=net, use_device="cpu")


def lico_o2():
    """LiCoO2, R-3m (layered, 12 atoms in the hexagonal cell), a = 2.816 Å, c = 14.05 Å."""
    return crystal(["Li", "Co", "O"], basis=[(0, 0, 0), (0, 0, 0.5), (0, 0, 0.2396)], spacegroup=166,
                   cellpar=[2.816, 2.816, 14.05, 90, 90, 120])


def alpha_quartz():
    """alpha-quartz SiO2, P3_221 (9 atoms; Si 3a, O 6c in ASE's setting of space group 154; Si-O 1.605 Å).

    (``mlip_cases.quartz`` places Si off its special position and has 6 Si: a test structure, not quartz.)
    """
    return crystal(["Si", "O"], basis=[(0.4697, 0.0, 2 / 3), (0.4135, 0.2669, 0.1191 + 2 / 3)], spacegroup=154,
                   cellpar=[4.916, 4.916, 5.405, 90, 90, 120])


def real_crystals(seed: int = 0):
    frames = [bulk("Si", "diamond", a=5.43), bulk("NaCl", "rocksalt", a=5.64), lico_o2(), alpha_quartz()]
    rng = np.random.default_rng(seed)
    for atoms in frames:
        atoms.positions += rng.normal(0.0, 0.03, atoms.positions.shape)
    return frames


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: CHGNet's many small ops are 10x slower oversubscribed on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chgnet():
    return chgnet_model()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_equals_own_ase_calculator(chgnet, dtype):
    frames = mixed_structures()  # crystals, a molecule in vacuum, a slab
    batch = Batch.from_ase(frames, dtype=dtype)
    out = chgnet(batch)
    assert out["energy"].dtype == dtype and out["stress"].shape == (len(frames), 3, 3)
    worst = compare_with_calculator(out, batch, frames, reference_calculator(dtype))
    e_tol, f_tol, s_tol = TOL[dtype]
    assert worst["energy"] < e_tol and worst["forces"] < f_tol and worst["stress"] < s_tol, worst


def test_real_crystals_with_shipped_weights(chgnet):
    """Si, NaCl, LiCoO2, quartz: equal to CHGNet's calculator (float64) and physically sensible."""
    frames = real_crystals()
    batch = Batch.from_ase(frames, dtype=torch.float64)
    out = chgnet(batch)
    worst = compare_with_calculator(out, batch, frames, reference_calculator(torch.float64))
    assert worst["energy"] < 1e-10 and worst["forces"] < 1e-10 and worst["stress"] < 1e-12, worst
    per_atom = out["energy"][:, 0] / torch.tensor([len(a) for a in frames], dtype=torch.float64)
    # MPtrj-scale energies per atom (PBE/PBE+U with MP2020 corrections; PBE silicon is -5.42 eV/atom):
    # a guard band of 0.2 eV around CHGNet 0.3.0's values; a wrongly fed graph is off by eV
    # (the 12-atom mlip_cases.quartz, 6 Si + 6 O, gives -4.6 eV/atom).
    for value, expected in zip(per_atom.tolist(), (-5.42, -3.65, -6.3, -8.25)):
        assert abs(value - expected) < 0.2, per_atom


def test_batch_invariance_and_chunks(chgnet):
    frames = mixed_structures(seed=1)
    batch = Batch.from_ase(frames, dtype=torch.float64)
    together = chgnet(batch)
    ptr = batch.ptr.tolist()
    for s in (2, 5):
        alone = chgnet(Batch.from_ase([frames[s]], dtype=torch.float64))
        assert abs(float(alone["energy"][0, 0] - together["energy"][s, 0])) < 1e-10
        assert torch.allclose(alone["forces"], together["forces"][ptr[s]:ptr[s + 1]], atol=1e-10)
        assert torch.allclose(alone["stress"][0], together["stress"][s], atol=1e-12)
    chgnet.chunk_atoms = 5  # several chunks of whole systems
    try:
        chunked = chgnet(Batch.from_ase(frames, dtype=torch.float64))
    finally:
        chgnet.chunk_atoms = None
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(chunked[key], together[key], atol=1e-10), key


def test_graph_helpers_match_chgnets_graph():
    """The undirected pairing and the bond graph (angles) built in torch have CHGNet's sizes."""
    from chgnet.graph import CrystalGraphConverter
    from pymatgen.io.ase import AseAtomsAdaptor

    from batchmd.models.edges import EdgeNeighborList
    from batchmd.models.mlip.chgnet import bond_graph, pair_directed_edges

    atoms = real_crystals()[2]
    g = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3)(AseAtomsAdaptor.get_structure(atoms))
    batch = Batch.from_ase([atoms], dtype=torch.float64)
    edges = EdgeNeighborList(cutoff=6.0).update(batch)
    d2u, u2d = pair_directed_edges(edges.edge_index, edges.unit_shifts, len(atoms))
    lengths = torch.linalg.vector_norm(edges.edge_vectors(batch.positions, batch.cell, batch.batch_idx), dim=1)
    first, second = bond_graph(edges.edge_index[0], lengths < 3.0, len(atoms))
    assert edges.num_edges == g.atom_graph.shape[0] and u2d.shape[0] == g.undirected2directed.shape[0]
    assert first.shape[0] == g.bond_graph.shape[0]
    assert torch.equal(torch.bincount(d2u), torch.full((u2d.shape[0],), 2))  # every bond has both directions
    assert torch.equal(edges.edge_index[0][first], edges.edge_index[0][second]) and bool((first != second).all())


def test_species_metadata_and_registry(chgnet):
    assert chgnet.cutoff == 6.0 and chgnet.bond_cutoff == 3.0 and len(chgnet.supported_numbers) == 94
    info = chgnet.model_info()
    assert info["model"] == "CHGNet-0.3.0" and len(info["model_sha256"]) == 64 and "chgnet" in info["model_file"]
    bad = bulk("Cu", "fcc", a=3.6)
    bad.numbers[0] = 95
    with pytest.raises(UnsupportedSpeciesError, match="Am") as err:
        chgnet(Batch.from_ase([bad], dtype=torch.float64))
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="neither a file nor a pretrained name"):
        load_model("chgnet:0.9.9")
    r2scan = load_model("chgnet:r2scan")
    assert r2scan.model_info()["model"] == "CHGNet-r2scan"


def test_saved_file_loads_by_path(chgnet, tmp_path):
    path = tmp_path / "my_chgnet.pth.tar"
    torch.save({"model": chgnet.module.as_dict()}, path)
    again = load_model(f"chgnet:{path}")
    frames = real_crystals()[:2]
    a = again(Batch.from_ase(frames, dtype=torch.float64))
    b = chgnet(Batch.from_ase(frames, dtype=torch.float64))
    assert torch.equal(a["energy"], b["energy"]) and again.model_info()["model"] == "CHGNet(my_chgnet.pth.tar)"
    (tmp_path / "junk.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a CHGNet checkpoint"):
        load_model(f"chgnet:{tmp_path / 'junk.pth.tar'}")


def test_fire_full_cell_matches_ase_step_count(chgnet):
    """batchmd.ase.relax(cell="full") vs ase FrechetCellFilter + FIRE with CHGNet's calculator (float64)."""
    from batchmd.ase import relax

    start = bulk("NaCl", "rocksalt", a=5.75)
    start.positions += np.random.default_rng(3).normal(0.0, 0.05, start.positions.shape)
    ours = relax([start], chgnet, fmax=0.05, max_steps=100, cell="full", dtype=torch.float64)[0]
    ref = start.copy()
    ref.calc = reference_calculator(torch.float64)
    opt = AseFIRE(FrechetCellFilter(ref), logfile=None)
    opt.run(fmax=0.05, steps=100)
    assert ours.info["converged"] and ours.info["n_steps"] == opt.nsteps
    assert np.abs(ours.positions - ref.positions).max() < 1e-6
    assert np.abs(ours.cell[:] - ref.cell[:]).max() < 1e-6
    assert abs(ours.get_potential_energy() - ref.get_potential_energy()) < 1e-6


def test_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    from batchmd.models.registry import MissingExtraError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "chgnet" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'batchmd\[chgnet\]'"):
        load_model("chgnet")


@pytest.mark.slow  # float32 model and calculator relaxations: ~20 s on the shared CPU
def test_fire_float32_ends_where_ase_fire_ends(chgnet):
    """float32 relaxations (atoms only) end within 1e-4 eV/atom of ASE's FIRE with CHGNet's own float32 calculator."""
    from batchmd.ase import relax

    start = bulk("Si", "diamond", a=5.43)
    start.positions += np.random.default_rng(5).normal(0.0, 0.05, start.positions.shape)
    ours = relax([start], chgnet, fmax=0.05, max_steps=60, dtype=torch.float32)[0]
    ref = start.copy()
    ref.calc = reference_calculator(torch.float32)
    AseFIRE(ref, logfile=None).run(fmax=0.05, steps=60)
    assert ours.info["converged"]
    assert abs(ours.get_potential_energy() - ref.get_potential_energy()) / len(start) < 1e-4
