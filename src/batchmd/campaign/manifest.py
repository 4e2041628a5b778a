"""The manifest: the list of a dataset's immutable shards, with a content-derived version.

``OUTDIR/manifest.json`` (a checksummed JSON file, see :mod:`batchmd.campaign.durable`)::

    {"format": "batchmd-structures", "schema_version": 1,
     "version": "3f9c...",               # SHA-256 (16 hex) of the shard entries below
     "num_structures": 1000, "num_atoms": 23456, "num_invalid": 3,
     "invalid_report": "invalid.jsonl",
     "shards": [{"name": "shard-00000", "file": "shards/shard-00000.parquet",
                 "sha256": "...", "num_rows": 512, "num_atoms": 12000,
                 "first_index": 0, "atom_counts": [12, 9, ...]}, ...]}

Global input indices are contiguous within a shard (``first_index`` to
``first_index + num_rows - 1``) and number the *valid* structures 0..n-1 in input
order. The per-structure ``atom_counts`` let a dataset size every structure without
opening a shard (about 5 bytes per structure in the manifest). The version is derived
from the shard entries (names, checksums, row and atom counts), so any change to the
data gives a new version and a campaign refuses to resume against it.

Example
-------
>>> # manifest = Manifest.load("dataset/")           # a directory or its manifest.json
>>> # manifest.num_structures, manifest.version, manifest.atom_count(17)
"""

from __future__ import annotations

import bisect
import io
import os
from dataclasses import dataclass

import pyarrow.parquet as pq

from batchmd.campaign.durable import CorruptFileError, read_json, sha256_json, write_json

__all__ = ["ShardInfo", "Manifest", "MANIFEST_NAME", "manifest_version"]

MANIFEST_NAME = "manifest.json"
_FORMAT = "batchmd-structures"


@dataclass(frozen=True)
class ShardInfo:
    """One shard's manifest entry.

    Attributes
    ----------
    name : str
        Stable shard name (``shard-00000``); ownership hashes it.
    file : str
        Path relative to the dataset directory.
    sha256 : str
        Hex SHA-256 of the file's bytes.
    num_rows, num_atoms : int
        Structures and atoms in the shard.
    first_index : int
        Global index of its first row.
    atom_counts : tuple of int
        Atoms of each row, in row order.
    """

    name: str
    file: str
    sha256: str
    num_rows: int
    num_atoms: int
    first_index: int
    atom_counts: tuple

    def as_dict(self) -> dict:
        """The JSON manifest entry."""
        return {
            "name": self.name,
            "file": self.file,
            "sha256": self.sha256,
            "num_rows": self.num_rows,
            "num_atoms": self.num_atoms,
            "first_index": self.first_index,
            "atom_counts": list(self.atom_counts),
        }

    @property
    def indices(self) -> range:
        """Global indices of the shard's rows."""
        return range(self.first_index, self.first_index + self.num_rows)


def manifest_version(shards) -> str:
    """The content version of a list of :class:`ShardInfo` (16 hex digits of a SHA-256)."""
    return sha256_json([s.as_dict() for s in shards])[:16]


class Manifest:
    """A loaded manifest: shard entries, version, sizes; reads and verifies shards.

    Parameters
    ----------
    root : str
        Dataset directory (shard paths are relative to it).
    shards : list of ShardInfo
    num_invalid : int
        Structures rejected when the dataset was written (see ``invalid_report``).
    invalid_report : str, optional
        Report file name, relative to ``root``.
    """

    def __init__(self, root, shards, num_invalid: int = 0, invalid_report: str | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.shards = list(shards)
        self.num_invalid = int(num_invalid)
        self.invalid_report = invalid_report
        self.version = manifest_version(self.shards)
        expected = 0
        for shard in self.shards:
            if shard.first_index != expected or len(shard.atom_counts) != shard.num_rows:
                raise CorruptFileError(f"manifest in {self.root}: shard {shard.name} is inconsistent (indices/atom counts)")
            expected += shard.num_rows
        self.num_structures = expected
        self._starts = [s.first_index for s in self.shards]

    # ----------------------------------------------------------------- files
    @property
    def path(self) -> str:
        """Path of ``manifest.json``."""
        return os.path.join(self.root, MANIFEST_NAME)

    def save(self) -> None:
        """Write ``manifest.json`` atomically (the dataset is complete once it exists)."""
        write_json(self.path, self.as_dict())

    def as_dict(self) -> dict:
        """The JSON payload of ``manifest.json``."""
        from batchmd.campaign.shards import SCHEMA_VERSION

        return {
            "format": _FORMAT,
            "schema_version": SCHEMA_VERSION,
            "version": self.version,
            "num_structures": self.num_structures,
            "num_atoms": sum(s.num_atoms for s in self.shards),
            "num_invalid": self.num_invalid,
            "invalid_report": self.invalid_report,
            "shards": [s.as_dict() for s in self.shards],
        }

    @classmethod
    def load(cls, path) -> "Manifest":
        """Load ``path`` (a dataset directory or its ``manifest.json``), verifying its checksum and version."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, MANIFEST_NAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no dataset manifest at {path}; create one with `batchmd shard INPUT OUTDIR`")
        payload = read_json(path)
        if payload.get("format") != _FORMAT:
            raise CorruptFileError(f"{path}: not a batchmd structure manifest (format={payload.get('format')!r})")
        shards = [ShardInfo(**{**entry, "atom_counts": tuple(entry["atom_counts"])}) for entry in payload["shards"]]
        manifest = cls(os.path.dirname(path), shards, payload.get("num_invalid", 0), payload.get("invalid_report"))
        if manifest.version != payload["version"]:
            raise CorruptFileError(f"{path}: recorded version {payload['version']} does not match its shard entries")
        return manifest

    # ----------------------------------------------------------------- lookups
    @property
    def num_atoms(self) -> int:
        """Atoms over all structures."""
        return sum(s.num_atoms for s in self.shards)

    def locate(self, index: int) -> tuple[int, int]:
        """(shard position, row) of global index ``index``."""
        if not 0 <= index < self.num_structures:
            raise IndexError(f"global index {index} out of range 0..{self.num_structures - 1}")
        position = bisect.bisect_right(self._starts, index) - 1
        return position, index - self.shards[position].first_index

    def atom_count(self, index: int) -> int:
        """Atoms of structure ``index`` (from the manifest; no shard is read)."""
        position, row = self.locate(index)
        return self.shards[position].atom_counts[row]

    def read_shard(self, position: int, verify: bool = True, columns=None):
        """Read shard ``position`` as a ``pyarrow.Table``, refusing it if its SHA-256 does not match."""
        shard = self.shards[position]
        path = os.path.join(self.root, shard.file)
        with open(path, "rb") as handle:
            data = handle.read()
        if verify:
            import hashlib

            if hashlib.sha256(data).hexdigest() != shard.sha256:
                raise CorruptFileError(f"{path}: checksum does not match the manifest; the shard is damaged or was replaced")
        table = pq.read_table(io.BytesIO(data), columns=columns)
        if table.num_rows != shard.num_rows:
            raise CorruptFileError(f"{path}: {table.num_rows} rows, manifest says {shard.num_rows}")
        return table

    def __repr__(self) -> str:
        return (f"Manifest(root={self.root!r}, version={self.version}, structures={self.num_structures}, "
                f"shards={len(self.shards)}, invalid={self.num_invalid})")
