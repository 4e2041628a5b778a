"""batchmd.properties.phonons against phonopy driven one displacement at a time with the same model.

The reference is the same finite-displacement procedure (phonopy's displacements and force
constants) with the forces of each supercell from an ASE calculator, one at a time: ASE's own
EMT for the EMT model, ``batchmd.ase.Calculator(model)`` for Lennard-Jones. Float64 force
constants agree to 1e-8 eV/Å^2.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.units import kB, mol

phonopy = pytest.importorskip("phonopy")

from batchmd.ase import Calculator  # noqa: E402
from batchmd.models import load_model  # noqa: E402
from batchmd.models.ase_calculator import ASECalculatorModel  # noqa: E402
from batchmd.models.lj import LennardJones  # noqa: E402
from batchmd.properties.phonons import choose_supercell, compute_phonons  # noqa: E402
from phonopy.structure.atoms import PhonopyAtoms  # noqa: E402

R_J_K_MOL = kB * mol * 1.602176634e-19  # gas constant, J/K/mol


def argon_model():
    return LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)


def cu3au():
    """L1_2 Cu3Au (Au at the corner, Cu at the face centres), EMT lattice constant."""
    a = 3.74
    return Atoms("AuCu3", cell=[a, a, a], pbc=True,
                 scaled_positions=[[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def reference(atoms, calc, supercell_matrix, primitive="auto", displacement=0.01):
    """phonopy with one ASE force evaluation at a time, residual forces subtracted."""
    ph = phonopy.Phonopy(PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.array(atoms.cell),
                                      scaled_positions=atoms.get_scaled_positions(), masses=atoms.get_masses()),
                         supercell_matrix=supercell_matrix, primitive_matrix=primitive, log_level=0)
    ph.generate_displacements(distance=displacement)

    def forces(cell):
        sc = Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)
        sc.calc = calc
        return sc.get_forces()

    perfect = forces(ph.supercell)
    ph.forces = np.array([forces(c) - perfect for c in ph.supercells_with_displacements])
    ph.produce_force_constants(show_drift=False)
    return ph


EMT_CASES = {
    "Cu fcc primitive 3x3x3": (bulk("Cu", "fcc", a=3.59), (3, 3, 3)),
    "Al fcc primitive 2x2x2": (bulk("Al", "fcc", a=4.05), (2, 2, 2)),
    "Cu3Au L1_2 2x2x2": (cu3au(), (2, 2, 2)),
}


@pytest.fixture(scope="module")
def emt_results():
    structures = [atoms for atoms, _ in EMT_CASES.values()]
    matrices = [np.diag(sc) for _, sc in EMT_CASES.values()]  # 3 structures: per-structure as 3x3
    return compute_phonons(structures, load_model("emt"), supercell_matrix=matrices, mesh=(12, 12, 12),
                           temperatures=[0, 10, 300, 1000, 3000])


@pytest.mark.parametrize("k, name", list(enumerate(EMT_CASES)))
def test_emt_force_constants_equal_phonopy_one_at_a_time(emt_results, k, name):
    atoms, sc = EMT_CASES[name]
    res = emt_results[k]
    assert res.ok and res.error is None and res.index == k
    ref = reference(atoms, EMT(), sc)
    assert res.force_constants.shape == ref.force_constants.shape == (res.n_supercell_atoms,) * 2 + (3, 3)
    np.testing.assert_allclose(res.force_constants, ref.force_constants, rtol=0, atol=1e-8)
    assert res.n_displacements == len(ref.supercells_with_displacements)
    ref.run_mesh((12, 12, 12), is_gamma_center=True)
    # frequencies are sqrt(eigenvalues): the acoustic modes at Γ (eigenvalue ~0) turn 1e-12 THz^2 of
    # force-constant noise (EMT's neighbour-list rounding) into ~2e-6 THz, so compare the eigenvalues
    np.testing.assert_allclose(np.sign(res.mesh_frequencies) * res.mesh_frequencies ** 2,
                               np.sign(ref.mesh.frequencies) * ref.mesh.frequencies ** 2, atol=1e-8)


def test_lj_argon_force_constants_and_thermal_properties():
    model = argon_model()
    atoms = bulk("Ar", "fcc", a=5.26)
    [res] = compute_phonons([atoms], model, supercell_matrix=(3, 3, 3), mesh=(10, 10, 10), band_path=None)
    ref = reference(atoms, Calculator(model), (3, 3, 3))
    np.testing.assert_allclose(res.force_constants, ref.force_constants, rtol=0, atol=1e-8)
    ref.run_mesh((10, 10, 10), is_gamma_center=True)
    ref.run_thermal_properties(temperatures=res.temperatures, exclude_gamma_acoustic=True)
    t, free, entropy, cv = ref.thermal_properties.thermal_properties
    np.testing.assert_allclose(res.free_energy_kJ_mol, free, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.heat_capacity_J_K_mol, cv, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.entropy_J_K_mol[1:], entropy[1:], rtol=1e-8)
    assert res.band_frequencies == [] and res.band_path_source is None


def test_physics_checks(emt_results):
    for atoms, res in zip([a for a, _ in EMT_CASES.values()], emt_results):
        n_prim = len(res.phonopy.primitive)
        # acoustic modes at Γ vanish within the stated tolerance; the optical ones (Cu3Au) do not
        acoustic = np.sort(np.abs(res.gamma_frequencies))[:3]
        assert np.all(acoustic < res.imaginary_tol_THz), acoustic
        assert res.n_imaginary == 0 and res.n_imaginary_gamma == 0
        assert res.min_freq_THz > -res.imaginary_tol_THz
        # phonopy's DOS normalisation: 3 n_prim states
        assert np.trapezoid(res.dos, res.dos_frequencies) == pytest.approx(3 * n_prim, rel=1e-2)
        # Dulong-Petit at high temperature; zero at 0 K
        cv = dict(zip(res.temperatures, res.heat_capacity_J_K_mol))
        assert cv[3000.0] == pytest.approx(3 * n_prim * R_J_K_MOL, rel=2e-3)
        assert cv[0.0] == pytest.approx(0.0, abs=1e-12)
        assert res.mesh_weights.sum() == 12 ** 3


def test_rows_bands_and_plot(emt_results, tmp_path):
    res = emt_results[2]
    row = res.row()
    for key in ("index", "formula", "ok", "error", "min_freq_THz", "n_imaginary", "F_300K_kJ_mol", "S_300K_J_K_mol",
                "Cv_300K_J_K_mol", "supercell", "n_displacements"):
        assert key in row
    assert row["formula"] == "AuCu3" and row["supercell"] == "2x2x2" and row["ok"] is True
    assert row["Cv_300K_J_K_mol"] == pytest.approx(res.heat_capacity_J_K_mol[2])
    assert res.band_path_source in ("seekpath", "ase") and len(res.band_frequencies) == len(res.band_labels) > 0
    assert res.band_frequencies[0].shape[1] == 3 * 4
    res.plot(tmp_path / "bands.png")
    assert (tmp_path / "bands.png").stat().st_size > 1000


def test_band_path_ase_and_given_min_length():
    atoms = bulk("Cu", "fcc", a=3.59)
    assert np.array_equal(choose_supercell(atoms, 7.0), np.diag([3, 3, 3]))  # |a_i| = 2.54 Å
    given = [[[0, 0, 0], [0.5, 0, 0.5], [0.5, 0.25, 0.75]], [[0.5, 0.5, 0.5], [0, 0, 0]]]
    a, b = compute_phonons([atoms, atoms], load_model("emt"), min_length=5.0, mesh=8.0, band_path="ase",
                           band_npoints=11, temperatures=[300])
    assert a.n_supercell_atoms == 8 and a.band_path_source == "ase" and a.band_labels[0][0] == "$\\Gamma$"
    [c] = compute_phonons([atoms], load_model("emt"), min_length=5.0, mesh=(4, 4, 4), band_path=given,
                          band_npoints=11)
    assert c.band_path_source == "given" and len(c.band_frequencies) == 3 and c.band_frequencies[0].shape == (11, 3)
    assert c.band_connections == [True, False, False]
    np.testing.assert_allclose(c.force_constants, a.force_constants, atol=1e-12)


def test_imaginary_modes_reported_not_failures():
    [res] = compute_phonons([bulk("Cu", "bcc", a=2.87)], load_model("emt"), supercell_matrix=(3, 3, 3),
                            mesh=(8, 8, 8), band_path=None)
    assert res.ok and res.n_imaginary > 0 and res.min_freq_THz < -0.5
    assert res.n_imaginary_gamma == 0 and res.row()["n_imaginary"] == res.n_imaginary


class _FailsOnAu(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        if "Au" in atoms.get_chemical_symbols():
            raise PropertyNotImplementedError("no Au today")
        super().calculate(atoms, properties, system_changes or [])


def test_failed_evaluation_is_that_structures_alone():
    model = ASECalculatorModel(_FailsOnAu())
    res = compute_phonons([bulk("Cu", "fcc", a=3.59), cu3au()], model, mesh=(4, 4, 4), band_path=None)
    assert res[0].ok and res[0].force_constants is not None
    assert not res[1].ok and "perfect supercell" in res[1].error and "\n" not in res[1].error
    row = res[1].row()
    assert row["ok"] is False and np.isnan(row["F_300K_kJ_mol"]) and row["n_imaginary"] is None
    with pytest.raises(ValueError, match="no phonons"):
        res[1].plot("/nonexistent.png")


def test_refusals():
    model = load_model("emt")
    molecule = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])
    with pytest.raises(ValueError, match="structure 1 .*no 3-D periodic cell"):
        compute_phonons([bulk("Cu"), molecule], model)
    with pytest.raises(ValueError, match="supercell_matrix"):
        compute_phonons([bulk("Cu")], model, supercell_matrix=(2, 2))
    with pytest.raises(ValueError, match="mesh"):
        compute_phonons([bulk("Cu")], model, mesh=(2, 2, -1))
    with pytest.raises(ValueError, match="displacement"):
        compute_phonons([bulk("Cu")], model, displacement=0.0)
    with pytest.raises(ValueError, match="band_path"):
        compute_phonons([bulk("Cu")], model, band_path="magic")
    with pytest.raises(ValueError, match=r"Fe.*\(frame 1\)"):
        compute_phonons([bulk("Cu"), bulk("Fe")], model)
    assert compute_phonons([], model) == []


def test_missing_phonopy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "phonopy", None)
    with pytest.raises(ImportError, match=r"batchmd\[phonons\]"):
        compute_phonons([bulk("Cu")], load_model("emt"))


def test_relax_input_and_not_converged():
    atoms = cu3au()
    atoms.positions[1] += [0.03, -0.02, 0.01]
    model = load_model("emt")
    good, = compute_phonons([atoms], model, relax_input=True, fmax=1e-4, mesh=(4, 4, 4), band_path=None)
    assert good.ok and good.residual_force_max_eV_A < 1e-3 and good.n_imaginary == 0
    bad, = compute_phonons([atoms], model, relax_input=True, fmax=1e-4, max_steps=2, mesh=(4, 4, 4),
                           band_path=None)
    assert not bad.ok and bad.error.startswith("input relaxation (cell fixed): not converged in 2 steps")


def test_float32_close_to_float64():
    model = argon_model()
    atoms = bulk("Ar", "fcc", a=5.26)
    r64, = compute_phonons([atoms], model, supercell_matrix=(2, 2, 2), mesh=(6, 6, 6), band_path=None)
    r32, = compute_phonons([atoms], model, supercell_matrix=(2, 2, 2), mesh=(6, 6, 6), band_path=None,
                           dtype=torch.float32)
    assert r32.ok
    scale = np.abs(r64.force_constants).max()
    np.testing.assert_allclose(r32.force_constants, r64.force_constants, atol=2e-3 * scale)
    np.testing.assert_allclose(r32.heat_capacity_J_K_mol, r64.heat_capacity_J_K_mol, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_sevennet_si_equals_sevennet_calculator_one_at_a_time():
    """SevenNet-0 Si diamond (primitive, 2x2x2) vs sevenn's own calculator (float64) one displacement at a time."""
    pytest.importorskip("sevenn")
    from mlip_cases import sevennet_model, sevennet_reference_calculator

    si = bulk("Si", "diamond", a=5.43)
    start = time.perf_counter()
    [res] = compute_phonons([si], sevennet_model(), supercell_matrix=(2, 2, 2), mesh=(8, 8, 8))
    took = time.perf_counter() - start
    ref = reference(si, sevennet_reference_calculator(torch.float64), (2, 2, 2))
    assert res.ok, res.error
    diff = np.abs(res.force_constants - ref.force_constants).max()
    print(f"SevenNet-0 Si phonons: {took:.1f} s; max |fc| {np.abs(ref.force_constants).max():.3f} eV/Å^2; "
          f"max |Δfc| {diff:.2e} eV/Å^2")
    np.testing.assert_allclose(res.force_constants, ref.force_constants, rtol=0, atol=1e-8)
    assert res.n_imaginary == 0 and np.sort(np.abs(res.gamma_frequencies))[2] < res.imaginary_tol_THz


def test_small_atom_budget_refills_give_the_same_force_constants(emt_results, capsys):
    """Supercells served a few at a time (many refills of the live batch) give the same answer."""
    structures = [atoms for atoms, _ in EMT_CASES.values()]
    matrices = [np.diag(sc) for _, sc in EMT_CASES.values()]
    again = compute_phonons(structures, load_model("emt"), supercell_matrix=matrices, mesh=(12, 12, 12),
                            temperatures=[300], band_path=None, max_atoms=40, progress=True,
                            primitive="auto", symmetrize_fc=False)
    for a, b in zip(again, emt_results):
        np.testing.assert_allclose(a.force_constants, b.force_constants, rtol=0, atol=1e-12)
    [sym] = compute_phonons([cu3au()], load_model("emt"), primitive=None, symmetrize_fc=True, mesh=(4, 4, 4),
                            band_path=None)
    fc = sym.force_constants
    assert np.abs(fc.sum(axis=1)).max() < 1e-10  # translational sum rule imposed by phonopy
    assert len(sym.phonopy.primitive) == 4 and sym.gamma_frequencies.shape == (12,)
