"""AtomicData: construction, defaults, validation errors, dtype/device, ASE round trips."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_masses

from batchmd.data import AtomicData


def test_tutorial_construction():
    n = 5
    data = AtomicData(positions=torch.randn(n, 3), atomic_numbers=torch.randint(1, 10, (n,), dtype=torch.long),
                      atomic_masses=torch.ones(n), forces=torch.zeros(n, 3), energies=torch.zeros(1, 1))
    data.add_node_property("velocities", torch.zeros(n, 3))
    assert data.velocities.shape == (n, 3)
    assert data.dtype == torch.float32 and data.velocities.dtype == torch.float32
    assert data.fields["velocities"] == "atom"
    assert data.num_nodes == n and data.num_edges == 0
    assert "AtomicData(num_nodes=5" in repr(data)


def test_defaults():
    data = AtomicData(positions=np.zeros((2, 3)), atomic_numbers=[1, 8])
    assert data.dtype == torch.float64
    assert data.atomic_numbers.dtype == torch.int64
    assert data.atomic_masses.tolist() == [atomic_masses[1], atomic_masses[8]]
    assert torch.equal(data.cell, torch.zeros(3, 3, dtype=torch.float64))
    assert data.pbc.dtype == torch.bool and not data.pbc.any()
    assert data.velocities is None and data.forces is None and data.energies is None and data.stress is None


def test_explicit_dtype_and_shapes_normalised():
    data = AtomicData(torch.zeros(2, 3), torch.tensor([1, 1]), energies=1.5, pbc=True, cell=torch.eye(3) * 5,
                      system_id=7, dtype=torch.float64)
    assert data.positions.dtype == torch.float64 and data.cell.dtype == torch.float64
    assert data.energies.shape == (1, 1) and data.energies.item() == 1.5
    assert data.pbc.tolist() == [True, True, True]
    assert data.system_id.shape == (1, 1) and data.system_id.dtype == torch.int64


def test_user_properties_and_to():
    data = AtomicData(torch.zeros(3, 3, dtype=torch.float64), [1, 1, 8])
    data.add_node_property("charges", torch.tensor([0.1, 0.1, -0.2]))
    data.add_node_property("tags", torch.tensor([1, 2, 3], dtype=torch.int32))
    data.add_system_property("temperature", torch.tensor(300.0))
    data.add_edge_property("edge_index", torch.tensor([[0, 1], [2, 2]]))
    data.add_edge_property("bond_order", torch.tensor([1.0, 2.0]))
    assert data.fields == {"positions": "atom", "atomic_numbers": "atom", "atomic_masses": "atom",
                           "cell": "system", "pbc": "system", "charges": "atom", "tags": "atom",
                           "temperature": "system", "edge_index": "edge", "bond_order": "edge"}
    assert data.charges.dtype == torch.float64  # floating user fields follow the system dtype
    low = data.to(dtype=torch.float32)
    assert low.positions.dtype == torch.float32 and low.charges.dtype == torch.float32
    assert low.tags.dtype == torch.int32 and low.atomic_numbers.dtype == torch.int64 and low.pbc.dtype == torch.bool
    assert data.positions.dtype == torch.float64  # original untouched
    assert low.to("cpu").device.type == "cpu"
    assert data.num_edges == 2
    with pytest.raises(ValueError, match="edge"):
        data.add_edge_property("bond_length", torch.ones(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"positions": torch.zeros(3, 2)}, "'positions' must have shape"),
        ({"positions": torch.zeros(3)}, "'positions' must have shape"),
        ({"positions": torch.tensor([[0.0, float("nan"), 0.0]] * 3)}, "'positions' contains NaN"),
        ({"positions": torch.tensor([[0.0, float("inf"), 0.0]] * 3)}, "'positions' contains NaN"),
        ({"cell": torch.full((3, 3), float("nan"))}, "'cell' contains NaN"),
        ({"cell": torch.zeros(3)}, "'cell' must have shape"),
        ({"atomic_masses": torch.tensor([1.0, 0.0, 1.0])}, "'atomic_masses' must be finite and > 0"),
        ({"atomic_masses": torch.tensor([1.0, -2.0, 1.0])}, "'atomic_masses' must be finite and > 0"),
        ({"atomic_masses": torch.ones(4)}, "'atomic_masses' has 4 rows"),
        ({"atomic_numbers": torch.tensor([1, 0, 1])}, "'atomic_numbers' must lie in 1..118"),
        ({"atomic_numbers": torch.tensor([1, 119, 1])}, "'atomic_numbers' must lie in 1..118"),
        ({"atomic_numbers": torch.tensor([1, 1])}, "'atomic_numbers' has 2 rows"),
        ({"atomic_numbers": torch.tensor([1.0, 1.5, 1.0])}, "'atomic_numbers' must hold integers"),
        ({"pbc": [True, False, False]}, "periodic direction"),
        ({"pbc": [True, True, True], "cell": torch.diag(torch.tensor([3.0, 3.0, 0.0]))}, r"direction\(s\) \[2\]"),
        ({"velocities": torch.zeros(2, 3)}, "'velocities' has 2 rows"),
        ({"forces": torch.zeros(3, 4)}, "'forces' must have shape"),
        ({"energies": torch.zeros(2)}, "'energies' must have shape"),
        ({"stress": torch.zeros(6)}, "'stress' must have shape"),
        ({"edge_index": torch.tensor([[0], [3]])}, "'edge_index' must hold atom indices"),
        ({"dtype": torch.float16}, "dtype must be"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {"positions": torch.zeros(3, 3), "atomic_numbers": torch.tensor([1, 1, 8])}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        AtomicData(**args)


def test_bad_properties_raise():
    data = AtomicData(torch.zeros(3, 3), [1, 1, 8])
    with pytest.raises(ValueError, match="'velocities' has 2 rows"):
        data.add_node_property("velocities", torch.zeros(2, 3))
    with pytest.raises(ValueError, match="'charges' has 2 rows"):
        data.add_node_property("charges", torch.zeros(2))
    with pytest.raises(ValueError, match="'energies' is a system-level field"):
        data.add_node_property("energies", torch.zeros(3))
    with pytest.raises(ValueError, match="not a valid field name"):
        data.add_system_property("not valid", torch.zeros(()))
    with pytest.raises(ValueError, match="'positions' contains NaN"):
        data.add_node_property("positions", torch.full((3, 3), float("nan")))
    with pytest.raises(AttributeError, match="add_node_property"):
        data.charges = torch.zeros(3)
    with pytest.raises(AttributeError):
        _ = data.no_such_field


def test_from_ase_molecule_defaults(water):
    data = AtomicData.from_ase(water)
    assert data.dtype == torch.float64
    assert data.velocities is None and data.energies is None and data.forces is None
    np.testing.assert_array_equal(data.positions.numpy(), water.get_positions())
    np.testing.assert_array_equal(data.atomic_masses.numpy(), water.get_masses())
    back = data.to_ase()
    assert back == water
    assert back.calc is None


def test_from_ase_float32(copper):
    data = AtomicData.from_ase(copper, dtype=torch.float32, device="cpu")
    assert data.positions.dtype == data.cell.dtype == data.atomic_masses.dtype == torch.float32
    assert data.pbc.tolist() == [True, True, True]
    back = data.to_ase()
    np.testing.assert_allclose(back.get_positions(), copper.get_positions(), atol=1e-6)
    np.testing.assert_allclose(back.cell.array, copper.cell.array, atol=1e-6)


def test_ase_round_trip_exact(labelled_structures):
    for atoms in labelled_structures:
        atoms.new_array("charges", np.linspace(-1, 1, len(atoms)))
        atoms.info["note"] = np.arange(3)
        data = AtomicData.from_ase(atoms)
        assert data.stress.shape == (3, 3) and data.energies.shape == (1, 1)
        assert data.fields["step"] == "system" and data.step.dtype == torch.int64
        assert data.temperature.dtype == torch.float64 and data.relaxed.dtype == torch.bool
        assert data.info["name"] == atoms.info["name"] and data.fields["charges"] == "atom"
        np.testing.assert_array_equal(data.velocities.numpy(), atoms.get_velocities())
        back = data.to_ase()
        assert_atoms_equal(back, atoms)


def assert_atoms_equal(back: Atoms, atoms: Atoms) -> None:
    """Exact equality of everything batchmd round-trips (momenta to 1 ulp: p/m*m)."""
    np.testing.assert_array_equal(back.get_positions(), atoms.get_positions())
    np.testing.assert_array_equal(back.cell.array, atoms.cell.array)
    np.testing.assert_array_equal(back.pbc, atoms.pbc)
    np.testing.assert_array_equal(back.numbers, atoms.numbers)
    np.testing.assert_array_equal(back.get_masses(), atoms.get_masses())
    np.testing.assert_allclose(back.get_momenta(), atoms.get_momenta(), rtol=4e-16, atol=0)
    assert back.calc.results["energy"] == atoms.calc.results["energy"]
    np.testing.assert_array_equal(back.calc.results["forces"], atoms.calc.results["forces"])
    np.testing.assert_array_equal(back.get_stress(), atoms.get_stress())
    assert back.info.keys() == atoms.info.keys()
    for key, value in atoms.info.items():
        np.testing.assert_array_equal(back.info[key], value)
        assert type(back.info[key]) is type(value)
    for key in set(atoms.arrays) - {"momenta"}:  # momenta checked above
        np.testing.assert_array_equal(back.arrays[key], atoms.arrays[key])


def test_calculator_not_triggered():
    class Exploding(SinglePointCalculator):
        def calculate(self, *args, **kwargs):  # pragma: no cover - must never run
            raise AssertionError("from_ase must not trigger a calculation")

    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    atoms.calc = Exploding(atoms, energy=-1.0)
    data = AtomicData.from_ase(atoms)
    assert data.energies.item() == -1.0 and data.forces is None and data.stress is None


def test_system_id_round_trip(water):
    water.info["system_id"] = 42
    data = AtomicData.from_ase(water)
    assert data.system_id.tolist() == [[42]]
    assert data.to_ase().info["system_id"] == 42
