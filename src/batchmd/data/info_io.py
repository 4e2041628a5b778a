"""Portable ``atoms.info``: the one rule every file batchmd writes follows, and the writer.

ASE's extended-XYZ writer puts ``atoms.info`` on the comment line of each frame, and some
values do not survive it: a multi-line string (a CIF's spacegroup as text, a note) breaks
the file (``XYZError: Expected xyz header``); ``None`` comes back as ``True``; an empty
string swallows the next key (``pbc``); a backslash is dropped, or makes a nested value
unreadable; a dict holding a numpy array is skipped; a key with ``=`` is split. Every
writer of batchmd -- the ``relax``/``md``/``pipeline`` outputs and their partial files,
:class:`~batchmd.dynamics.sinks.ExtXYZSink`, ``batchmd campaign export`` and the campaign
shards' ``info`` column -- passes the info through :func:`portable_info` first, so the
same input gives the same keys and values back from every path (``ase.io.read``).

The rule (:func:`portable_info`), top-level keys:

- ``None`` and empty (or blank) strings are dropped: absent is the nearest extxyz has.
- numpy scalars become python ``bool``/``int``/``float``; numeric and bool numpy arrays
  are kept (extxyz gives them back as arrays; a bool array comes back as a list);
  arrays of strings or objects become lists.
- A string has its backslashes replaced by ``/`` and tabs (and other control characters)
  by spaces; a multi-line string becomes the list of its lines.
- An ``ase.spacegroup.Spacegroup`` (what ASE's CIF reader puts in ``info["spacegroup"]``)
  becomes its Hermann-Mauguin symbol, e.g. ``"F m -3 m"`` (what ASE's extxyz writer
  writes for it).
- Lists, tuples and dicts are converted element by element (nested values: numpy -> lists,
  strings as above, ``None`` kept as JSON null, other objects -> ``str``); dict keys become
  strings.
- Any other object becomes ``str(value)`` (then the string rule); complex numbers too.
- A key's whitespace, ``=``, quotes and backslashes become ``_``.

What ASE's extxyz reader then does, and cannot be helped without another format: a
string that looks like a number or a bool (``"300"``, ``"T"``, ``"True"``) comes back as
one; a list of numbers (or of bools and numbers) comes back as a numpy array; a tuple as
a list or array. ``.traj`` and ``.json`` outputs get the same portable values.

Example
-------
>>> from batchmd.data.info_io import portable_info
>>> portable_info({"note": "a\\nb", "gone": None, "n": 3})
{'note': ['a', 'b'], 'n': 3}
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

__all__ = ["portable_info", "portable_frames", "info_json", "write_frames"]

_BAD_KEY = re.compile(r"[\s=\"'\\]")
_CONTROL = re.compile(r"[\t\v\f\x00-\x08\x0e-\x1f\x7f]")


def _text(value: str):
    """A string made safe for extxyz: ``/`` for backslashes, spaces for control characters;
    a multi-line string becomes the list of its lines."""
    value = _CONTROL.sub(" ", value.replace("\\", "/"))
    if "\n" in value or "\r" in value:
        return value.splitlines()
    return value


def _is_spacegroup(value) -> bool:
    return type(value).__name__ == "Spacegroup" and hasattr(value, "symbol")


def _nested(value):
    """A JSON-able value (inside a list or dict): numpy -> python, strings safe, None kept."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _text(value)
    if _is_spacegroup(value):
        return str(value.symbol)
    if isinstance(value, np.ndarray):
        return [_nested(v) for v in value.tolist()] if value.ndim else _nested(value.item())
    if isinstance(value, (list, tuple)):
        return [_nested(v) for v in value]
    if isinstance(value, dict):
        return {_key(k): _nested(v) for k, v in value.items()}
    return _text(str(value))


def _key(key) -> str:
    return _BAD_KEY.sub("_", str(key)) or "_"


def _top(value):
    """The portable top-level value, or ``_DROP``."""
    if value is None:
        return _DROP
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _top(value.item())
        if value.dtype.kind in "biuf":
            return value.copy()
        return [_nested(v) for v in value.tolist()]
    if isinstance(value, str) or not isinstance(value, (bool, int, float, np.generic, list, tuple, dict)) \
            and not _is_spacegroup(value):
        text = _text(value if isinstance(value, str) else str(value))
        return _DROP if isinstance(text, str) and not text.strip() else text
    return _nested(value)


_DROP = object()


def portable_info(info: dict) -> dict:
    """A copy of ``info`` every writer of batchmd writes (see the module docstring for the rule).

    Parameters
    ----------
    info : dict
        An ``atoms.info`` (not modified).

    Returns
    -------
    dict
        str keys; values of type bool, int, float, str, numpy array (numeric/bool), list
        or dict that ASE's extxyz, traj and json writers write and read back. Two keys that
        become the same after cleaning: the first one wins.
    """
    out = {}
    for key, value in info.items():
        value = _top(value)
        if value is _DROP:
            continue
        out.setdefault(_key(key), value)
    return out


def portable_frames(frames) -> list:
    """Copies of ``frames`` (``ase.Atoms``) with :func:`portable_info` info; calculator results kept."""
    out = []
    for atoms in frames:
        copy = atoms.copy()
        if atoms.calc is not None:  # Atoms.copy() drops the calculator: keep its results
            from ase.calculators.singlepoint import SinglePointCalculator

            results = getattr(atoms.calc, "results", None) or {}
            if results:
                copy.calc = SinglePointCalculator(copy, **results)
        copy.info = portable_info(atoms.info)
        out.append(copy)
    return out


def info_json(info: dict) -> str:
    """``info`` as JSON text, portable values (:func:`portable_info`), sorted keys (campaign shards).

    Non-finite floats are written as ``NaN`` / ``Infinity`` (Python's ``json`` reads them).
    """
    def default(value):
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        return str(value)

    return json.dumps(portable_info(info), sort_keys=True, default=default)


def write_frames(target, frames, format: str = "extxyz", fsync: bool = False, append: bool = False) -> None:
    """Write ``frames`` with ``ase.io.write`` after making their info portable (:func:`portable_info`).

    Parameters
    ----------
    target : path or open text file
        Where to write; a path is opened (appended to with ``append``).
    frames : sequence of ase.Atoms
        Not modified.
    format : str
        ASE format name (``extxyz``, ``traj``, ``json``, ``cif``, ...).
    fsync : bool
        Flush and ``os.fsync`` before returning (durable).
    append : bool
        Append to the file at ``target`` (extxyz).

    Raises
    ------
    Whatever ``ase.io.write`` raises for the format (e.g. several frames in a one-structure format).
    """
    import ase.io

    frames = portable_frames(frames)
    if hasattr(target, "write"):
        ase.io.write(target, frames, format=format)
        if fsync:
            target.flush()
            os.fsync(target.fileno())
        return
    path = os.fspath(target)
    if format == "extxyz":
        with open(path, "a" if append else "w") as handle:
            ase.io.write(handle, frames, format=format)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        return
    ase.io.write(path, frames, format=format, **({"append": True} if append else {}))
    if fsync:
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
