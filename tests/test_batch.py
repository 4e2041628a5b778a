"""Batch: construction, attributes, field access, dtype/device, ASE round trips, index_select."""

import numpy as np
import pytest
import torch
from ase.build import molecule

from batchmd.data import AtomicData, Batch
from test_atomic_data import assert_atoms_equal


def test_core_attributes(labelled_structures):
    batch = Batch.from_ase(labelled_structures)
    sizes = [len(a) for a in labelled_structures]
    assert batch.num_graphs == 4 and len(batch) == 4 and batch.num_nodes == sum(sizes)
    assert batch.ptr.dtype == torch.int32 and batch.ptr.tolist() == [0, *np.cumsum(sizes).tolist()]
    assert batch.batch_idx.dtype == torch.int32
    assert batch.batch_idx.tolist() == [i for i, n in enumerate(sizes) for _ in range(n)]
    assert batch.num_atoms_per_system.tolist() == sizes
    assert batch.positions.shape == (batch.num_nodes, 3) and batch.positions.dtype == torch.float64
    assert batch.atomic_numbers.dtype == torch.int64
    assert batch.cell.shape == (4, 3, 3) and batch.pbc.shape == (4, 3) and batch.pbc.dtype == torch.bool
    assert batch.energies.shape == (4, 1) and batch.stress.shape == (4, 3, 3) and batch.forces.shape == (batch.num_nodes, 3)
    assert batch.velocities.shape == (batch.num_nodes, 3)
    assert batch.step.shape == (4,) and batch.step.dtype == torch.int64 and batch.step.tolist() == [0, 1, 2, 3]
    assert batch.relaxed.dtype == torch.bool and batch.temperature.dtype == torch.float64
    assert batch.fields["temperature"] == "system" and batch.fields["positions"] == "atom"
    assert batch.device.type == "cpu" and batch.dtype == torch.float64
    assert batch["positions"] is batch.positions and getattr(batch, "step") is batch["step"]
    assert batch["ptr"] is batch.ptr
    assert batch.system_id is None and batch.has_field("forces") and not batch.has_field("system_id")
    text = repr(batch)
    assert text.startswith("Batch(num_graphs=4, num_nodes=") and "float64" in text and len(text) < 400


def test_ase_round_trip_exact_through_batch(labelled_structures):
    for atoms in labelled_structures:
        atoms.new_array("charges", np.linspace(-1, 1, len(atoms)))
    batch = Batch.from_data_list([AtomicData.from_ase(a) for a in labelled_structures])
    back = batch.to_ase()
    assert len(back) == len(labelled_structures)
    for b, a in zip(back, labelled_structures):
        assert_atoms_equal(b, a)


def test_float32_batch(labelled_structures):
    batch = Batch.from_ase(labelled_structures, dtype=torch.float32, device="cpu")
    assert batch.dtype == torch.float32
    for name, spec in batch.specs.items():
        t = batch[name]
        if t.is_floating_point():
            assert t.dtype == torch.float32, name
    back = batch.to_ase()
    np.testing.assert_allclose(back[1].get_positions(), labelled_structures[1].get_positions(), atol=1e-5)


def test_to_dtype_keeps_integer_fields(labelled_structures):
    batch = Batch.from_ase(labelled_structures)
    batch.set_field("stage", torch.zeros(4, dtype=torch.int32), "system")
    low = batch.to(dtype=torch.float32)
    assert low.dtype == torch.float32 and low.positions.dtype == torch.float32 and low.temperature.dtype == torch.float32
    assert low.stage.dtype == torch.int32 and low.atomic_numbers.dtype == torch.int64 and low.pbc.dtype == torch.bool
    assert low.ptr.dtype == torch.int32 and low.batch_idx.dtype == torch.int32
    assert batch.positions.dtype == torch.float64
    same = batch.to("cpu")
    assert same.positions is batch.positions  # nothing to do: no copy


def test_set_field_and_attribute_access(water, copper):
    batch = Batch.from_ase([water, copper])
    batch.set_field("fire_dt", torch.full((2,), 0.1), "system")
    assert batch.fire_dt.dtype == torch.float64 and batch.fields["fire_dt"] == "system"
    batch.set_field("_nl_cache", torch.zeros(batch.num_nodes, 4, dtype=torch.int32), "atom")
    batch.set_field("temperature_target", torch.tensor(300.0), "global")
    v = torch.zeros(batch.num_nodes, 3, dtype=torch.float64)
    batch.velocities = v
    assert batch.velocities is v  # stored without copy
    batch.fire_dt = torch.full((2,), 0.2, dtype=torch.float64)
    assert batch.fire_dt.tolist() == [0.2, 0.2]
    batch["fire_dt"] = torch.full((2,), 0.3, dtype=torch.float64)
    assert batch["fire_dt"][0].item() == 0.3
    with pytest.raises(ValueError, match="needs a level"):
        batch.set_field("new", torch.zeros(2))
    with pytest.raises(ValueError, match="'fire_dt' is system-level, not atom-level"):
        batch.set_field("fire_dt", torch.zeros(batch.num_nodes), "atom")
    with pytest.raises(ValueError, match="'forces' needs 7 rows"):
        batch.set_field("forces", torch.zeros(3, 3))
    with pytest.raises(ValueError, match="'forces' rows must have shape"):
        batch.set_field("forces", torch.zeros(7, 2))
    with pytest.raises(ValueError, match="level must be one of"):
        batch.set_field("x", torch.zeros(2), "molecule")
    with pytest.raises(ValueError, match="not a valid field name"):
        batch.set_field("ptr", torch.zeros(3))
    with pytest.raises(AttributeError, match="set_field"):
        batch.unknown = torch.zeros(2)
    with pytest.raises(AttributeError, match="no field 'unknown'"):
        _ = batch.unknown


def test_index_select(labelled_structures):
    batch = Batch.from_ase(labelled_structures)
    picked = batch.index_select(torch.tensor([3, 0]))
    expected = Batch.from_ase([labelled_structures[3], labelled_structures[0]])
    assert_batches_equal(picked, expected)
    assert_batches_equal(batch.index_select([-1, 0]), expected)
    mask = torch.tensor([True, False, False, True])
    assert_batches_equal(batch.index_select(mask), Batch.from_ase([labelled_structures[0], labelled_structures[3]]))
    with pytest.raises(ValueError, match="out of range"):
        batch.index_select(torch.tensor([4]))


def assert_batches_equal(actual: Batch, expected: Batch) -> None:
    """Every field, level, dtype, offset and info equal (NaN == NaN)."""
    assert actual.fields == expected.fields
    assert actual.num_graphs == expected.num_graphs and actual.num_nodes == expected.num_nodes
    for name in ("ptr", "batch_idx", "edge_ptr"):
        assert torch.equal(actual[name], expected[name]), name
        assert actual[name].dtype == torch.int32, name
    for name in expected.fields:
        a, e = actual[name], expected[name]
        assert a.dtype == e.dtype and a.shape == e.shape, name
        assert torch.equal(a, e) or (a.is_floating_point() and torch.allclose(a, e, equal_nan=True, rtol=0, atol=0)), name
    assert actual.infos == expected.infos


def test_from_data_list_errors(water):
    with pytest.raises(ValueError, match="at least one"):
        Batch.from_data_list([])
    a = AtomicData.from_ase(water)
    b = AtomicData.from_ase(molecule("CH4"))
    a.add_node_property("charges", torch.zeros(3))
    b.add_system_property("charges", torch.zeros(()))
    with pytest.raises(ValueError, match="'charges' is atom-level in one batch and system-level"):
        Batch.from_data_list([a, b])
