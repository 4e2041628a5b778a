"""Radial distribution function g(r) of one system, averaged over recorded frames (ASE's RDF).

g(r) is computed by :func:`ase.geometry.rdf.get_rdf` on the frames read from the store:
for each frame, the pair distances within ``r_max`` (ASE's neighbor list, every periodic
image) are histogrammed into ``n_bins`` bins of width ``r_max / n_bins`` and normalised
by the ideal-gas count ``4 pi r^2 dr rho N`` with ``rho = N / V`` (partial RDFs
``g_ab``: centres of element ``a``, neighbours of element ``b``, ``rho = N_b / V``; ASE
>= 3.27 follows LAMMPS ``compute rdf``, so ``g_ab = g_ba`` and
``g = sum_ab c_a c_b g_ab``); the frames' histograms are averaged. ``r`` is the bin
centre (Å). ASE requires every periodic width of the cell to be at least ``2 r_max``;
for a larger ``r_max`` the frames are repeated along their periodic directions
(``ceil(2 r_max / width)`` times each, :data:`MAX_RDF_ATOMS` atoms at most) before ASE sees
them: every atom of the supercell has its original's environment and the density is
unchanged, so g(r) is that of the original cell (exactly, up to rounding: the test compares
against ASE on a cell large enough not to need the repeat).

Reference: ASE, ``ase/geometry/rdf.py`` (https://wiki.fysik.dtu.dk/ase); M. P. Allen and
D. J. Tildesley, *Computer Simulation of Liquids* (2nd ed., 2017), section 8.2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations_with_replacement

import numpy as np

from batchmd.analysis.frames import load_atoms

__all__ = ["RDF", "rdf", "partial_rdfs", "max_r_max", "default_r_max", "rdf_of_frames", "MAX_RDF_ATOMS"]

#: Most atoms of the supercell an r_max beyond half the cell needs (a larger one is refused).
MAX_RDF_ATOMS = 50_000


@dataclass
class RDF:
    """A radial distribution function.

    Attributes
    ----------
    r : numpy.ndarray
        ``[n_bins]`` bin centres, Å.
    g : numpy.ndarray
        ``[n_bins]`` g(r) (dimensionless), averaged over ``n_frames`` frames.
    system_id : int
    n_frames : int
    elements : tuple of str or None
        The element pair of a partial RDF (None: every atom).
    r_max : float
        Å; bins are ``r_max / n_bins`` wide.
    steps : numpy.ndarray
        ``[n_frames]`` the frames' steps.
    """

    r: np.ndarray
    g: np.ndarray
    system_id: int
    n_frames: int
    elements: tuple | None
    r_max: float
    steps: np.ndarray = field(repr=False, default=None)


def _widths(atoms) -> np.ndarray:
    """Perpendicular widths (Å) of the cell along its periodic directions (inf where not periodic)."""
    cell = np.asarray(atoms.cell[:], dtype=float)
    volume = abs(np.linalg.det(cell))
    out = np.full(3, np.inf)
    for i in range(3):
        if atoms.pbc[i]:
            cross = np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])
            out[i] = volume / np.linalg.norm(cross) if np.linalg.norm(cross) > 0 else 0.0
    return out


def max_r_max(images) -> float:
    """Half the smallest periodic width (Å) over ``images``: the largest ``r_max`` needing no repeated cell."""
    return float(min(_widths(a).min() for a in images)) / 2.0


def default_r_max(images) -> float:
    """``r_max`` (Å) of ``batchmd plot --what rdf``: :func:`max_r_max`, at least ``2.5 (V/N)^(1/3)``.

    ``(V/N)^(1/3)`` is the mean interatomic spacing (first frame), so the default spans about
    the first three neighbour shells even when the cell is small (it is then repeated).
    """
    atoms = images[0]
    volume = abs(atoms.cell.volume)
    spacing = (volume / max(len(atoms), 1)) ** (1.0 / 3.0) if volume > 0 else 0.0
    return max(max_r_max(images) * (1 - 1e-9), 2.5 * spacing)


def _repeats(images, r_max: float) -> tuple:
    """Repeats ``(na, nb, nc)`` making every periodic width of every frame at least ``2 r_max``."""
    widths = np.min([_widths(a) for a in images], axis=0)
    return tuple(int(np.ceil(2 * r_max / w * (1 + 1e-12))) if np.isfinite(w) and w < 2 * r_max else 1
                 for w in widths)


def _check(images, r_max: float, n_bins: int, system_id) -> None:
    if not (isinstance(n_bins, (int, np.integer)) and not isinstance(n_bins, bool) and n_bins >= 1):
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
    if not np.isfinite(r_max) or r_max <= 0:
        raise ValueError(f"r_max must be a positive distance in Å, got {r_max!r}")
    for k, atoms in enumerate(images):
        if abs(atoms.cell.volume) < 1e-10:
            raise ValueError(f"system {system_id}: frame {k} has no cell volume (g(r) needs the density N/V)")
    reps = _repeats(images, r_max)
    n_atoms = len(images[0]) * int(np.prod(reps))
    if n_atoms > MAX_RDF_ATOMS:
        raise ValueError(f"r_max={r_max:g} Å is too large for the cell of system {system_id}: g(r) would need it "
                         f"repeated {'x'.join(map(str, reps))} ({n_atoms} atoms, at most {MAX_RDF_ATOMS}); "
                         f"choose a smaller r_max (half the cell: {max_r_max(images):.4g} Å)")


def rdf_of_frames(images, r_max: float, n_bins: int, elements=None, system_id=None) -> RDF:
    """g(r) of a list of ase.Atoms (ASE's ``get_rdf`` averaged over them); see :func:`rdf`."""
    from ase.geometry.rdf import CellTooSmall, VolumeNotDefined, get_rdf

    if not len(images):
        raise ValueError(f"system {system_id}: no frame to compute g(r) from")
    r_max = float(r_max)
    _check(images, r_max, n_bins, system_id)
    pair = None
    if elements is not None:
        from ase.data import chemical_symbols
        from ase.symbols import symbols2numbers

        if len(elements) != 2:
            raise ValueError(f"elements must be a pair such as ('Si', 'O'), got {elements!r}")
        numbers = symbols2numbers(list(elements))
        present = set(np.unique(images[0].numbers).tolist())
        missing = [chemical_symbols[z] for z in numbers if z not in present]
        if missing:
            have = ", ".join(chemical_symbols[z] for z in sorted(present))
            raise ValueError(f"system {system_id} has no {missing[0]} atom (it holds {have})")
        pair = tuple(chemical_symbols[z] for z in numbers)
    reps = _repeats(images, r_max)
    frames = [a.repeat(reps) if reps != (1, 1, 1) else a for a in images]
    try:
        g, r = get_rdf(frames, r_max, int(n_bins), elements=pair)
    except (CellTooSmall, VolumeNotDefined) as error:  # at the boundary, ASE's rounding may differ from ours
        raise ValueError(f"system {system_id}: ASE's RDF refused r_max={r_max:g} Å: {error}") from None
    steps = np.array([a.info.get("step", -1) for a in images])
    return RDF(r=r, g=g, system_id=system_id, n_frames=len(images), elements=pair, r_max=r_max, steps=steps)


def rdf(store, system_id: int, r_max: float, n_bins: int = 100, frames=None, stage=-1, elements=None) -> RDF:
    """g(r) of one system of a trajectory store, averaged over its chosen frames.

    Parameters
    ----------
    store : path
        A trajectory store (:class:`batchmd.trajectory.TrajectoryWriter`, ``batchmd md --trajectory``).
    system_id : int
        The system (command-line runs: its input index).
    r_max : float
        Largest distance, Å. Beyond half the smallest periodic width (:func:`max_r_max`) the
        frames are repeated (module docstring).
    n_bins : int
        Number of bins of width ``r_max / n_bins``.
    frames : slice or sequence of int, optional
        Frames among those of ``stage`` (e.g. ``slice(10, None, 2)``); default all.
    stage : int or None
        -1 (default): the last stage recorded for the system; an int: that stage; None: every frame.
    elements : pair of str, optional
        Partial RDF ``g_ab``: centres ``a``, neighbours ``b`` (e.g. ``("Si", "O")``).

    Returns
    -------
    RDF
        ``r`` [n_bins] (Å, bin centres), ``g`` [n_bins].

    Raises
    ------
    ValueError
        The system was never recorded (:class:`batchmd.trajectory.SystemNotRecorded`), no
        frame is selected, ``r_max`` needs a supercell of more than :data:`MAX_RDF_ATOMS`
        atoms, the cell has no volume, or an element is absent.

    Notes
    -----
    ASE's :func:`ase.geometry.rdf.get_rdf` on the frames of
    :func:`batchmd.trajectory.read_trajectory` (see the module docstring for the definition).
    """
    images = load_atoms(store, system_id, stage, frames)
    return rdf_of_frames(images, r_max, n_bins, elements, int(system_id))


def partial_rdfs(store, system_id: int, r_max: float, n_bins: int = 100, frames=None, stage=-1) -> dict:
    """Every partial RDF of a system: ``{("Si", "O"): RDF, ...}`` over element pairs ``a <= b`` (by atomic number).

    Arguments and errors as :func:`rdf`. With ASE >= 3.27, ``g_ab = g_ba`` and the total is
    ``sum_ab c_a c_b g_ab`` (``c``: atomic fractions).
    """
    from ase.data import chemical_symbols

    images = load_atoms(store, system_id, stage, frames)
    species = [chemical_symbols[z] for z in np.unique(images[0].numbers)]
    return {(a, b): rdf_of_frames(images, r_max, n_bins, (a, b), int(system_id))
            for a, b in combinations_with_replacement(species, 2)}
