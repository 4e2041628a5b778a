"""matgl's TensorNet and M3GNet through batchmd equal matgl's own ASE calculator; batched, chunked, relaxed.

Random-weight potentials (``batchmd.models.mlip.matgl.random_matgl``), saved with ``Potential.save`` and
loaded by ``load_model("matgl:DIR")`` as users' files are; nothing is downloaded.
"""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import pytest
import torch

from batchmd.models.mlip.matgl import import_matgl, random_matgl  # noqa: E402
from batchmd.models.registry import MissingExtraError  # noqa: E402

try:  # never pytest.importorskip("matgl"): batchmd imports metatensor.torch before matgl's torch_geometric
    import_matgl()
except MissingExtraError:
    pytest.skip("matgl is not installed", allow_module_level=True)

from ase.build import bulk  # noqa: E402
from ase.filters import FrechetCellFilter as AseFrechet  # noqa: E402
from ase.optimize import FIRE as AseFIRE  # noqa: E402
from mlip_cases import compare_with_calculator, mixed_structures  # noqa: E402

from batchmd.data import Batch  # noqa: E402
from batchmd.models import UnsupportedSpeciesError, load_model  # noqa: E402

ARCHS = ["TensorNet", "M3GNet"]
TOL = {torch.float64: (1e-10, 1e-10, 1e-11), torch.float32: (2e-5, 2e-5, 2e-6)}  # energy eV, forces eV/Å, stress eV/Å^3


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{arch: (directory, float64 Potential)} of small random potentials saved as matgl saves them."""
    out = {}
    for arch in ARCHS:
        potential = random_matgl(arch, seed=1)
        path = tmp_path_factory.mktemp(arch) / arch
        potential.save(str(path))
        out[arch] = (str(path), potential)
    return out


class _Float64Graphs:
    """matgl's ``Atoms2Graph`` (same edges and images) with float64 coordinates and lattice.

    ``Atoms2Graph`` builds ``frac_coords`` and the lattice in float32 (``matgl.float_th``); this keeps
    its graph and replaces those two arrays by their float64 values, so ``PESCalculator`` and
    ``Potential.forward`` (which follow the potential's dtype) run the whole path in float64.
    """

    def __init__(self, inner):
        self.inner = inner

    def get_graph(self, atoms):
        graph, _, state = self.inner.get_graph(atoms)
        if atoms.pbc.all():
            lattice = torch.tensor(atoms.cell.array, dtype=torch.float64)[None]
            graph.frac_coords = torch.tensor(np.linalg.solve(atoms.cell.array.T, atoms.positions.T).T)
        else:  # matgl's molecules: identity lattice, Cartesian coordinates
            lattice = torch.eye(3, dtype=torch.float64)[None]
            graph.frac_coords = torch.tensor(atoms.positions, dtype=torch.float64)
        return graph, lattice, state


def reference_calculator(potential, dtype):
    """matgl's ``PESCalculator`` (stress in eV/Å^3, not its default GPa), float32 as shipped or float64."""
    from matgl.ext.ase import PESCalculator

    logging.getLogger("matgl").setLevel(logging.ERROR)
    potential = copy.deepcopy(potential).to(dtype)
    calc = PESCalculator(potential, stress_unit="eV/A3")
    if dtype == torch.float64:
        calc._atoms2graph = _Float64Graphs(calc._atoms2graph)
    return calc


def comparable(frames):
    """matgl's calculator treats a partially periodic cell as a molecule (no images): compare the others."""
    return [a for a in frames if a.pbc.all() or not a.pbc.any()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("arch", ARCHS)
def test_equals_own_ase_calculator(saved, arch, dtype):
    path, potential = saved[arch]
    model = load_model(f"matgl:{path}")
    frames = comparable(mixed_structures())
    batch = Batch.from_ase(frames, dtype=dtype)
    out = model(batch)
    assert out["energy"].dtype == dtype and out["stress"].shape == (len(frames), 3, 3)
    worst = compare_with_calculator(out, batch, frames, reference_calculator(potential, dtype),
                                    stress_for=lambda atoms: atoms.pbc.all())
    e_tol, f_tol, s_tol = TOL[dtype]
    scale = float(out["energy"].abs().max())  # energies ~50 eV: relative 1e-10 in float64
    assert worst["energy"] < e_tol * scale and worst["forces"] < f_tol and worst["stress"] < s_tol, worst


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_invariance_and_chunks(saved, arch):
    model = load_model(f"matgl:{saved[arch][0]}")
    frames = mixed_structures(seed=1)
    together = model(Batch.from_ase(frames, dtype=torch.float64))
    ptr = Batch.from_ase(frames, dtype=torch.float64).ptr.tolist()
    for s in (2, 5):  # quartz; the Cu(111) slab (periodic images along a and b)
        alone = model(Batch.from_ase([frames[s]], dtype=torch.float64))
        assert abs(float(alone["energy"][0, 0] - together["energy"][s, 0])) < 1e-10
        assert torch.allclose(alone["forces"], together["forces"][ptr[s]:ptr[s + 1]], atol=1e-10)
        assert torch.allclose(alone["stress"][0], together["stress"][s], atol=1e-12)
    model.chunk_atoms = 5  # several chunks of whole systems
    chunked = model(Batch.from_ase(frames, dtype=torch.float64))
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(chunked[key], together[key], atol=1e-10), key


def test_species_names_and_errors(saved, tmp_path):
    path = saved["M3GNet"][0]
    model = load_model(f"m3gnet:{path}")
    assert model.cutoff == 5.0 and model.threebody_cutoff == 4.0
    assert model.supported_numbers == frozenset({1, 8, 11, 14, 17, 29})
    info = model.model_info()
    assert info["model"] == "matgl-M3GNet(M3GNet)" and len(info["model_sha256"]) == 64
    bad = bulk("Fe", "bcc", a=2.87)
    with pytest.raises(UnsupportedSpeciesError, match="Fe"):
        model(Batch.from_ase([bad], dtype=torch.float64))
    with pytest.raises(ValueError, match="is a matgl M3GNet, not a TensorNet"):
        load_model(f"tensornet:{path}")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_model("matgl:TensorNet-MatPES-PBE-v2025.1-PES-not-cached")
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing model.pt, state.pt"):
        load_model(f"matgl:{tmp_path}")


def test_listed_and_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    from batchmd.models import available_models

    assert {"matgl:DIR", "tensornet:DIR", "m3gnet:DIR"} <= set(available_models())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matgl" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'batchmd\[matgl\]'"):
        load_model("tensornet:/models/x")


def _ase_fire_with_cell(atoms, calc, fmax, steps, pressure=0.0):
    """ASE's FIRE on FrechetCellFilter with one force call per step (ASE's ``run`` semantics)."""
    atoms = atoms.copy()
    atoms.calc = calc
    target = AseFrechet(atoms, scalar_pressure=pressure)
    opt = AseFIRE(target, logfile=None)
    for nsteps in range(steps + 1):
        forces = target.get_forces()
        if np.linalg.norm(forces, axis=1).max() < fmax or nsteps == steps:
            return atoms, nsteps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            opt.step(forces)


@pytest.mark.parametrize("arch, pressure", [
    pytest.param("TensorNet", 0.0, marks=pytest.mark.slow),  # 29 steps, 45-75 s here (ASE's side: 2/3 of it)
    pytest.param("M3GNet", 0.01, marks=pytest.mark.slow),  # 18 steps, 20-45 s; at zero pressure it only expands
])
def test_fire_variable_cell_takes_ase_steps(saved, arch, pressure):
    """batchmd.ase.relax(cell="full") equals ase.optimize.FIRE on FrechetCellFilter with matgl's calculator."""
    from batchmd.ase import relax

    path, potential = saved[arch]
    start = bulk("NaCl", "rocksalt", a=5.5)
    start.positions += np.random.default_rng(3).normal(0.0, 0.05, start.positions.shape)
    start.cell[:] = start.cell[:] @ (np.eye(3) + 0.01 * np.random.default_rng(4).normal(size=(3, 3)))
    ours = relax([start], load_model(f"matgl:{path}"), fmax=0.01, max_steps=150, cell="full",
                 pressure=pressure, dtype=torch.float64)[0]
    ref, nsteps = _ase_fire_with_cell(start, reference_calculator(potential, torch.float64), 0.01, 150, pressure)
    assert ours.info["converged"] and 5 < nsteps < 150 and ours.info["n_steps"] == nsteps
    assert np.abs(ours.positions - ref.positions).max() < 1e-6
    assert np.abs(ours.cell[:] - ref.cell[:]).max() < 1e-6
    assert 0.5 < ref.get_volume() / start.get_volume() < 1.0  # a real relaxation, neither a collapse nor a blow-up
