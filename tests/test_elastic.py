"""batchmd.properties.elastic: the batched elastic tensor against ASE one structure at a time, pymatgen,
crystal symmetry, an EOS bulk modulus and SevenNet-0's own calculator."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones as AseLJ
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE as AseFIRE
from ase.units import GPa

from batchmd.models.ase_calculator import ASECalculatorModel
from batchmd.models.lj import LennardJones
from batchmd.properties.elastic import ElasticResult, compute_elastic, vrh_moduli

STRAINS = (-0.01, -0.005, 0.005, 0.01)
FMAX = 0.005
PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
LJ_ARGS = dict(sigma=3.405, epsilon=0.0104)
LJ_CUTOFF = 8.5125


def emt_model():
    from batchmd.models import load_model

    return load_model("emt")


def lj_model():
    return LennardJones(cutoff=LJ_CUTOFF, **LJ_ARGS)


def ase_lj():
    return AseLJ(rc=LJ_CUTOFF, smooth=False, **LJ_ARGS)


def ase_elastic(atoms, calculator, strains=STRAINS, fmax=FMAX, relax_ions=True, relax_input=False, max_steps=500):
    """The finite-difference procedure in plain ASE, one structure and one strain at a time (the reference).

    Stress in GPa, positive in tension (ASE); C[:, j] = slope of np.polyfit over (0, sigma0) and (e, sigma(e)).
    """
    with _one_blas_thread():
        return _ase_elastic(atoms, calculator, strains, fmax, relax_ions, relax_input, max_steps)


def _one_blas_thread():
    """ASE's FrechetCellFilter calls scipy's expm_frechet on 3x3 matrices: with OpenBLAS threads on a
    loaded 2-core machine that is ~20x slower than with one thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional speed-up only
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _ase_elastic(atoms, calculator, strains, fmax, relax_ions, relax_input, max_steps):
    atoms = atoms.copy()
    if relax_input:
        atoms.calc = calculator()
        assert AseFIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=fmax, steps=max_steps)

    def stress(frame):
        frame.calc = calculator()
        if relax_ions:
            assert AseFIRE(frame, logfile=None).run(fmax=fmax, steps=max_steps)
        return frame.get_stress(voigt=True) / GPa

    sigma0 = stress(atoms.copy())
    C = np.zeros((6, 6))
    for j, (a, b) in enumerate(PAIRS):
        e, sigma = [0.0], [sigma0]
        for m in strains:
            eps = np.zeros((3, 3))
            eps[a, b] += m / 2
            eps[b, a] += m / 2
            F = np.eye(3) + eps
            frame = atoms.copy()
            frame.set_cell(atoms.cell.array @ F.T)
            frame.positions = atoms.positions @ F.T
            e.append(m)
            sigma.append(stress(frame))
        C[:, j] = np.polyfit(e, np.array(sigma), 1)[0]
    return C


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(b).max())


def rattled(atoms, amount=0.03, seed=0):
    atoms = atoms.copy()
    atoms.positions += np.random.default_rng(seed).normal(0.0, amount, atoms.positions.shape)
    return atoms


def hcp_argon():
    return rattled(bulk("Ar", "hcp", a=3.74, c=6.08), 0.02, seed=1)  # near the LJ minimum: few (slow) ASE filter steps


#: Soft LJ argon (C ~ 5 GPa) needs a tight fmax: the cell rows of the filter at fmax 0.005 eV/Å leave a
#: residual stress of ~0.01 GPa, which is not small against C * 1% strain ~ 0.05 GPa.
LJ_FMAX = 1e-4


@pytest.fixture(scope="module")
def hcp_result():
    [result] = compute_elastic([hcp_argon()], lj_model(), relax_input=True, fmax=LJ_FMAX)
    assert result.ok, result.error
    return result


def test_equals_ase_one_at_a_time_emt():
    """Relaxed ions at every strain, two structures batched, equal plain ASE FIRE + EMT one at a time."""
    # hcp: atoms off inversion centres, so the ions relax under strain (fcc atoms feel no force)
    # (one element: ASECalculatorModel's shared EMT re-initialises whenever consecutive systems differ in species)
    structures = [rattled(bulk("Cu", "hcp", a=2.55, c=4.16), seed=2), bulk("Cu", "hcp", a=2.6, c=4.1)]
    results = compute_elastic(structures, emt_model())
    for atoms, result in zip(structures, results):
        assert result.ok, result.error
        assert max(result.n_steps) > 4  # the ions did move
        reference = ase_elastic(atoms, EMT)
        assert rel(result.C, reference) < 1e-6, (result.formula, rel(result.C, reference))


def test_equals_ase_hcp_lj_and_hexagonal_symmetry(hcp_result):
    """hcp argon (LJ, ASE's own LennardJones as the reference): C, and the hexagonal relations."""
    reference = ase_elastic(hcp_argon(), ase_lj, relax_input=True, fmax=LJ_FMAX)
    assert rel(hcp_result.C, reference) < 1e-6, rel(hcp_result.C, reference)
    C = hcp_result.C_sym
    scale = np.abs(C).max()
    tol = 5e-3 * scale  # fmax-limited relaxation and finite differences (measured: 2e-3 of max |C|)
    assert abs(C[0, 0] - C[1, 1]) < tol and abs(C[0, 2] - C[1, 2]) < tol and abs(C[3, 3] - C[4, 4]) < tol
    assert abs(C[5, 5] - (C[0, 0] - C[0, 1]) / 2) < tol
    off = [(i, j) for i in range(6) for j in range(6) if (i < 3 and j > 2) or (i > 2 and j > 2 and i != j)]
    assert max(abs(C[i, j]) for i, j in off) < tol
    assert hcp_result.stable and hcp_result.K_R <= hcp_result.K_V + 1e-9 and hcp_result.G_R <= hcp_result.G_V


def test_equals_pymatgen_from_the_same_strains_and_stresses(hcp_result):
    """pymatgen's ElasticTensor.from_independent_strains (its c_ij = d sigma_j / d eps_i: our C transposed)."""
    pytest.importorskip("pymatgen")
    from pymatgen.analysis.elasticity import ElasticTensor, Strain, Stress

    def strain(j, m):
        eps = np.zeros((3, 3))
        a, b = PAIRS[j]
        eps[a, b] += m / 2
        eps[b, a] += m / 2
        return Strain(eps)

    strains, stresses = [], []
    for j in range(6):
        for k, m in enumerate(hcp_result.strains):
            strains.append(strain(j, m))
            stresses.append(Stress.from_voigt(hcp_result.stresses[j, k]))  # GPa, positive in tension: no sign flip
    tensor = ElasticTensor.from_independent_strains(strains, stresses, eq_stress=Stress.from_voigt(hcp_result.stress0),
                                                    vasp=False, tol=0.0)
    assert rel(hcp_result.C, tensor.voigt.T) < 1e-10, rel(hcp_result.C, tensor.voigt.T)
    symmetric = ElasticTensor.from_voigt(0.5 * (tensor.voigt + tensor.voigt.T))
    ours = hcp_result.row()
    for name, theirs in (("K_V", symmetric.k_voigt), ("K_R", symmetric.k_reuss), ("K_VRH", symmetric.k_vrh),
                         ("G_V", symmetric.g_voigt), ("G_R", symmetric.g_reuss), ("G_VRH", symmetric.g_vrh)):
        assert abs(ours[f"{name}_GPa"] - theirs) < 1e-9 * abs(theirs), (name, ours[f"{name}_GPa"], theirs)


def test_cubic_symmetry_and_bulk_modulus_emt():
    """EMT Cu, Al, Ni (fcc; primitive and conventional cells): cubic C, K_V = (C11 + 2 C12)/3 = the EOS bulk modulus."""
    from ase.eos import EquationOfState

    structures = [bulk("Cu", "fcc", a=3.6), bulk("Al", "fcc", a=4.0), bulk("Ni", "fcc", a=3.5, cubic=True),
                  bulk("Cu", "fcc", a=3.6, cubic=True)]
    results = compute_elastic(structures, emt_model(), relax_input=True)
    for result in results:
        assert result.ok, result.error
        C = result.C
        tol = 1e-8 * np.abs(C).max()
        for group in ([C[0, 0], C[1, 1], C[2, 2]], [C[0, 1], C[0, 2], C[1, 2], C[1, 0], C[2, 0], C[2, 1]],
                      [C[3, 3], C[4, 4], C[5, 5]]):
            assert np.ptp(group) < tol, (result.formula, group)
        mask = np.ones((6, 6), dtype=bool)
        mask[:3, :3] = False
        mask[[3, 4, 5], [3, 4, 5]] = False
        assert np.abs(C[mask]).max() < tol
        assert abs(result.K_V - (C[0, 0] + 2 * C[0, 1]) / 3) < 1e-9 * result.K_V
        assert abs(result.K_R - result.K_V) < 1e-9 * result.K_V  # cubic: Voigt and Reuss bulk moduli agree
    cu, cu_conventional = results[0], results[3]
    # primitive and conventional cells relax (FrechetCellFilter, fmax 0.005) to slightly different lattice
    # constants: measured 6e-4 relative in C
    assert rel(cu.C, cu_conventional.C) < 2e-3
    assert 130 < cu.K_V < 138  # ASE's EMT Cu: ~134 GPa
    # EOS of the relaxed Cu cell, energies with ASE's EMT (+-1% volume), ASE's Birch-Murnaghan fit.
    base = cu.structure
    volumes, energies = [], []
    for x in np.linspace(0.99, 1.01, 9):
        atoms = base.copy()
        atoms.set_cell(base.cell * x ** (1 / 3), scale_atoms=True)
        atoms.calc = EMT()
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    _, _, b0 = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    assert abs(cu.K_V - b0 / GPa) < 2e-3 * cu.K_V, (cu.K_V, b0 / GPa)


def test_clamped_ions():
    """1-atom cell: clamped = relaxed (no internal freedom); hcp: relaxing ions only softens (clamped - relaxed >= 0)."""
    one = bulk("Cu", "fcc", a=3.6)
    relaxed = compute_elastic([one], emt_model())[0]
    clamped = compute_elastic([one], emt_model(), relax_ions=False)[0]
    assert relaxed.ok and clamped.ok and not clamped.relax_ions
    assert set(clamped.status) == {"completed"} and set(clamped.n_steps) == {0}
    np.testing.assert_array_equal(clamped.C, relaxed.C)
    start = compute_elastic([hcp_argon()], lj_model(), relax_input=True, relax_ions=False, fmax=LJ_FMAX)[0]
    hcp_relaxed = compute_elastic([start.structure], lj_model(), fmax=LJ_FMAX)[0]
    assert rel(compute_elastic([start.structure], lj_model(), relax_ions=False)[0].C, start.C) < 1e-12
    difference = np.linalg.eigvalsh(start.C_sym - hcp_relaxed.C_sym)
    assert difference.min() > -1e-3 * np.abs(start.C_sym).max() and difference.max() > 0.01 * np.abs(start.C_sym).max()
    reference = ase_elastic(start.structure, ase_lj, relax_ions=False)
    assert rel(start.C, reference) < 1e-9


def test_lbfgs_and_progress(hcp_result, capsys):
    """optimizer="lbfgs" ends within the fmax-limited precision of FIRE; progress=True writes a status line."""
    [result] = compute_elastic([hcp_argon()], lj_model(), relax_input=True, fmax=LJ_FMAX, optimizer="lbfgs",
                               progress=True)
    assert result.ok, result.error
    assert rel(result.C_sym, hcp_result.C_sym) < 1e-2, rel(result.C_sym, hcp_result.C_sym)
    assert "systems" in capsys.readouterr().err


def test_live_batch_size_does_not_change_the_result(hcp_result):
    """max_atoms=4: two variants at a time, 24 refills; the same C as with all 25 variants live at once."""
    [result] = compute_elastic([hcp_argon()], lj_model(), relax_input=True, fmax=LJ_FMAX, max_atoms=4)
    assert result.ok and rel(result.C, hcp_result.C) < 1e-12, rel(result.C, hcp_result.C)


def test_float32_close_to_float64(hcp_result):
    [result] = compute_elastic([hcp_argon()], lj_model(), relax_input=True, fmax=LJ_FMAX, dtype=torch.float32)
    assert result.ok, result.error
    assert rel(result.C_sym, hcp_result.C_sym) < 1e-3, rel(result.C_sym, hcp_result.C_sym)  # measured 3e-6
    assert abs(result.K_VRH - hcp_result.K_VRH) < 1e-3 * hcp_result.K_VRH


class _PoisonedEMT(EMT):
    """EMT with a NaN energy and forces for cells whose x edge is in ``(low, high)`` Å (a failing variant)."""

    def __init__(self, low, high):
        super().__init__()
        self.low, self.high = low, high

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        super().calculate(atoms, properties, system_changes)
        if self.low < self.atoms.cell[0, 0] < self.high:
            self.results["energy"] = self.results["free_energy"] = math.nan
            self.results["forces"] = np.full_like(self.results["forces"], np.nan)


def test_failures_are_per_structure_and_named():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    al = bulk("Al", "fcc", a=4.05, cubic=True)
    model = ASECalculatorModel(_PoisonedEMT(3.6 * 1.0075, 3.7), compute_stress=True)
    bad, good = compute_elastic([cu, al], model)  # Cu's +1% xx strain gives NaN; Al's cells are all larger
    assert not bad.ok and "strain +1% of xx: failed" in bad.error and "\n" not in bad.error
    assert np.isnan(bad.C).all() and math.isnan(bad.row()["K_VRH_GPa"]) and bad.row()["ok"] is False
    assert dict(zip(bad.variants, bad.status))["strain +1% of xx"] == "failed"
    alone = compute_elastic([al], emt_model())[0]
    assert good.ok and np.array_equal(good.C, alone.C)  # unaffected, bit for bit
    slow, fine = compute_elastic([rattled(cu, 0.05), al], emt_model(), max_steps=2)
    assert not slow.ok and "not converged in 2 steps (fmax" in slow.error and "more failed variants" in slow.error
    assert fine.ok and np.array_equal(fine.C, alone.C)
    with pytest.raises(ValueError, match="plot.*failed"):
        slow.plot("never.png")
    [unrelaxed] = compute_elastic([bulk("Cu", "fcc", a=3.7)], emt_model(), relax_input=True, max_steps=1)
    assert not unrelaxed.ok and unrelaxed.error.startswith("input relaxation (cell full): not converged in 1 steps")
    assert unrelaxed.row()["n_variants"] == 0 and math.isnan(unrelaxed.row()["C11_GPa"])


def test_refusals_are_one_line():
    model = emt_model()
    cases = [([Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])], {}, "3-D periodic cell"),
             ([bulk("Cu", "fcc", a=3.6), Atoms("Cu", cell=[3, 3, 3], pbc=[True, True, False])], {}, "structure 1"),
             ([bulk("Cu")], {"strains": ()}, "strains is empty"),
             ([bulk("Cu")], {"strains": (0.0, 0.01)}, "non-zero"),
             ([bulk("Cu")], {"strains": (0.3,)}, "at most 0.1"),
             ([bulk("Cu")], {"strains": (0.01, 0.01)}, "repeated"),
             ([bulk("Cu")], {"fmax": 0}, "fmax"),
             ([bulk("Cu")], {"optimizer": "bfgs"}, "optimizer"),
             ([bulk("Cu")], {"max_steps": 0}, "max_steps")]
    for structures, kwargs, match in cases:
        with pytest.raises(ValueError, match=match) as error:
            compute_elastic(structures, model, **kwargs)
        assert "\n" not in str(error.value)

    class NoStress:
        computes_stress = False

    with pytest.raises(ValueError, match="computes no stress"):
        compute_elastic([bulk("Cu")], NoStress())
    assert compute_elastic([], model) == []


def test_row_plot_and_moduli(tmp_path, hcp_result):
    row = hcp_result.row()
    names = [f"C{i}{j}_GPa" for i in range(1, 7) for j in range(i, 7)]
    assert all(name in row for name in names) and len([k for k in row if k.startswith("C") and k[1].isdigit()]) == 21
    assert row["ok"] is True and row["error"] is None and row["formula"] == "Ar2" and row["n_variants"] == 25
    assert row["C_asym_GPa"] < 1e-3 * abs(row["C11_GPa"]) and row["stable"] is True
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in row.values())
    hcp_result.plot(tmp_path / "elastic.png")
    assert (tmp_path / "elastic.png").stat().st_size > 10_000
    # Voigt/Reuss/Hill of an isotropic tensor: every bound equals K = lambda + 2 mu / 3 and G = mu.
    lam, mu = 60.0, 30.0
    C = np.zeros((6, 6))
    C[:3, :3] = lam
    C[[0, 1, 2], [0, 1, 2]] += 2 * mu
    C[[3, 4, 5], [3, 4, 5]] = mu
    moduli = vrh_moduli(C)
    for name in ("K_V", "K_R", "K_VRH"):
        assert abs(moduli[name] - (lam + 2 * mu / 3)) < 1e-9
    for name in ("G_V", "G_R", "G_VRH"):
        assert abs(moduli[name] - mu) < 1e-9
    failed = ElasticResult(index=3, formula="Cu", ok=False, error="x")
    assert failed.row()["index"] == 3 and math.isnan(failed.row()["C11_GPa"]) and failed.row()["stable"] is None


@pytest.mark.slow  # SevenNet-0 on CPU (TorchScript warm-up of the model and of its own calculator): minutes
def test_sevennet_silicon_equals_own_calculator():
    """Si diamond with SevenNet-0 (float64): batched vs SevenNet's own ASE calculator through the same ASE procedure."""
    pytest.importorskip("sevenn")
    from mlip_cases import sevennet_model, sevennet_reference_calculator

    si = bulk("Si", "diamond", a=5.43)
    [result] = compute_elastic([si], sevennet_model(), relax_input=True, dtype=torch.float64)
    assert result.ok, result.error
    reference = ase_elastic(si, lambda: sevennet_reference_calculator(torch.float64), relax_input=True)
    assert rel(result.C, reference) < 1e-8, rel(result.C, reference)  # measured 1.3e-14
    C = result.C_sym
    assert abs(C[0, 0] - C[1, 1]) < 1e-2 * C[0, 0] and abs(C[3, 3] - C[5, 5]) < 1e-2 * C[0, 0]
    assert 60 < result.K_VRH < 120  # Si: ~98 GPa experimentally
