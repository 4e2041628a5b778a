"""Bands: endpoint checks, interpolation (ASE's), and a band as ONE system of the live batch.

A nudged elastic band of ``n_images`` images (endpoints included) becomes one *band
system*: its atoms are the ``n_moving = n_images - 2`` moving images concatenated, image by
image (``n_moving x N`` atoms), with the band's cell and pbc. The engine (sampler, refills,
sinks, status, graduation) handles it as any system, so a band enters, converges, fails and
graduates as a unit, and a batchmd optimizer steps it as ASE's optimizer steps an
``ase.mep.NEB`` (whose optimizable is the same concatenation). :class:`~batchmd.neb.forces.NEBForces`
turns the band system back into image systems to evaluate the potential.

Endpoint data and per-band parameters travel with the band system as fields
(:func:`band_data`): atom fields ``neb_initial`` / ``neb_final`` (each row: the endpoint
positions of its atom), ``neb_image_energy`` / ``neb_true_forces`` (written by the model),
``neb_last_positions`` (the positions at the band's last evaluation, for ``string``),
system fields ``neb_n_moving``, ``neb_k``, ``neb_climb``, ``neb_method``, ``neb_e_initial``,
``neb_e_final``, ``neb_eqlength``, ``input_index``.

The same pattern serves any workflow whose members must move together (a group sharing an
optimizer or a constraint): concatenate the members into one system, carry the group's
data as fields, and give the engine a model wrapper that splits, evaluates the members in
one call and recombines (see ``docs/neb.rst``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

__all__ = ["Band", "check_endpoints", "interpolate_band", "band_atoms", "band_data", "BandDataset"]


@dataclass
class Band:
    """One nudged elastic band to optimize.

    Attributes
    ----------
    images : list of ase.Atoms
        All images, endpoints included (at least 3).
    k : float
        Spring constant, eV/Å^2 (ASE's default 0.1).
    climb : bool
        Climbing image (ASE's ``climb``).
    method : str
        ``"aseneb"``, ``"improvedtangent"`` (ASE's default), ``"eb"``, ``"spline"`` or
        ``"string"`` (ASE's methods, without preconditioning).
    band_id : object
        The band's name in results (default: its position in the input).
    """

    images: list
    k: float = 0.1
    climb: bool = False
    method: str = "improvedtangent"
    band_id: object = None
    info: dict = field(default_factory=dict)


def _fixed(atoms) -> np.ndarray:
    from ase.constraints import FixAtoms

    mask = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.index] = True
    return mask


def check_endpoints(initial, final, where: str) -> None:
    """Refuse endpoints that cannot make a band (one line naming ``where``).

    Raises
    ------
    ValueError
        Different atom counts, elements or atom order, different pbc, different cells in
        periodic directions (ASE's NEB checks), a constraint other than ``FixAtoms``
        (only ``FixAtoms`` is carried), or non-finite positions.
    """
    from ase import Atoms

    for name, atoms in (("initial", initial), ("final", final)):
        if not isinstance(atoms, Atoms):
            raise ValueError(f"{where}: the {name} structure is a {type(atoms).__name__}, not an ase.Atoms")
        if len(atoms) == 0:
            raise ValueError(f"{where}: the {name} structure has no atoms")
        if not np.isfinite(atoms.positions).all():
            raise ValueError(f"{where}: the {name} structure has non-finite positions")
    if len(initial) != len(final):
        raise ValueError(f"{where}: the endpoints have different atom counts ({len(initial)} and {len(final)})")
    zi, zf = initial.numbers, final.numbers
    if sorted(zi.tolist()) != sorted(zf.tolist()):
        raise ValueError(f"{where}: the endpoints have different elements ({initial.get_chemical_formula()} "
                         f"and {final.get_chemical_formula()})")
    if (zi != zf).any():
        first = int(np.flatnonzero(zi != zf)[0])
        raise ValueError(f"{where}: the endpoints list their atoms in different orders (atom {first} is "
                         f"{initial[first].symbol} in the initial and {final[first].symbol} in the final structure)")
    if (initial.pbc != final.pbc).any():
        raise ValueError(f"{where}: the endpoints have different pbc ({initial.pbc.tolist()} and {final.pbc.tolist()})")
    for d in range(3):
        if initial.pbc[d] and np.abs(initial.cell[d] - final.cell[d]).max() > 1e-8:
            raise ValueError(f"{where}: the endpoints have different cells along periodic direction {d} "
                             "(a variable-cell NEB is not supported, as in ASE)")
    for name, atoms in (("initial", initial), ("final", final)):
        from ase.constraints import FixAtoms

        other = [type(c).__name__ for c in atoms.constraints if not isinstance(c, FixAtoms)]
        if other:
            raise ValueError(f"{where}: the {name} structure has constraint(s) {', '.join(other)}; "
                             "only FixAtoms is supported")
    if (_fixed(initial) != _fixed(final)).any():
        raise ValueError(f"{where}: the endpoints fix different atoms (FixAtoms)")


def interpolate_band(initial, final, n_images: int, *, interpolation: str = "linear", mic: bool | None = None,
                     where: str = "band") -> list:
    """The band's images (endpoints included), interpolated by ASE's ``NEB.interpolate``.

    Parameters
    ----------
    initial, final : ase.Atoms
        The endpoints (copied; checked with :func:`check_endpoints`).
    n_images : int
        Images including both endpoints (>= 3).
    interpolation : str
        ``"linear"`` or ``"idpp"`` (ASE's image-dependent pair potential, Smidstrup et al.,
        J. Chem. Phys. 140, 214106 (2014), run by ASE on the host).
    mic : bool, optional
        Minimum-image convention for the interpolation; default: True when the endpoints
        are periodic in any direction.

    Raises
    ------
    ValueError
        Bad endpoints, fewer than 3 images, an unknown interpolation.
    """
    from ase.mep import NEB

    check_endpoints(initial, final, where)
    if isinstance(n_images, bool) or int(n_images) != n_images or n_images < 3:
        raise ValueError(f"{where}: n_images must be an integer >= 3 (endpoints included), got {n_images!r}")
    if interpolation not in ("linear", "idpp"):
        raise ValueError(f"{where}: interpolation must be 'linear' or 'idpp', got {interpolation!r}")
    if mic is None:
        mic = bool(np.asarray(initial.pbc).any())
    images = [initial.copy()] + [initial.copy() for _ in range(int(n_images) - 2)] + [final.copy()]
    for atoms in images:
        atoms.calc = None
    neb = NEB(images, method="improvedtangent")
    neb.interpolate(method=interpolation, mic=mic, apply_constraint=False)
    return images


def band_atoms(images: Sequence):
    """The moving images concatenated into one ``ase.Atoms`` (FixAtoms carried over)."""
    from ase import Atoms
    from ase.constraints import FixAtoms

    moving = list(images[1:-1])
    first = images[0]
    atoms = Atoms(numbers=np.concatenate([a.numbers for a in moving]),
                  positions=np.concatenate([a.positions for a in moving]),
                  masses=np.concatenate([a.get_masses() for a in moving]),
                  cell=first.cell, pbc=first.pbc)
    fixed = np.concatenate([_fixed(a) for a in moving])
    if fixed.any():
        atoms.set_constraint(FixAtoms(mask=fixed))
    return atoms


def band_data(band: Band, e_initial: float, e_final: float, index: int, dtype=torch.float64):
    """The band system of ``band`` (an :class:`~batchmd.data.AtomicData`; fields in the module docstring).

    ``e_initial`` / ``e_final``: the endpoint energies (eV); ``index``: the band's
    ``input_index``.
    """
    from batchmd.data import AtomicData
    from batchmd.neb.forces import method_code

    images = band.images
    n_moving = len(images) - 2
    data = AtomicData.from_ase(band_atoms(images), dtype=dtype)
    first, last = images[0].positions, images[-1].positions
    data.add_node_property("neb_initial", torch.tensor(np.tile(first, (n_moving, 1)), dtype=dtype))
    data.add_node_property("neb_final", torch.tensor(np.tile(last, (n_moving, 1)), dtype=dtype))
    data.add_node_property("neb_image_energy", torch.full((data.num_nodes, 1), float("nan"), dtype=dtype))
    data.add_node_property("neb_true_forces", torch.full((data.num_nodes, 3), float("nan"), dtype=dtype))
    # the positions at the last evaluation (string method: re-equispace only after a step)
    data.add_node_property("neb_last_positions", data.positions.clone())
    eq = float(np.linalg.norm(last - first)) / (len(images) - 1)  # ASE's eqlength: no minimum image
    for name, value, kind in (("neb_n_moving", n_moving, torch.int32), ("neb_k", float(band.k), dtype),
                              ("neb_climb", int(bool(band.climb)), torch.int32),
                              ("neb_method", method_code(band.method), torch.int32),
                              ("neb_e_initial", float(e_initial), dtype), ("neb_e_final", float(e_final), dtype),
                              ("neb_eqlength", eq, dtype)):
        data.add_system_property(name, torch.tensor([value], dtype=kind))
    data.add_system_property("input_index", torch.tensor([[int(index)]], dtype=torch.int64))
    return data


class BandDataset:
    """Band systems as a dataset for :class:`~batchmd.dynamics.SizeAwareSampler` (built on request).

    Parameters
    ----------
    bands : sequence of Band
    endpoint_energies : sequence of (float, float)
        Per band, the initial and final energies (eV).
    indices : sequence of int
        Per band, its ``input_index`` (its position in the caller's list).
    """

    def __init__(self, bands: Sequence[Band], endpoint_energies, indices, dtype=torch.float64) -> None:
        self.bands, self.energies, self.indices, self.dtype = list(bands), list(endpoint_energies), list(indices), dtype

    def __len__(self) -> int:
        return len(self.bands)

    def identity(self, index: int) -> int:
        return int(self.indices[index])

    def get_metadata(self, index: int) -> tuple[int, int]:
        band = self.bands[index]
        return (len(band.images) - 2) * len(band.images[0]), 0

    def __getitem__(self, index: int):
        e0, e1 = self.energies[index]
        return band_data(self.bands[index], e0, e1, self.indices[index], self.dtype), {}
