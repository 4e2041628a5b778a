"""Issue 21: equation of state (``batchmd.properties.compute_eos``).

Reference: the same procedure in ASE, one structure at a time -- the same scaled cells,
``ase.optimize.FIRE`` (through ``FrechetCellFilter(constant_volume=True)`` for
``relax="shape"``), the same fmax, ``ase.eos.EquationOfState`` -- with the model as an ASE
calculator (ASE's own EMT; ``batchmd.ase.Calculator`` for Lennard-Jones; SevenNet's own
calculator for SevenNet-0). V0 and B0 must agree to 1e-6 relative in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE as ASEFIRE
from ase.units import GPa

from batchmd.ase import Calculator
from batchmd.models import load_model
from batchmd.models.lj import LennardJones
from batchmd.properties import EOSResult, compute_eos
from batchmd.properties.eos import eos_volume_strains, fit_eos, scaled_copies
from cell_helpers import one_blas_thread

FMAX = 0.01


def ase_eos(atoms, calculator, *, n_points=9, strain=0.06, relax="positions", eos="birchmurnaghan", fmax=FMAX,
            max_steps=500):
    """The reference: the same EOS procedure in ASE, one structure and one volume at a time."""
    volumes, energies = [], []
    for copy in scaled_copies(atoms, eos_volume_strains(n_points, strain)):
        copy.calc = calculator
        if relax != "none":
            target = FrechetCellFilter(copy, constant_volume=True) if relax == "shape" else copy
            with one_blas_thread():  # FrechetCellFilter's scipy calls: ~20x slower with BLAS threads on 2 loaded cores
                assert ASEFIRE(target, logfile=None).run(fmax=fmax, steps=max_steps)
        volumes.append(copy.get_volume())
        energies.append(copy.get_potential_energy())
    v0, e0, b = EquationOfState(volumes, energies, eos=eos).fit()
    return v0, e0, b / GPa


def rel(a, b):
    return abs(a / b - 1.0)


def emt_metals():
    """Cu, Al, Ni, Au fcc near equilibrium, two of them rattled (so relaxing the atoms matters)."""
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.rattle(0.03, seed=2)
    al = bulk("Al", "fcc", a=4.05).repeat(2)
    al.rattle(0.03, seed=3)
    return [cu, al, bulk("Ni", "fcc", a=3.52, cubic=True), bulk("Au", "fcc", a=4.07)]


@pytest.fixture(scope="module")
def emt():
    return load_model("emt")


def test_emt_metals_match_ase_one_at_a_time(emt):
    structures = emt_metals()
    results = compute_eos(structures, emt)
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.formula for r in results] == ["Cu4", "Al8", "Ni4", "Au"]
    for atoms, result in zip(structures, results):
        assert result.ok, result.error
        v0, e0, b0 = ase_eos(atoms, EMT())
        assert rel(result.V0_A3, v0) < 1e-6 and rel(result.B0_GPa, b0) < 1e-6, (result.formula, result.V0_A3, v0,
                                                                                 result.B0_GPa, b0)
        assert abs(result.E0_eV - e0) < 1e-8
        assert math.isfinite(result.B0_prime) and 2 < result.B0_prime < 8
        assert result.statuses == ["converged"] * 9 and len(result.volumes_A3) == 9
    assert results[0].n_steps.max() > 0  # the rattled cell was relaxed at every volume
    assert 120 < results[0].B0_GPa < 150  # EMT copper, ~134 GPa


def test_lj_argon_matches_ase_with_batchmd_calculator():
    model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)
    argon = bulk("Ar", "fcc", a=5.26, cubic=True)
    argon.rattle(0.05, seed=4)
    [result] = compute_eos([argon], model, n_points=7)
    assert result.ok, result.error
    v0, _, b0 = ase_eos(argon, Calculator(model), n_points=7)
    assert rel(result.V0_A3, v0) < 1e-6 and rel(result.B0_GPa, b0) < 1e-6


def test_shape_relaxation_matches_ase_constant_volume_filter(emt):
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.set_cell(cu.cell[:] @ (np.eye(3) + [[0, 0.02, 0], [0, 0, 0], [0.01, 0, 0]]), scale_atoms=True)
    cu.rattle(0.02, seed=5)
    [result] = compute_eos([cu], emt, relax="shape", n_points=7)
    assert result.ok, result.error
    v0, _, b0 = ase_eos(cu, EMT(), relax="shape", n_points=7)
    assert rel(result.V0_A3, v0) < 1e-6 and rel(result.B0_GPa, b0) < 1e-6


def test_single_points_and_other_eos_forms(emt):
    au = bulk("Au", "fcc", a=4.07)  # one atom in the cell
    for form in ("vinet", "sj", "murnaghan"):
        [result] = compute_eos([au], emt, relax="none", eos=form, n_points=7)
        v0, _, b0 = ase_eos(au, EMT(), relax="none", eos=form, n_points=7)
        assert result.ok and result.n_atoms == 1 and result.eos == form
        assert rel(result.V0_A3, v0) < 1e-9 and rel(result.B0_GPa, b0) < 1e-9
        assert math.isnan(result.B0_prime) == (form == "sj")
        assert result.n_steps.tolist() == [0] * 7


def test_failures_are_per_structure_and_named(emt):
    stretched = bulk("Cu", "fcc", a=3.75, cubic=True)  # far from equilibrium: the minimum is not sampled
    rattled = bulk("Cu", "fcc", a=3.61, cubic=True)
    rattled.rattle(0.1, seed=6)
    good = bulk("Ni", "fcc", a=3.52)
    results = compute_eos([stretched, good], emt, n_points=5)
    assert not results[0].ok and "outside the sampled volumes" in results[0].error
    assert math.isnan(results[0].V0_A3) and results[0].row()["B0_GPa"] != results[0].row()["B0_GPa"]
    assert results[1].ok and results[1].error is None
    [short] = compute_eos([rattled], emt, n_points=5, max_steps=2)
    assert not short.ok and short.error.startswith("volume -6%: not converged in 2 steps (fmax ")
    assert "(and 4 more points)" in short.error and short.statuses[0] == "out_of_steps"


def test_float32_close_to_float64(emt):
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    [r64] = compute_eos([cu], emt, relax="none")
    [r32] = compute_eos([cu], emt, relax="none", dtype=torch.float32)
    assert r32.ok and rel(r32.V0_A3, r64.V0_A3) < 1e-5 and rel(r32.B0_GPa, r64.B0_GPa) < 1e-3
    cu.rattle(0.03, seed=8)
    [p64] = compute_eos([cu], emt, n_points=7)
    [p32] = compute_eos([cu], emt, n_points=7, dtype=torch.float32)
    assert p32.ok and rel(p32.V0_A3, p64.V0_A3) < 1e-5 and rel(p32.B0_GPa, p64.B0_GPa) < 1e-3


def test_rows_plot_and_streamed_results(emt, tmp_path):
    seen = []
    structures = [bulk("Cu", "fcc", a=3.61), bulk("Al", "fcc", a=4.05)]
    results = compute_eos(structures, emt, n_points=7, relax="none", on_result=seen.append)
    assert sorted(r.index for r in seen) == [0, 1]
    row = results[0].row()
    for column in ("index", "formula", "n_atoms", "ok", "error", "eos", "V0_A3", "V0_per_atom_A3", "E0_eV",
                   "E0_per_atom_eV", "B0_GPa", "B0_prime", "n_points"):
        assert column in row
    assert all(np.isscalar(v) or v is None for v in row.values()) and row["error"] is None
    results[0].plot(tmp_path / "cu.png")
    assert (tmp_path / "cu.png").read_bytes()[:4] == b"\x89PNG"
    failed = EOSResult(index=3, formula="X", n_atoms=1, ok=False, error="boom", eos="birchmurnaghan",
                       volumes_A3=np.array([1.0, 2.0]), energies_eV=np.array([np.nan, 1.0]))
    failed.plot(tmp_path / "x.png")


def test_bad_input_is_refused_in_one_line(emt):
    from ase.build import molecule

    cases = [([molecule("H2O")], {}, "structure 0 (H2O) has no 3-D periodic cell"),
             ([bulk("Cu")], {"eos": "bm"}, "eos must be one of"),
             ([bulk("Cu")], {"n_points": 3}, "n_points must be an integer >= 5"),
             ([bulk("Cu")], {"strain": 0.7}, "strain (volume strain) must be in (0, 0.5)"),
             ([bulk("Cu")], {"relax": "cell"}, "relax must be one of none, positions, shape"),
             ([bulk("Cu")], {"fmax": -1.0}, "fmax must be a positive number")]
    for structures, kwargs, text in cases:
        with pytest.raises(ValueError, match="^compute_eos: ") as info:
            compute_eos(structures, emt, **kwargs)
        assert text in str(info.value) and "\n" not in str(info.value)
    slab = bulk("Cu", "fcc", a=3.61, cubic=True)
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match="structure 1 .* no 3-D periodic cell"):
        compute_eos([bulk("Cu"), slab], emt)
    assert compute_eos([], emt) == []


def test_fit_eos_reports_failed_fits():
    volumes = np.linspace(10, 12, 7)
    with pytest.raises(ValueError, match="outside the sampled volumes"):
        fit_eos(volumes, -volumes)  # monotonic: no minimum inside
    with pytest.raises(ValueError, match="the birchmurnaghan fit has no minimum"):
        fit_eos(volumes, -(volumes - 11.0) ** 2)  # a maximum, not a minimum
    with pytest.raises(ValueError, match="the vinet fit failed"):
        fit_eos(volumes, [np.nan] + [1.0] * 6, eos="vinet")


def test_structure_without_atoms_refused(emt):
    with pytest.raises(ValueError, match="structure 0 has no atoms"):
        compute_eos([Atoms(cell=[3, 3, 3], pbc=True)], emt)


@pytest.mark.slow  # ~40 s on 2 shared CPU cores (SevenNet-0 on CPU, both sides)
def test_sevennet0_silicon_matches_its_own_ase_calculator():
    pytest.importorskip("sevenn")
    from mlip_cases import sevennet_reference_calculator

    si = bulk("Si", "diamond", a=5.44)
    si.rattle(0.02, seed=7)
    model = load_model("sevennet-0", device="cpu", dtype=torch.float64)
    [result] = compute_eos([si], model, n_points=7, fmax=0.02)
    assert result.ok, result.error
    # SevenNet's own calculator (sevenn.calculator.SevenNetCalculator), run in float64 (tests/mlip_cases.py)
    v0, _, b0 = ase_eos(si, sevennet_reference_calculator(torch.float64), n_points=7, fmax=0.02)
    assert 80 < result.B0_GPa < 110  # SevenNet-0 silicon (DFT-PBE ~ 88 GPa)
    assert rel(result.V0_A3, v0) < 1e-6 and rel(result.B0_GPa, b0) < 1e-6, (result.V0_A3, v0, result.B0_GPa, b0)


def test_a_failed_point_is_named_and_never_fitted_through():
    from batchmd.models.ase_calculator import ASECalculatorModel

    class Fragile(EMT):
        """EMT that raises below 11.5 Å^3/atom: the compressed copper points fail."""

        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            if atoms is not None and atoms.get_volume() / len(atoms) < 11.5:
                raise RuntimeError("compressed too far")
            super().calculate(atoms, properties, system_changes)

    model = ASECalculatorModel(Fragile())
    cu, al = bulk("Cu", "fcc", a=3.61), bulk("Al", "fcc", a=4.0)  # Cu: 11.76 Å^3/atom, Al: 16 Å^3/atom
    results = compute_eos([cu, al], model, n_points=5, relax="none")
    assert not results[0].ok and results[0].error.startswith("volume -6%: failed (")
    assert "(and 1 more points)" in results[0].error and results[0].statuses[:2] == ["failed", "failed"]
    assert math.isnan(results[0].B0_GPa) and results[1].ok
