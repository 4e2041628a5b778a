"""The structure shard format: immutable Parquet files, one row per structure.

Why Parquet (through ``pyarrow``): a columnar, self-describing, compressed format with a
long-lived specification and a well-kept reference library; ragged per-atom arrays are
native ``list`` columns (no padding), a shard can be read column by column (the resume
path reads only ``index``), and every analysis stack (pandas, Polars, DuckDB, Spark)
reads it directly. Zarr suits dense N-d arrays but makes ragged structures awkward; HDF5
is harder to write atomically and to read from object stores.

Schema of an input shard (``SCHEMA_VERSION`` 1); lengths per row in brackets::

    index           int64        global input index (the structure's identity)
    source          string       file the structure was read from
    frame           int64        frame number within that file
    num_atoms       int32        N
    atomic_numbers  list<int32>  [N]
    positions       list<double> [3N]  Å, row-major (x0, y0, z0, x1, ...)
    masses          list<double> [N]   amu
    cell            list<double> [9]   Å, lattice vectors as rows
    pbc             list<bool>   [3]
    velocities      list<double> [3N]  Å / ASE time unit, null when absent
    info            string       JSON of ``atoms.info``, made portable first
                                 (:func:`batchmd.data.info_io.portable_info`: numpy as
                                 lists, None dropped, a Spacegroup as its symbol, ...)
    fixed           list<bool>   [N]   ASE ``FixAtoms`` mask, null without constraint
                                       (absent in shards written before it existed)
    fix_com         bool         ASE ``FixCom`` (null: none; absent in older shards)

Result shards (:mod:`batchmd.campaign.results`) add the outcome columns to the same
structure columns. :func:`validate_atoms` gives the reason a structure is rejected.

Example
-------
>>> from ase.build import molecule
>>> from batchmd.campaign.shards import validate_atoms, atoms_to_row
>>> validate_atoms(molecule("H2O")) is None
True
>>> atoms_to_row(molecule("H2O"), index=0, source="water.xyz", frame=0)["num_atoms"]
3
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from batchmd.data.info_io import info_json

__all__ = [
    "SCHEMA_VERSION",
    "STRUCTURE_SCHEMA",
    "validate_atoms",
    "atoms_to_row",
    "rows_to_table",
    "write_table",
    "DecodedShard",
]

SCHEMA_VERSION = 1

STRUCTURE_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("source", pa.string()),
        ("frame", pa.int64()),
        ("num_atoms", pa.int32()),
        ("atomic_numbers", pa.list_(pa.int32())),
        ("positions", pa.list_(pa.float64())),
        ("masses", pa.list_(pa.float64())),
        ("cell", pa.list_(pa.float64())),
        ("pbc", pa.list_(pa.bool_())),
        ("velocities", pa.list_(pa.float64())),
        ("info", pa.string()),
        ("fixed", pa.list_(pa.bool_())),
        ("fix_com", pa.bool_()),
    ]
)


def validate_atoms(atoms, min_distance: float = 0.1, max_atoms: int | None = None,
                   ignore_constraints: bool = False) -> str | None:
    """Why ``atoms`` cannot enter a campaign, or None if it is valid.

    Parameters
    ----------
    atoms : ase.Atoms
    min_distance : float
        Smallest allowed interatomic distance (Å), periodic images included; 0 disables
        the check. Overlapping atoms make most potentials blow up.
    max_atoms : int, optional
        Largest allowed structure (atoms).
    ignore_constraints : bool
        Accept ASE constraints batchmd does not honour (only ``FixAtoms``/``FixCom`` are stored).

    Returns
    -------
    str or None
        A one-line reason naming the atom(s), e.g. ``"structure has atoms 0 and 1 closer than
        min_distance=0.1 Å (0.01 Å apart)"`` -- the rules of
        :func:`batchmd.data.validate.atoms_problem`, shared by every entry point.
    """
    from batchmd.data.validate import atoms_problem

    problem = atoms_problem(atoms, min_distance=min_distance, max_atoms=max_atoms,
                            ignore_constraints=ignore_constraints)
    return None if problem is None else f"structure {problem}"


def atoms_to_row(atoms, index: int, source: str, frame: int) -> dict:
    """One shard row (a dict keyed by :data:`STRUCTURE_SCHEMA` names) from a valid ``ase.Atoms``."""
    velocities = atoms.get_velocities() if "momenta" in atoms.arrays else None
    return {
        "index": int(index),
        "source": str(source),
        "frame": int(frame),
        "num_atoms": len(atoms),
        "atomic_numbers": atoms.get_atomic_numbers().astype(np.int32),
        "positions": atoms.get_positions().reshape(-1),
        "masses": atoms.get_masses(),
        "cell": atoms.cell.array.reshape(-1),
        "pbc": atoms.pbc.astype(bool),
        "velocities": None if velocities is None else velocities.reshape(-1),
        "info": info_json(atoms.info),
        "fixed": _fixed_mask(atoms),
        "fix_com": True if any(type(c).__name__ == "FixCom" for c in atoms.constraints) else None,
    }


def _fixed_mask(atoms):
    """The ``FixAtoms`` mask of ``atoms`` (bool [N]) or None without one."""
    from ase.constraints import FixAtoms

    mask = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            mask[constraint.get_indices()] = True
    return mask if mask.any() else None


def rows_to_table(rows: list[dict], schema: pa.Schema = STRUCTURE_SCHEMA) -> pa.Table:
    """Build a table with ``schema`` from row dicts (numpy arrays allowed for list columns)."""
    columns = []
    for field in schema:
        values = [row[field.name] for row in rows]
        if pa.types.is_list(field.type):
            values = [None if v is None else np.asarray(v).tolist() for v in values]
        columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def write_table(table: pa.Table, handle_or_path, metadata: dict | None = None) -> None:
    """Write ``table`` as Parquet (zstd) with optional string key/value file metadata."""
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    pq.write_table(table, handle_or_path, compression="zstd", row_group_size=max(1, min(table.num_rows, 4096)))


def _ragged(column: pa.ChunkedArray | pa.Array):
    """(flat numpy values, int64 offsets [R+1], valid mask [R]) of a list column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = array.offsets.to_numpy().astype(np.int64)  # into the unsliced child array
    values = array.values.to_numpy(zero_copy_only=False)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return values, offsets, valid


class DecodedShard:
    """A shard table decoded into numpy arrays for fast per-row access.

    Parameters
    ----------
    table : pyarrow.Table
        A table with at least the :data:`STRUCTURE_SCHEMA` columns.

    Attributes
    ----------
    index : numpy.ndarray [R] int64
        Global input index of each row.
    row_of : dict
        Global index -> row number.
    """

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.num_rows = table.num_rows
        self.index = table.column("index").to_numpy()
        self.row_of = {int(g): r for r, g in enumerate(self.index.tolist())}
        self.source = table.column("source").to_pylist()
        self.frame = table.column("frame").to_numpy()
        self.info = table.column("info").to_pylist()
        self._lists = {
            name: _ragged(table.column(name))
            for name in ("atomic_numbers", "positions", "masses", "cell", "pbc", "velocities")
        }
        if "fixed" in table.column_names:
            self._lists["fixed"] = _ragged(table.column("fixed"))
        self.fix_com = (table.column("fix_com").to_pylist() if "fix_com" in table.column_names
                        else [None] * self.num_rows)

    def _row_values(self, name: str, row: int):
        values, offsets, valid = self._lists[name]
        if not valid[row]:
            return None
        return np.array(values[offsets[row] : offsets[row + 1]])  # a writable copy

    def structure(self, row: int) -> dict:
        """Numpy arrays of row ``row``: numbers [N], positions [N,3], masses [N], cell [3,3], pbc [3], velocities,
        fixed (bool [N] or None)."""
        velocities = self._row_values("velocities", row)
        return {
            "atomic_numbers": self._row_values("atomic_numbers", row).astype(np.int64),
            "positions": self._row_values("positions", row).reshape(-1, 3),
            "atomic_masses": self._row_values("masses", row),
            "cell": self._row_values("cell", row).reshape(3, 3),
            "pbc": self._row_values("pbc", row).astype(bool),
            "velocities": None if velocities is None else velocities.reshape(-1, 3),
            "fixed": None if "fixed" not in self._lists else self._row_values("fixed", row),
            "fix_com": True if self.fix_com[row] else None,
        }

    def atomic_data(self, row: int, dtype: torch.dtype = torch.float64):
        """Row ``row`` as an :class:`~batchmd.data.AtomicData` (``info`` JSON kept in ``data.info``).

        The structure's own ``temperature_K`` / ``pressure_GPa`` info keys become its
        ``target_temperature`` / ``target_pressure`` fields (as :meth:`AtomicData.from_ase
        <batchmd.data.AtomicData.from_ase>` does; ingest refused bad values).
        """
        from batchmd.data import AtomicData
        from batchmd.data.ase_convert import info_targets

        fields = self.structure(row)
        info = {"source": self.source[row], "frame": int(self.frame[row]), "info": self.info[row]}
        raw = json.loads(self.info[row]) if self.info[row] else {}
        temperature, pressure = info_targets(raw if isinstance(raw, dict) else {})
        return AtomicData(**fields, info=info, dtype=dtype, target_temperature=temperature, target_pressure=pressure)
