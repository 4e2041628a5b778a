"""Input validation shared by every entry point: one line naming what is wrong and where.

:func:`atoms_problem` is the single rule set behind :func:`batchmd.ase.check_frames`
(``run_frames``, ``relax``, every CLI command) and ``batchmd.campaign.shards.validate_atoms``
(``batchmd shard``): no atoms, unknown elements, non-finite positions / cell / momenta,
non-positive masses, periodic directions without a lattice vector, zero-volume periodic
cells, overlapping atoms (closer than ``min_distance``), and ASE constraints batchmd does
not honour (it honours ``FixAtoms`` and ``FixCom``; see :mod:`batchmd.dynamics.constraints`).

Example
-------
>>> from ase import Atoms
>>> atoms_problem(Atoms("Ar2", positions=[[0, 0, 0], [0.01, 0, 0]]))
'has atoms 0 and 1 closer than min_distance=0.1 Å (0.01 Å apart)'
"""

from __future__ import annotations

import numpy as np

__all__ = ["SUPPORTED_CONSTRAINTS", "atoms_problem", "unsupported_constraints"]

#: ASE constraints carried into the batch and honoured by every dynamics method.
SUPPORTED_CONSTRAINTS = ("FixAtoms", "FixCom")


def unsupported_constraints(atoms) -> list[str]:
    """Names of the ASE constraints on ``atoms`` that batchmd does not honour."""
    return [type(c).__name__ for c in getattr(atoms, "constraints", ()) or ()
            if type(c).__name__ not in SUPPORTED_CONSTRAINTS]


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
                    f"{', '.join(SUPPORTED_CONSTRAINTS)}); remove it or pass ignore_constraints=True to drop it")
    if min_distance > 0 and n > 1:
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", atoms, float(min_distance))
        if d.size:
            k = int(np.argmin(d))
            first, second = sorted((int(i[k]), int(j[k])))
            return (f"has atoms {first} and {second} closer than min_distance={min_distance:g} Å "
                    f"({d[k]:.4g} Å apart)")
    return None
