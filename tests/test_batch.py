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
    assert batch.energies.shape == (4, 1) and batch.stress.shape == (4, 3, 3)
    assert batch.forces.shape == (batch.num_nodes, 3)
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
    assert low.dtype == low.positions.dtype == low.temperature.dtype == torch.float32
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
        same_nan = a.is_floating_point() and torch.allclose(a, e, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(a, e) or same_nan, name
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


# ---------------------------------------------------------------------------- slot operations
def make_system(seed: int, n_atoms: int, with_info: bool = True) -> AtomicData:
    """Random system with every kind of field: user atom/system/edge fields, caches and edges."""
    g = torch.Generator().manual_seed(seed)
    data = AtomicData(torch.rand(n_atoms, 3, generator=g, dtype=torch.float64) * 5,
                      torch.randint(1, 30, (n_atoms,), generator=g), cell=torch.eye(3) * (5 + seed),
                      pbc=[True, seed % 2 == 0, True], velocities=torch.randn(n_atoms, 3, generator=g),
                      forces=torch.randn(n_atoms, 3, generator=g), energies=float(seed), stress=torch.eye(3) * seed,
                      system_id=seed, info={"name": f"sys{seed}"} if with_info else None)
    n_edges = int(torch.randint(0, 2 * n_atoms + 1, (1,), generator=g))
    data.add_edge_property("edge_index", torch.randint(0, n_atoms, (2, n_edges), generator=g))
    data.add_edge_property("bond_w", torch.rand(n_edges, generator=g))
    data.add_node_property("charges", torch.randn(n_atoms, generator=g))
    data.add_node_property("_nl_count", torch.randint(0, 9, (n_atoms,), generator=g, dtype=torch.int32))
    data.add_system_property("temperature", torch.tensor(300.0 + seed))
    data.add_system_property("_cache", torch.randn(2, generator=g))
    data.add_system_property("stage", torch.tensor(seed % 3, dtype=torch.int32))
    return data


def local_neighbours(data: AtomicData) -> torch.Tensor:
    """Deterministic per-system neighbour matrix [n, 3] of local atom indices, -1 padded."""
    n = data.num_nodes
    nbrs = (torch.arange(n).unsqueeze(1) + torch.arange(1, 4)) % n
    nbrs[:, 2] = -1
    return nbrs


def build_expected(systems: list[AtomicData]) -> Batch:
    """Reference Batch built from scratch, with a global atom-index field ``_nbrs``."""
    batch = Batch.from_data_list(systems)
    local = torch.cat([local_neighbours(d) for d in systems])
    offsets = batch.ptr[:-1].long()[batch.batch_idx.long()].unsqueeze(1)
    batch.set_field("_nbrs", torch.where(local >= 0, local + offsets, local), "atom", atom_index=True)
    return batch


POOL = [make_system(seed, n) for seed, n in enumerate([1, 3, 7, 2, 5, 4, 6, 1, 3])]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_append_remove_replace_match_from_scratch(dtype):
    def expected(systems):
        return build_expected(systems).to(dtype=dtype)

    live = expected(POOL[:4])
    new = expected(POOL[4:7])
    assert_batches_equal(live.append(new), expected(POOL[:7]))
    assert_batches_equal(live.remove(torch.tensor([1, 3])), expected([POOL[0], POOL[2]]))
    assert_batches_equal(live.remove(torch.tensor([True, False, False, True])), expected(POOL[1:3]))
    assert_batches_equal(live.remove(torch.tensor([], dtype=torch.long)), live)
    replaced = live.replace_slots(torch.tensor([3, 0, 2]), new)
    assert_batches_equal(replaced, expected([POOL[5], POOL[1], POOL[6], POOL[4]]))
    # the live batch itself is untouched
    assert_batches_equal(live, expected(POOL[:4]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_select_and_append_matches_select_then_append(dtype):
    live = build_expected(POOL[:5]).to(dtype=dtype)
    new = build_expected(POOL[5:8]).to(dtype=dtype)
    for keep in (torch.tensor([4, 0, 2]), torch.tensor([True, False, True, True, False]), torch.tensor([], dtype=torch.long),
                 torch.tensor([-1, 1, 1])):
        assert_batches_equal(live.select_and_append(keep, new), live.index_select(keep).append(new))
    assert_batches_equal(live.select_and_append(torch.tensor([0, 3]), new),
                         build_expected([POOL[0], POOL[3], *POOL[5:8]]).to(dtype=dtype))
    with pytest.raises(ValueError, match="out of range"):
        live.select_and_append(torch.tensor([5]), new)
    with pytest.raises(ValueError, match="bool mask must have shape"):
        live.select_and_append(torch.tensor([True, False]), new)


def test_select_and_append_pads_wider_caches_and_fills_missing_fields():
    live = build_expected(POOL[:3])
    live.set_field("_knn", torch.arange(live.num_nodes * 2, dtype=torch.int32).reshape(-1, 2), "atom")
    live.set_field("_img", torch.ones(live.num_nodes, 2, 3), "atom")
    new = build_expected(POOL[3:5])
    new.set_field("_knn", torch.full((new.num_nodes, 4), 7, dtype=torch.int32), "atom")
    out = live.select_and_append(torch.tensor([2, 0]), new)
    assert_batches_equal(out.without_fields(prefix="_k").without_fields(prefix="_i"),
                         live.index_select(torch.tensor([2, 0])).append(new).without_fields(prefix="_k").without_fields(prefix="_i"))
    ref = live.index_select(torch.tensor([2, 0])).append(new)
    assert torch.equal(out._knn, ref._knn) and out._knn.shape[1] == 4
    assert torch.equal(torch.isnan(out._img), torch.isnan(ref._img)) and torch.isnan(out._img[-new.num_nodes:]).all()
    with pytest.raises(ValueError, match="different row shapes"):
        live.set_field("velocities2", torch.zeros(live.num_nodes, 3), "atom")
        new.set_field("velocities2", torch.zeros(new.num_nodes, 2), "atom")
        live.select_and_append(torch.tensor([0]), new)


def test_global_fields_are_shared_and_kept():
    live = build_expected(POOL[:3])
    live.set_field("run_setpoint", torch.tensor(300.0), "global")
    new = build_expected(POOL[3:4])
    new.set_field("run_setpoint", torch.tensor(10.0), "global")
    assert live.replace_slots(torch.tensor([1]), new).run_setpoint.item() == 300.0
    assert live.remove(torch.tensor([0])).run_setpoint.item() == 300.0
    assert new.append(live).run_setpoint.item() == 10.0
    assert "run_setpoint" not in live.to_data_list()[0].fields


def test_edge_index_is_global_and_reoffset():
    batch = build_expected(POOL[:4])
    ptr = batch.ptr.long()
    eptr = batch.edge_ptr.long()
    assert batch.edge_ptr.tolist() == [0, *np.cumsum([d.num_edges for d in POOL[:4]]).tolist()]
    for i, d in enumerate(POOL[:4]):
        assert torch.equal(batch.edge_index[:, eptr[i]:eptr[i + 1]], d.edge_index + ptr[i])
    sub = batch.index_select(torch.tensor([2]))
    assert torch.equal(sub.edge_index, POOL[2].edge_index)
    for d, back in zip(POOL[:4], batch.to_data_list()):
        assert torch.equal(back.edge_index, d.edge_index) and torch.equal(back.bond_w, d.bond_w)


def test_empty_batch_and_refill():
    live = build_expected(POOL[:3])
    empty = live.remove(torch.arange(3))
    assert empty.num_graphs == 0 and empty.num_nodes == 0 and empty.ptr.tolist() == [0]
    assert empty.cell.shape == (0, 3, 3) and empty.edge_index.shape == (2, 0)
    assert_batches_equal(empty.append(build_expected(POOL[3:5])), build_expected(POOL[3:5]))
    assert live.replace_slots(torch.tensor([], dtype=torch.long), empty) is live


def test_missing_fields_get_documented_defaults():
    live = build_expected(POOL[:3])
    live.set_field("fire_dt", torch.full((3,), 0.1, dtype=torch.float64), "system")
    live.set_field("_fire_v", torch.ones(live.num_nodes, 3), "atom")
    live.set_field("active", torch.ones(3, dtype=torch.bool), "system")
    plain = Batch.from_data_list([AtomicData.from_ase(molecule("CH4"))])  # no velocities, caches, edges...
    out = live.replace_slots(torch.tensor([1]), plain)
    assert out.num_atoms_per_system.tolist() == [1, 5, 7]
    assert out.fire_dt.tolist() == [0.1, 0.0, 0.1]
    assert out.active.tolist() == [True, False, True]
    rows = out.batch_idx == 1
    assert torch.isnan(out._fire_v[rows]).all() and not torch.isnan(out._fire_v[~rows]).any()
    assert torch.isnan(out._cache[1]).all() and (out.velocities[rows] == 0).all()
    assert out.stage.dtype == torch.int32 and out.stage[1] == 0 and out._nbrs[rows].eq(-1).all()
    assert out.infos == [{"name": "sys0"}, {}, {"name": "sys2"}]
    # the reverse direction: fields only the incoming systems have are added with defaults
    grown = Batch.from_data_list([AtomicData.from_ase(molecule("H2O"))]).append(live)
    assert grown.has_field("fire_dt") and grown.fire_dt.tolist() == [0.0, 0.1, 0.1, 0.1]
    assert torch.isnan(grown._fire_v[:3]).all() and grown.edge_ptr.tolist()[:2] == [0, 0]


def test_slot_op_errors():
    live = build_expected(POOL[:3])
    new = build_expected(POOL[3:5])
    with pytest.raises(ValueError, match="2 slots but the incoming batch has 1"):
        live.replace_slots(torch.tensor([0, 1]), new.index_select(torch.tensor([0])))
    with pytest.raises(ValueError, match="distinct"):
        live.replace_slots(torch.tensor([1, 1]), new)
    with pytest.raises(ValueError, match="distinct"):
        live.replace_slots(torch.tensor([0, 3]), new)
    with pytest.raises(ValueError, match="bool mask"):
        live.replace_slots(torch.tensor([True, False, True]), new)
    with pytest.raises(ValueError, match="out of range"):
        live.remove(torch.tensor([5]))
    with pytest.raises(ValueError, match="bool mask must have shape"):
        live.remove(torch.tensor([True]))
    wide = _with_field(Batch.from_data_list([AtomicData.from_ase(molecule("H2O"))]), "charges", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="'charges' has different row shapes"):
        live.append(wide)
    edgy = Batch.from_data_list([AtomicData.from_ase(molecule("H2O"))])
    edgy.set_edges(torch.tensor([[0, 1], [1, 0]]), torch.tensor([0, 2]))
    edgy.set_field("bond_w", torch.zeros(2), "edge")
    del edgy._fields["edge_index"], edgy._specs["edge_index"]  # simulate a source without edge_index
    with pytest.raises(ValueError, match="'edge_index' .* is missing from a batch with 2 edges"):
        live.append(edgy)
    int_charges = _with_field(Batch.from_data_list([AtomicData.from_ase(molecule("H2O"))]), "charges",
                              torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="'charges' has dtype"):
        live.append(int_charges)


def _with_field(batch: Batch, name: str, tensor: torch.Tensor) -> Batch:
    batch.set_field(name, tensor, "atom")
    return batch


def test_append_converts_other_dtype():
    live = build_expected(POOL[:2])
    low = build_expected(POOL[2:4]).to(dtype=torch.float32)
    out = live.append(low)
    assert out.dtype == torch.float64 and out.charges.dtype == torch.float64
    assert torch.equal(out.positions[out.batch_idx >= 2], low.positions.double())


def test_set_edges(water, copper):
    batch = Batch.from_ase([water, copper])
    batch.set_field("bond_w", torch.zeros(0), "edge")
    batch.set_edges(torch.tensor([[0, 1, 3, 4], [1, 0, 4, 3]]), torch.tensor([0, 2, 4]))
    assert batch.num_edges == 4 and "bond_w" not in batch.fields and batch.edge_ptr.dtype == torch.int32
    batch.set_field("bond_w", torch.arange(4.0), "edge")
    second = batch.index_select(torch.tensor([1]))
    assert second.edge_index.tolist() == [[0, 1], [1, 0]] and second.bond_w.tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="edge_ptr must run from 0 to E=4"):
        batch.set_edges(torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="'edge_index' must have shape"):
        batch.set_edges(torch.zeros(3, 4, dtype=torch.long), torch.tensor([0, 1, 4]))


# ---------------------------------------------------------------------------- property-based
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_op = st.one_of(
    st.tuples(st.just("remove"), st.lists(st.integers(0, 20), max_size=4)),
    st.tuples(st.just("append"), st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=3)),
    st.tuples(st.just("replace"), st.lists(st.tuples(st.integers(0, 20), st.integers(0, len(POOL) - 1)), max_size=4)),
    st.tuples(st.just("select"), st.lists(st.integers(0, 20), max_size=5)),
    st.tuples(st.just("select_append"), st.tuples(st.lists(st.integers(0, 20), max_size=5),
                                                  st.lists(st.integers(0, len(POOL) - 1), max_size=3))),
)


@settings(max_examples=40, deadline=None)
@given(start=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=5), ops=st.lists(_op, max_size=6))
def test_random_slot_sequences_match_from_scratch(start, ops):
    systems = list(start)
    batch = build_expected([POOL[i] for i in systems])
    for kind, args in ops:
        if kind == "remove":
            idx = sorted({i % len(systems) for i in args}) if systems else []
            batch = batch.remove(torch.tensor(idx, dtype=torch.long))
            systems = [s for i, s in enumerate(systems) if i not in idx]
        elif kind == "append":
            batch = batch.append(build_expected([POOL[i] for i in args]))
            systems += args
        elif kind == "replace" and systems:
            slots = {}
            for slot, pool_index in args:
                slots.setdefault(slot % len(systems), pool_index)
            if not slots:
                continue
            batch = batch.replace_slots(torch.tensor(list(slots)), build_expected([POOL[p] for p in slots.values()]))
            for slot, pool_index in slots.items():
                systems[slot] = pool_index
        elif kind == "select_append" and (systems or args[1]):
            idx = [i % len(systems) for i in args[0]] if systems else []
            incoming = build_expected([POOL[i] for i in args[1]]) if args[1] else batch.index_select(
                torch.tensor([], dtype=torch.long))
            batch = batch.select_and_append(torch.tensor(idx, dtype=torch.long), incoming)
            systems = [systems[i] for i in idx] + list(args[1])
        elif kind == "select" and systems:
            idx = [i % len(systems) for i in args]
            batch = batch.index_select(torch.tensor(idx, dtype=torch.long))
            systems = [systems[i] for i in idx]
        if systems:
            assert_batches_equal(batch, build_expected([POOL[i] for i in systems]))
        else:
            assert batch.num_graphs == 0 and batch.num_nodes == 0 and batch.num_edges == 0


def test_slot_ops_sync_the_host_at_most_once(monkeypatch):
    """Host reads (the proxy for device syncs) per op: 1 for select/remove/replace, 0 for append."""
    live = build_expected(POOL[:5])
    new = build_expected(POOL[5:7])
    for batch in (live, new):  # per-system info dicts need one more read of the indices
        object.__setattr__(batch, "_infos", None)
    calls = []
    for method in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, _name=method):
            calls.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, method, counted)
    ops = {"append": (lambda: live.append(new), 0), "remove": (lambda: live.remove(torch.tensor([0, 3])), 1),
           "replace_slots": (lambda: live.replace_slots(torch.tensor([4, 1]), new), 1),
           "index_select": (lambda: live.index_select(torch.tensor([2, 2, 0])), 1),
           "select_and_append": (lambda: live.select_and_append(torch.tensor([4, 1]), new), 1),
           "mask": (lambda: live.index_select(torch.tensor([True, False, True, False, True])), 1)}
    for name, (op, expected) in ops.items():
        calls.clear()
        op()
        assert len(calls) == expected, (name, calls)
