"""Many inputs: files, folders and globs to structure files, and reading them with their origin.

Every command that reads structures (``batchmd relax``, ``md``, ``pipeline``, ``shard``)
takes its inputs through :func:`expand_inputs` and :func:`read_structures`:

- a **file** is read whole (every frame, any format ``ase.io.read`` reads);
- a **folder** means the files in it whose extension is one of
  :data:`STRUCTURE_EXTENSIONS` (or named ``POSCAR*`` / ``CONTCAR*``), sorted by name, not
  recursive, hidden files skipped; a folder with none of them is an error;
- a **glob** (``'data/*.extxyz'``, quoted so that the shell leaves it alone; ``**`` with
  ``recursive``) means the matching files, sorted by name; matched folders are expanded
  as above; a glob matching nothing is an error.

Frames come out in the order the inputs were given, each file's frames in file order.
A file named twice (directly or through a folder or glob) is an error naming it. Each
frame records where it came from in its ``atoms.info``: :data:`SOURCE_FILE` (the path as
given or as found under the folder/glob given, e.g. ``structures/a.cif``) and
:data:`SOURCE_INDEX` (0-based frame index in that file). Those two keys are carried to
every output (CLI results, summaries, campaign shards and ``campaign export``).

Errors are ``ValueError`` with one line naming the input (the CLI shows them as
``batchmd: error: ...``).

Example
-------
>>> import os, tempfile
>>> import ase.io
>>> from ase.build import bulk
>>> from batchmd.data.inputs import read_structures
>>> tmp = tempfile.mkdtemp()
>>> ase.io.write(os.path.join(tmp, "a.extxyz"), [bulk("Cu"), bulk("Ar")])
>>> ase.io.write(os.path.join(tmp, "b.cif"), bulk("Au"))
>>> frames = read_structures([tmp])
>>> [(os.path.basename(a.info["source_file"]), a.info["source_index"]) for a in frames]
[('a.extxyz', 0), ('a.extxyz', 1), ('b.cif', 0)]
"""

from __future__ import annotations

import glob
import hashlib
import os

__all__ = ["SOURCE_FILE", "SOURCE_INDEX", "STRUCTURE_EXTENSIONS", "expand_inputs", "inputs_checksum",
           "read_file", "read_structures"]

#: ``atoms.info`` key: the file a frame was read from (as given, or as found under a folder/glob).
SOURCE_FILE = "source_file"
#: ``atoms.info`` key: the frame's 0-based index in that file.
SOURCE_INDEX = "source_index"

#: Extensions a folder is searched for (lower case), in addition to ``POSCAR*``/``CONTCAR*`` names.
#: ``.json`` is left out on purpose: folders of runs hold JSON that is not a structure
#: (configs, ``*.partial.json``); name an ASE ``.json`` database as a file.
STRUCTURE_EXTENSIONS = (".extxyz", ".xyz", ".traj", ".cif", ".vasp", ".poscar", ".db", ".pdb", ".xsf", ".res")

_GLOB_CHARS = set("*?[")


def _is_structure_file(name: str) -> bool:
    if name.startswith("."):
        return False
    lower = name.lower()
    return lower.endswith(STRUCTURE_EXTENSIONS) or name.upper().startswith(("POSCAR", "CONTCAR"))


def _folder_files(folder: str) -> list[str]:
    names = sorted(name for name in os.listdir(folder)
                   if _is_structure_file(name) and os.path.isfile(os.path.join(folder, name)))
    if not names and os.path.isfile(os.path.join(folder, "manifest.json")):
        raise ValueError(f"{folder}: a sharded dataset (manifest.json), not a folder of structure files; run it with "
                         "`batchmd campaign run` or under torchrun (docs/campaigns.rst)")
    if not names:
        raise ValueError(f"{folder}: folder holds no structure file ({', '.join(STRUCTURE_EXTENSIONS[:8])}, ..., "
                         "POSCAR)")
    return [os.path.join(folder, name) for name in names]


def expand_inputs(inputs, recursive: bool = False) -> list[str]:
    """The structure files named by ``inputs`` (files, folders, globs), in order.

    Parameters
    ----------
    inputs : path or sequence of paths
        Files, folders and glob patterns (see the module docstring).
    recursive : bool
        Let ``**`` in a glob match any number of folders.

    Returns
    -------
    list of str
        File paths, as given or joined onto the folder / glob given.

    Raises
    ------
    ValueError
        No inputs; a missing file or folder; a folder holding no structure file; a glob
        matching nothing; a file named twice.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise ValueError("no input given")
    files: list[str] = []
    seen: dict[str, str] = {}
    for given in inputs:
        if os.path.isdir(given):
            found = _folder_files(given)
        elif os.path.exists(given):
            found = [given]
        elif _GLOB_CHARS & set(given):
            matches = sorted(glob.glob(given, recursive=recursive))
            if not matches:
                raise ValueError(f"{given}: pattern matches no file")
            found = []
            for match in matches:
                found += _folder_files(match) if os.path.isdir(match) else [match]
        else:
            raise ValueError(f"{given}: no such file")
        for path in found:
            key = os.path.realpath(path)
            if key in seen:
                also = "" if seen[key] == given else f" (also through {seen[key]})"
                raise ValueError(f"{path}: named twice in the inputs{also}; give each file once")
            seen[key] = given
            files.append(path)
    return files


def read_file(path, format: str | None = None) -> list:
    """Every frame of one file (``ase.io.read(path, ":")``), each with its origin keys.

    Raises
    ------
    ValueError
        The file is missing, not a file, cannot be read by ASE, or holds no frame.
    """
    import ase.io

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not a file")
    try:
        frames = ase.io.read(path, index=":", format=format)
    except Exception as error:  # ASE raises many types for unreadable files
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: cannot read it with ASE ({message})") from error
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise ValueError(f"{path}: no frames")
    for index, atoms in enumerate(frames):
        atoms.info[SOURCE_FILE] = path
        atoms.info[SOURCE_INDEX] = index
    return frames


def read_structures(inputs, format: str | None = None, recursive: bool = False) -> list:
    """Every frame of every input (files, folders, globs), in order, with ``source_file``/``source_index``.

    Raises
    ------
    ValueError
        One line naming the input: see :func:`expand_inputs` and :func:`read_file`.
    """
    frames = []
    for path in expand_inputs(inputs, recursive=recursive):
        frames += read_file(path, format=format)
    return frames


def inputs_checksum(files) -> str:
    """``sha256:<hex>`` identity of the input files' bytes, in order (a run's ``--resume`` identity).

    One file: the sha256 of its bytes (what runs of a single input always recorded);
    several: the sha256 of their sha256 digests in order (names do not count, order does).
    """
    digests = []
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digests.append(digest.hexdigest())
    if len(digests) == 1:
        return "sha256:" + digests[0]
    return "sha256:" + hashlib.sha256("\n".join(digests).encode()).hexdigest()
