"""Durable, checksummed files: atomic writes, checksummed JSON, checksummed JSON-lines logs.

Every file a campaign writes goes through this module, so that a crash (``kill -9``,
power loss) leaves each file either absent, complete, or detectably incomplete:

- :func:`atomic_write_bytes` writes to a temporary name in the same directory, flushes,
  ``fsync``\\ s, renames over the final name and ``fsync``\\ s the directory. Readers never
  see a half-written file under the final name.
- :func:`write_json` / :func:`read_json` store ``{"payload": ..., "sha256": ...}``: a
  truncated or edited file fails its checksum and is refused with
  :class:`CorruptFileError`.
- :func:`append_record` / :func:`read_records` keep an append-only log of JSON lines,
  each carrying the checksum of its record. A torn *last* line (a crash mid-append) is
  reported separately so callers can drop it; a bad line anywhere else is corruption.

Only JSON and Parquet are written anywhere in a campaign: no pickle.

Example
-------
>>> import tempfile, os
>>> from batchmd.campaign.durable import write_json, read_json
>>> path = os.path.join(tempfile.mkdtemp(), "state.json")
>>> write_json(path, {"done": 3})
>>> read_json(path)
{'done': 3}
"""

from __future__ import annotations

import hashlib
import json
import os

__all__ = [
    "CorruptFileError",
    "sha256_file",
    "sha256_json",
    "atomic_write_bytes",
    "fsync_dir",
    "write_json",
    "read_json",
    "append_record",
    "read_records",
    "rewrite_records",
    "TEMP_PREFIX",
]

TEMP_PREFIX = ".tmp-"
"""Prefix of temporary files; a file with this prefix is never a committed one."""


class CorruptFileError(RuntimeError):
    """A campaign file failed its checksum or could not be parsed (truncated, edited, damaged)."""


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sha256_json(obj) -> str:
    """Hex SHA-256 of the canonical JSON form of ``obj`` (sorted keys, no whitespace)."""
    return hashlib.sha256(_canonical(obj)).hexdigest()


def fsync_dir(path) -> None:
    """``fsync`` a directory so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file, flush, fsync, rename, fsync directory."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{os.path.basename(path)}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)


def write_json(path, payload) -> None:
    """Atomically write ``payload`` (JSON-serialisable) with its SHA-256."""
    body = {"payload": payload, "sha256": sha256_json(payload)}
    atomic_write_bytes(path, json.dumps(body, sort_keys=True, indent=1, allow_nan=False).encode() + b"\n")


def read_json(path):
    """Read a file written by :func:`write_json`; raises :class:`CorruptFileError` if damaged."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            body = json.loads(handle.read())
        payload, digest = body["payload"], body["sha256"]
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptFileError(f"{path}: not a valid checksummed JSON file ({error}); it is truncated or damaged") from error
    if sha256_json(payload) != digest:
        raise CorruptFileError(f"{path}: checksum mismatch; the file was modified or damaged, refusing to use it")
    return payload


def _record_line(record: dict) -> bytes:
    return json.dumps({"record": record, "sha256": sha256_json(record)}, sort_keys=True, allow_nan=False).encode() + b"\n"


def append_record(path, record: dict) -> None:
    """Append one checksummed JSON line to the log ``path``; flushed and fsynced before returning.

    The record is durable (committed) once this returns.
    """
    with open(path, "ab") as handle:
        handle.write(_record_line(record))
        handle.flush()
        os.fsync(handle.fileno())


def _parse_line(raw: bytes):
    try:
        body = json.loads(raw)
        record, digest = body["record"], body["sha256"]
    except (ValueError, KeyError, TypeError):
        return None
    if not raw.endswith(b"\n") or sha256_json(record) != digest:
        return None
    return record


def read_records(path) -> tuple[list[dict], bool]:
    """Read a log written by :func:`append_record`.

    Returns
    -------
    records : list of dict
        Every intact record, in order.
    torn_tail : bool
        True if the last line is incomplete or fails its checksum (a crash during an
        append): that record was never committed and is not returned.

    Raises
    ------
    CorruptFileError
        If a line other than the last is damaged.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return [], False
    with open(path, "rb") as handle:
        lines = handle.read().splitlines(keepends=True)
    records = []
    for number, raw in enumerate(lines):
        record = _parse_line(raw)
        if record is None:
            if number == len(lines) - 1:
                return records, True
            raise CorruptFileError(f"{path}: line {number + 1} of {len(lines)} fails its checksum; the log is damaged")
        records.append(record)
    return records, False


def rewrite_records(path, records) -> None:
    """Atomically replace the log ``path`` with exactly ``records`` (used to drop a torn tail)."""
    atomic_write_bytes(path, b"".join(_record_line(r) for r in records))
