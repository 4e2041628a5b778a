"""Input validation shared by every entry point: one line naming what is wrong and where.

:func:`atoms_problem` is the single rule set behind :func:`batchmd.ase.check_frames`
(``run_frames``, ``relax``, every CLI command) and ``batchmd.campaign.shards.validate_atoms``
(``batchmd shard``): no atoms, unknown elements, non-finite positions / cell / momenta,
non-positive masses, periodic directions without a lattice vector, zero-volume periodic
cells, overlapping atoms (closer than ``min_distance``), ASE constraints batchmd does
not honour (it honours ``FixAtoms`` and ``FixCom``; see :mod:`batchmd.dynamics.constraints`),
and disordered structures: sites with partial or mixed occupancy (:func:`disorder_problem`).

Disorder: ASE's CIF reader keeps one species per site (the dominant one) and records the
site occupancies in ``atoms.info["occupancy"]`` (``{site: {symbol: occupancy}}``, sites
numbered in the order of the CIF's ``_atom_site`` loop, each atom's site in
``atoms.arrays["spacegroup_kinds"]``; extxyz files keep both). A ``LiNi0.5Co0.5O2`` CIF
(Ni and Co sharing one site) is read as ``Li3Co3O6``: running it would give a silent wrong
answer, so it is refused by name. Build an ordered cell (a supercell with explicit species)
first.

Example
-------
>>> from ase import Atoms
>>> atoms_problem(Atoms("Ar2", positions=[[0, 0, 0], [0.01, 0, 0]]))
'has atoms 0 and 1 closer than min_distance=0.1 Å (0.01 Å apart)'
"""

from __future__ import annotations

import numpy as np

__all__ = ["OCCUPANCY_TOLERANCE", "SUPPORTED_CONSTRAINTS", "atoms_problem", "disorder_problem",
           "unsupported_constraints"]

#: ASE constraints carried into the batch and honoured by every dynamics method.
SUPPORTED_CONSTRAINTS = ("FixAtoms", "FixCom")

#: A site is fully occupied when its one species' occupancy is within this of 1 (refinements
#: often print 0.999 or 1.001 for a full site).
OCCUPANCY_TOLERANCE = 0.01


def unsupported_constraints(atoms) -> list[str]:
    """Names of the ASE constraints on ``atoms`` that batchmd does not honour."""
    return [type(c).__name__ for c in getattr(atoms, "constraints", ()) or ()
            if type(c).__name__ not in SUPPORTED_CONSTRAINTS]


def disorder_problem(atoms) -> str | None:
    """Why ``atoms`` is not an ordered structure (a phrase, "has ..."), or None.

    Reads the site occupancies ASE's CIF reader stores (``atoms.info["occupancy"]``, see the
    module docstring). A site is disordered when it holds more than one species or its one
    species' occupancy differs from 1 by more than :data:`OCCUPANCY_TOLERANCE`.

    Example
    -------
    >>> from ase import Atoms
    >>> atoms = Atoms("Co", cell=[3, 3, 3], pbc=True, info={"occupancy": {"0": {"Ni": 0.5, "Co": 0.5}}})
    >>> disorder_problem(atoms)  # doctest: +NORMALIZE_WHITESPACE
    'is disordered: CIF site 0 holds Ni 0.5 + Co 0.5 but was read as Co on atom 0 (ASE keeps one species
     per site); batchmd runs ordered structures only: build an ordered cell (e.g. a supercell with
     explicit species) first'
    """
    occupancy = atoms.info.get("occupancy")
    if not isinstance(occupancy, dict) or not occupancy:
        return None
    kinds = atoms.arrays.get("spacegroup_kinds")
    if kinds is not None and len(kinds) == len(atoms):
        members = {}
        for index, kind in enumerate(np.asarray(kinds).tolist()):
            members.setdefault(str(kind), []).append(index)
    else:  # ASE's reader without a cell: one site per atom, keyed by atom index
        members = {key: [int(key)] for key in occupancy if str(key).isdigit() and int(key) < len(atoms)}
    for key in sorted(members, key=lambda k: (len(k), k)):
        site = occupancy.get(key)
        if not isinstance(site, dict) or not site:
            continue
        try:
            values = {str(symbol): float(value) for symbol, value in site.items()}
        except (TypeError, ValueError):
            return f"has an unreadable occupancy for CIF site {key} ({site!r})"
        if len(values) == 1 and abs(next(iter(values.values())) - 1.0) <= OCCUPANCY_TOLERANCE:
            continue
        atoms_here = members[key]
        shown = ", ".join(str(i) for i in atoms_here[:3]) + (", ..." if len(atoms_here) > 3 else "")
        held = " + ".join(f"{symbol} {value:g}" for symbol, value in values.items())
        read_as = atoms.get_chemical_symbols()[atoms_here[0]]
        plural = "s" if len(atoms_here) > 1 else ""
        return (f"is disordered: CIF site {key} holds {held} but was read as {read_as} on atom{plural} {shown} "
                "(ASE keeps one species per site); batchmd runs ordered structures only: build an ordered cell "
                "(e.g. a supercell with explicit species) first")
    return None


def drop_unsupported_constraints(frames) -> tuple[list, list[str]]:
    """``(frames, dropped)``: copies of the frames that hold unsupported ASE constraints, without them.

    What ``ignore_constraints=True`` means: such constraints are neither honoured nor written back
    with the results (``FixAtoms`` and ``FixCom`` are kept). ``dropped``: their names, sorted, once.
    Frames without any are returned as they are (not copied).
    """
    out, dropped = [], set()
    for atoms in frames:
        names = unsupported_constraints(atoms)
        if names:
            atoms = atoms.copy()
            atoms.set_constraint([c for c in atoms.constraints if type(c).__name__ in SUPPORTED_CONSTRAINTS])
            dropped.update(names)
        out.append(atoms)
    return out, sorted(dropped)


def atoms_problem(atoms, min_distance: float = 0.1, max_atoms: int | None = None,
                  ignore_constraints: bool = False) -> str | None:
    """Why ``atoms`` cannot be run, as a phrase naming the atom(s) ("has ..."), or None.

    Parameters
    ----------
    atoms : ase.Atoms
    min_distance : float
        Smallest allowed interatomic distance, Å (periodic images included); 0 disables.
        Overlapping atoms make every potential blow up.
    max_atoms : int, optional
        Largest allowed structure.
    ignore_constraints : bool
        Do not report ASE constraints other than ``FixAtoms`` and ``FixCom`` (they will be dropped).
    """
    n = len(atoms)
    if n == 0:
        return "has no atoms"
    if max_atoms is not None and n > max_atoms:
        return f"has {n} atoms, more than max_atoms={max_atoms}"
    numbers = atoms.get_atomic_numbers()
    bad = np.nonzero((numbers < 1) | (numbers > 118))[0]
    if bad.size:
        return (f"has atomic number {int(numbers[bad[0]])} at atom {int(bad[0])}, not an element "
                "(allowed 1..118; 0 is ASE's dummy atom X)")
    disorder = disorder_problem(atoms)
    if disorder is not None:
        return disorder
    positions = atoms.get_positions()
    bad = np.nonzero(~np.isfinite(positions).all(axis=1))[0]
    if bad.size:
        return f"has non-finite (NaN/inf) coordinates (atom {int(bad[0])})"
    cell = atoms.cell.array
    if not np.isfinite(cell).all():
        return "has a non-finite (NaN/inf) cell"
    for axis in range(3):
        if atoms.pbc[axis] and np.linalg.norm(cell[axis]) == 0.0:
            return f"is periodic along axis {axis} but lattice vector {axis} has zero length"
    if atoms.pbc.all() and abs(np.linalg.det(cell)) < 1e-12:
        return "has a periodic cell of zero volume"
    masses = atoms.get_masses()
    bad = np.nonzero(~(np.isfinite(masses) & (masses > 0)))[0]
    if bad.size:
        return f"has a mass that is not finite and > 0 amu (atom {int(bad[0])})"
    if "momenta" in atoms.arrays:
        bad = np.nonzero(~np.isfinite(atoms.arrays["momenta"]).all(axis=1))[0]
        if bad.size:
            return f"has non-finite (NaN/inf) momenta (atom {int(bad[0])})"
    from batchmd.data.ase_convert import info_targets

    try:
        info_targets(atoms.info)
    except ValueError as error:
        return f"has {error}"
    if not ignore_constraints:
        names = unsupported_constraints(atoms)
        if names:
            return (f"has ASE constraint {names[0]}, which batchmd does not honour (it honours "
                    f"{', '.join(SUPPORTED_CONSTRAINTS)}); remove it, or drop it with ignore_constraints=True "
                    "(command line: --ignore-constraints)")
    if min_distance > 0 and n > 1:
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", atoms, float(min_distance))
        if d.size:
            k = int(np.argmin(d))
            first, second = sorted((int(i[k]), int(j[k])))
            return (f"has atoms {first} and {second} closer than min_distance={min_distance:g} Å "
                    f"({d[k]:.4g} Å apart)")
    return None
