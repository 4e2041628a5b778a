"""Convert ASE-readable files into a sharded, immutable structure dataset.

:func:`write_dataset` reads every frame of every input file with ``ase.io.iread``,
validates it (:func:`~batchmd.campaign.shards.validate_atoms`), writes valid structures
into Parquet shards bounded by rows and atoms, and writes every rejected frame to the
report ``invalid.jsonl`` (one JSON object per frame: ``source``, ``frame``, ``reason``).
Nothing is dropped silently: a frame that cannot be parsed ends its file with a report
entry naming the frame. The manifest is written last, so a dataset directory with a
``manifest.json`` is complete.

Example
-------
>>> import os, tempfile
>>> import ase.io
>>> from ase.build import molecule
>>> from batchmd.campaign.ingest import write_dataset
>>> tmp = tempfile.mkdtemp()
>>> ase.io.write(os.path.join(tmp, "in.xyz"), [molecule("H2O"), molecule("CH4")])
>>> manifest = write_dataset([os.path.join(tmp, "in.xyz")], os.path.join(tmp, "ds"))
>>> manifest.num_structures, manifest.num_invalid
(2, 0)
"""

from __future__ import annotations

import io
import json
import os

from batchmd.campaign.durable import atomic_write_bytes, sha256_file
from batchmd.campaign.manifest import MANIFEST_NAME, Manifest, ShardInfo
from batchmd.campaign.shards import atoms_to_row, rows_to_table, validate_atoms, write_table

__all__ = ["write_dataset", "iter_frames", "INVALID_REPORT"]

INVALID_REPORT = "invalid.jsonl"


def iter_frames(path, format: str | None = None, index: str = ":"):
    """Yield ``(frame_number, atoms_or_None, error_or_None)`` for every frame of ``path``.

    A parse error yields one ``(frame, None, message)`` and ends the file (the reader
    cannot resynchronise after a damaged frame).
    """
    import ase.io

    frame = 0
    try:
        for atoms in ase.io.iread(os.fspath(path), index=index, format=format):
            yield frame, atoms, None
            frame += 1
    except Exception as error:  # any reader failure becomes a report entry, never a silent drop
        yield frame, None, f"unreadable from this frame on: {type(error).__name__}: {error}"


class _ShardBuffer:
    """Rows of the shard being filled; writes it when a bound is reached."""

    def __init__(self, outdir: str, max_rows: int, max_atoms: int) -> None:
        self.outdir, self.max_rows, self.max_atoms = outdir, max_rows, max_atoms
        self.rows: list[dict] = []
        self.atoms = 0
        self.shards: list[ShardInfo] = []
        self.next_index = 0

    def add(self, atoms, source: str, frame: int) -> None:
        if self.rows and (len(self.rows) >= self.max_rows or self.atoms + len(atoms) > self.max_atoms):
            self.flush()
        self.rows.append(atoms_to_row(atoms, self.next_index, source, frame))
        self.atoms += len(atoms)
        self.next_index += 1

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"shard-{len(self.shards):05d}"
        relative = os.path.join("shards", f"{name}.parquet")
        path = os.path.join(self.outdir, relative)
        buffer = io.BytesIO()
        write_table(rows_to_table(self.rows), buffer, metadata={"batchmd_shard": name})
        atomic_write_bytes(path, buffer.getvalue())
        self.shards.append(
            ShardInfo(
                name=name,
                file=relative,
                sha256=sha256_file(path),
                num_rows=len(self.rows),
                num_atoms=self.atoms,
                first_index=self.rows[0]["index"],
                atom_counts=tuple(r["num_atoms"] for r in self.rows),
            )
        )
        self.rows, self.atoms = [], 0


def write_dataset(
    inputs,
    outdir,
    max_rows: int = 4096,
    max_shard_atoms: int = 2_000_000,
    min_distance: float = 0.1,
    max_atoms: int | None = None,
    format: str | None = None,
    index: str = ":",
    progress=None,
    ignore_constraints: bool = False,
    strict: bool = False,
) -> Manifest:
    """Write the structures of ``inputs`` as a sharded dataset in ``outdir``.

    Parameters
    ----------
    inputs : list of path
        ASE-readable files (any format ``ase.io`` reads), folders and globs
        (:func:`batchmd.data.inputs.expand_inputs`: a folder's structure files, sorted), taken
        in order. A row's ``source`` is the file's path as given or found, ``frame`` its
        index in that file (``source_file`` / ``source_index`` of the exported results).
    outdir : path
        New or empty directory. Refused if it already holds a manifest (datasets are
        immutable: write a new one instead).
    max_rows : int
        Most structures per shard.
    max_shard_atoms : int
        Most atoms per shard (a single larger structure gets a shard of its own).
    min_distance : float
        Reject structures with two atoms closer than this (Å); 0 disables.
    max_atoms : int, optional
        Reject structures with more atoms.
    format, index : str, optional
        Passed to ``ase.io.iread``.
    progress : callable, optional
        Called as ``progress(source, valid_so_far, invalid_so_far)`` after each file.
    ignore_constraints : bool
        Accept structures with ASE constraints batchmd does not honour (they are not stored;
        ``FixAtoms`` and ``FixCom`` are).
    strict : bool
        ``batchmd shard``: a missing input, an empty folder, a glob matching nothing, a file
        named twice or a file ASE cannot read from its first frame raises ``ValueError``
        naming it before anything is written. Otherwise (default) each becomes an
        ``invalid.jsonl`` entry (``frame`` null) and the other inputs are written.

    Returns
    -------
    Manifest
        The written manifest; ``manifest.num_invalid`` frames are in ``invalid.jsonl``.
    """
    outdir = os.path.abspath(os.fspath(outdir))
    if os.path.exists(os.path.join(outdir, MANIFEST_NAME)):
        raise FileExistsError(f"{outdir} already holds a dataset (manifest.json); datasets are immutable, use a new OUTDIR")
    if int(max_rows) < 1 or int(max_shard_atoms) < 1:
        raise ValueError("write_dataset: max_rows and max_shard_atoms must be >= 1")
    from batchmd.data.inputs import expand_inputs

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    sources: list[str | None] = []
    report: list[dict] = []
    if strict:  # every input named, readable from its first frame, before anything is written
        sources = expand_inputs(inputs)
        for source in sources:
            if index == ":":
                try:
                    import ase.io

                    ase.io.read(source, index=0, format=format)
                except Exception as error:
                    message = str(error).splitlines()[0] if str(error) else type(error).__name__
                    raise ValueError(f"{source}: cannot read it with ASE ({message})") from error
    else:
        for given in inputs:
            try:
                sources += expand_inputs([given])
            except ValueError as error:
                given = os.fspath(given)
                reason = "file not found" if not os.path.exists(given) and "*" not in given else str(error)
                report.append({"source": given, "frame": None, "reason": reason})
    os.makedirs(os.path.join(outdir, "shards"), exist_ok=True)
    buffer = _ShardBuffer(outdir, int(max_rows), int(max_shard_atoms))
    for source in sources:
        for frame, atoms, error in iter_frames(source, format=format, index=index):
            reason = error if atoms is None else validate_atoms(atoms, min_distance=min_distance, max_atoms=max_atoms,
                                                                ignore_constraints=ignore_constraints)
            if reason is not None:
                report.append({"source": source, "frame": frame, "reason": reason})
                continue
            buffer.add(atoms, source, frame)
        if progress is not None:
            progress(source, buffer.next_index, len(report))
    buffer.flush()
    lines = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in report)
    atomic_write_bytes(os.path.join(outdir, INVALID_REPORT), lines.encode())
    manifest = Manifest(outdir, buffer.shards, num_invalid=len(report), invalid_report=INVALID_REPORT)
    manifest.save()
    return manifest
