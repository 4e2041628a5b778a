"""Ready-made endpoint pairs (ASE's NEB tutorial systems and relatives) for tests, examples and benchmarks.

- :func:`adatom_hop`: an adatom hopping between hollow sites of an fcc(100) slab, as in
  ASE's NEB tutorial (Au on Al(100), ``fcc100(..., size=(2, 2, 3))``, bottom layers fixed).
- :func:`vacancy_hop`: a vacancy hop in an fcc crystal (a neighbour of the vacancy moves
  into it across the periodic boundary, so the minimum image matters).
- :func:`cluster_hop`: an atom hopping between two faces of a tetrahedral cluster (no cell).

Each returns ``(initial, final)`` ``ase.Atoms`` relaxed with ``ase.optimize.FIRE`` and the
given ASE calculator (``fmax`` eV/Å), without a calculator attached. Source of the
tutorial system: https://wiki.fysik.dtu.dk/ase/tutorials/neb/diffusion.html.
"""

from __future__ import annotations

import numpy as np

__all__ = ["adatom_hop", "vacancy_hop", "cluster_hop"]


def _fresh(calc):
    """A new calculator from a class or factory; an instance as given."""
    if calc is None:
        return None
    if isinstance(calc, type) or (callable(calc) and not hasattr(calc, "get_potential_energy")):
        return calc()
    return calc


def _relax(atoms, calc, fmax):
    from ase.optimize import FIRE

    if calc is not None:
        atoms.calc = calc
        FIRE(atoms, logfile=None).run(fmax=fmax, steps=2000)
    out = atoms.copy()
    out.calc = None
    out.info.pop("adsorbate_info", None)  # a dict extxyz cannot store
    return out


def adatom_hop(surface: str = "Al", adatom: str = "Au", a: float | None = None, size=(2, 2, 3), height: float = 1.7,
               calc=None, fmax: float = 0.05, fixed_layers: int = 1):
    """Adatom hop between neighbouring hollow sites of an fcc(100) slab (``calc``: an ASE calculator or None)."""
    from ase.build import add_adsorbate, fcc100
    from ase.constraints import FixAtoms

    slab = fcc100(surface, size=size, a=a)
    add_adsorbate(slab, adatom, height, "hollow")
    slab.center(axis=2, vacuum=4.0)
    n_layers = size[2]
    slab.set_constraint(FixAtoms(mask=[atom.tag > n_layers - fixed_layers for atom in slab]))
    initial = _relax(slab.copy(), _fresh(calc), fmax)
    moved = slab.copy()
    moved[-1].x += slab.get_cell()[0, 0] / size[0]
    final = _relax(moved, _fresh(calc), fmax)
    return initial, final


def vacancy_hop(element: str = "Cu", a: float | None = None, repeat: int = 2, calc=None, fmax: float = 0.05):
    """A vacancy hop in a cubic fcc supercell: atom 0 removed, a neighbour across the boundary hops into the site."""
    from ase.build import bulk

    crystal = bulk(element, "fcc", a=a, cubic=True).repeat(repeat)
    site = crystal.positions[0].copy()
    cell = crystal.cell.array
    # the neighbour of atom 0 at -(a/2, a/2, 0), i.e. through the periodic boundary
    target = site - 0.5 * np.array([cell[0, 0] / repeat, cell[1, 1] / repeat, 0.0])
    frac = np.linalg.solve(cell.T, target) % 1.0
    target = frac @ cell
    dist = np.linalg.norm(crystal.positions - target, axis=1)
    hopper = int(np.argmin(dist))
    del crystal[0]
    hopper -= 1
    initial = crystal.copy()
    final = crystal.copy()
    final.positions[hopper] = site
    fresh = _fresh(calc)
    initial = _relax(initial, fresh, fmax)
    fresh = _fresh(calc)
    final = _relax(final, fresh, fmax)
    return initial, final


def cluster_hop(element: str = "Ar", r: float = 3.8, calc=None, fmax: float = 0.01):
    """An atom hopping between two faces of a tetrahedron (a 5-atom cluster, no cell, no pbc)."""
    from ase import Atoms

    tet = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) * r / (2 * np.sqrt(2))

    def above(face):
        centre = tet[list(face)].mean(0)
        normal = centre / np.linalg.norm(centre)
        return centre + normal * r * 0.82

    initial = Atoms(element * 5, positions=np.vstack([tet, above((0, 1, 2))]))
    final = Atoms(element * 5, positions=np.vstack([tet, above((0, 1, 3))]))
    fresh = _fresh(calc)
    initial = _relax(initial, fresh, fmax)
    fresh = _fresh(calc)
    final = _relax(final, fresh, fmax)
    return initial, final
