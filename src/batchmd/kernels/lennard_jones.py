"""Warp kernels for the (optionally shifted) 12-6 Lennard-Jones pair potential.

Pair energy, with ``r_c`` the cutoff and ``shift`` the energy at the cutoff
(zero when unshifted)::

    u(r) = 4 eps [(sigma/r)^12 - (sigma/r)^6] - shift      for r <= r_c

Several species: ``sigma``, ``eps`` and ``shift`` are those of the pair of species
``(s_i, s_j)``, read from ``[S*S]`` tables at ``s_i * S + s_j`` (``S`` species; atom ``i``'s
species is ``species_of[Z_i]``, a table over atomic numbers). The mixing rule that fills
the tables is the model's (:class:`batchmd.models.lj.LennardJones`); one species gives
bitwise the numbers of a single parameter pair.

``lj_atoms`` runs one thread per atom over that atom's neighbor row, in row order.

- Full list (``half = 0``, the CUDA default): every pair is seen from both atoms; each
  thread writes only its own force, half of each pair energy and half of each pair virial.
  No floating-point atomics: deterministic, and a system's numbers do not depend on the
  other systems of the batch.
- Half list (``half = 1``, the CPU default, ~2x fewer pair evaluations): each pair is seen
  once; the thread adds the reaction force into ``forces[j]`` with a plain read-modify-write.
  This is deterministic because Warp's CPU backend runs threads one after the other in index
  order, so ``forces[j]`` receives its contributions from the system's lower-index atoms in
  a fixed order, then the thread of ``j`` adds its own sum. Not for CUDA.

An atom whose row overflowed the list capacity, or held an image too far to pack (negative
count), walks its system's bins instead (same candidates, same order, same acceptance test as the build, see
:mod:`batchmd.kernels.neighbor_list`), so overflow is never a silent truncation and gives
bitwise the same result as a large enough list. An image entry's Cartesian shift is
computed from its packed integer image and the current cell (``image_shift``), exactly the
value the build used.

Skipping finished systems (``skip_finished = 1``): a system whose ``status`` is neither
ACTIVE nor PENDING (see :mod:`batchmd.kernels.bookkeeping`) has stopped moving, so its
forces, energy and stress from its last evaluation still hold: ``lj_atoms`` and
``lj_systems`` leave its outputs untouched and ``lj_zero_forces`` does not clear them.
A batch whose systems converge at different steps then pays only for those still moving.
``skip_finished = 2`` skips only EMPTY systems (the padding rows of a padded live batch,
:mod:`batchmd.dynamics.slot_layout`), which hold no physical system.

``lj_systems`` runs one thread per system and sums its atoms' energies and virials in atom
order. For systems larger than a chunk on GPUs (one thread walking 32,000 atoms costs
about a millisecond there), ``lj_system_chunks`` first sums fixed chunks of ``chunk``
atoms in order, one thread per (system, chunk), and ``lj_systems`` adds the chunk sums in
chunk order: still deterministic and batch invariant, and bitwise the plain sum for systems
of at most ``chunk`` atoms. The stress follows ASE's convention (``atoms.get_stress(voigt=False)`` of
``ase.calculators.lj.LennardJones``): ``stress = (1/V) sum_pairs f_ij (x) r_ij`` with
``r_ij = r_j - r_i`` and ``f_ij = -du/dr r_ij / r`` the force on ``i``.
"""

from __future__ import annotations

from typing import Any

import warp as wp

from batchmd.kernels.bookkeeping import ACTIVE, EMPTY, PENDING
from batchmd.kernels.neighbor_list import image_shift, in_phase, is_candidate, stencil_bin, unpack_image

wp.set_module_options({"enable_backward": False})


@wp.func
def lj_pair(r2: Any, sigma_sq: Any, eps4: Any, eps24: Any, e_shift: Any):
    """Pair energy ``u`` (eV) and ``du/dr / r`` (eV/Å^2) for squared distance ``r2``."""
    inv = sigma_sq / (sigma_sq * r2)
    c2 = sigma_sq * inv
    c6 = c2 * c2 * c2
    c12 = c6 * c6
    u = eps4 * (c12 - c6) - e_shift
    g = -eps24 * (c12 + c12 - c6) * inv
    return u, g


@wp.func
def virial_of(d: Any, fd: Any):
    """The 6 independent components of the (symmetric) pair virial ``fd (x) d``: (xx, yy, zz), (yz, xz, xy)."""
    return wp.cw_mul(fd, d), wp.cw_mul(wp.vector(fd[1], fd[0], fd[0]), wp.vector(d[2], d[2], d[1]))


@wp.func
def add_pair(
    d: Any,
    j: int,
    cutoff_sq: Any,
    sigma_sq: Any,
    eps4: Any,
    eps24: Any,
    e_shift: Any,
    want_virial: int,
    half: int,
    forces: wp.array(dtype=Any),
    e: Any,
    f: Any,
    vd: Any,
    vo: Any,
):
    """Atom i's sums with the pair ``d = x_j - x_i`` (Å) added if within the cutoff.

    Returns the updated energy ``e``, force ``f`` and virial parts ``vd``, ``vo``; with a
    half list the reaction force goes into ``forces[j]`` here.
    """
    e_new = e
    f_new = f
    vd_new = vd
    vo_new = vo
    r2 = wp.dot(d, d)
    if r2 <= cutoff_sq:
        u, g = lj_pair(r2, sigma_sq, eps4, eps24, e_shift)
        fd = g * d
        e_new = e + u
        f_new = f + fd
        if want_virial != 0:
            a, b = virial_of(d, fd)
            vd_new = vd + a
            vo_new = vo + b
        if half != 0:
            forces[j] = forces[j] - fd
    return e_new, f_new, vd_new, vo_new


@wp.func
def is_finished(status: wp.array(dtype=wp.int32), s: int, skip_finished: int):
    """True when system ``s`` is to be skipped.

    ``skip_finished``: 0 evaluates every system, 1 skips systems that are neither ACTIVE nor
    PENDING, 2 skips only EMPTY systems (the padding of a padded live batch).
    """
    if skip_finished == 0:
        return False
    st = status[s]
    if skip_finished == 2:
        return st == EMPTY
    return st != ACTIVE and st != PENDING


@wp.kernel
def lj_zero_forces(
    batch_idx: wp.array(dtype=wp.int32),
    status: wp.array(dtype=wp.int32),
    skip_finished: int,
    forces: wp.array(dtype=Any),
):
    """Clear the forces of the systems about to be evaluated (half list: reactions are added)."""
    i = wp.tid()
    if is_finished(status, batch_idx[i], skip_finished):
        return
    forces[i] = forces[i] - forces[i]


@wp.kernel
def lj_atoms(
    x: wp.array(dtype=Any),
    batch_idx: wp.array(dtype=wp.int32),
    ptr: wp.array(dtype=wp.int32),
    neighbors: wp.array2d(dtype=wp.int32),
    images: wp.array2d(dtype=wp.int32),
    count: wp.array(dtype=wp.int32),
    cutoff_sq: Any,
    numbers: wp.array(dtype=wp.int64),
    species_of: wp.array(dtype=wp.int32),
    num_species: int,
    pair_sigma_sq: wp.array(dtype=Any),
    pair_eps4: wp.array(dtype=Any),
    pair_eps24: wp.array(dtype=Any),
    pair_shift: wp.array(dtype=Any),
    want_virial: int,
    half: int,
    status: wp.array(dtype=wp.int32),
    skip_finished: int,
    # bin walk for atoms whose list overflowed
    cell: wp.array(dtype=Any),
    pbc: wp.array2d(dtype=wp.bool),
    nbins: wp.array(dtype=wp.vec3i),
    bin_offset: wp.array(dtype=wp.int32),
    search: wp.array(dtype=wp.vec3i),
    atom_bin: wp.array(dtype=wp.vec3i),
    atom_wrap: wp.array(dtype=wp.vec3i),
    bin_start: wp.array(dtype=wp.int32),
    bin_count: wp.array(dtype=wp.int32),
    bin_atoms: wp.array(dtype=wp.int32),
    wrapped: wp.array(dtype=Any),
    r_list_sq: Any,
    # outputs (forces must be zeroed beforehand when half != 0)
    forces: wp.array(dtype=Any),
    atom_energy: wp.array(dtype=Any),
    atom_virial: wp.array(dtype=Any),
):
    i = wp.tid()
    s = batch_idx[i]
    if is_finished(status, s, skip_finished):
        return
    base = ptr[s]
    xi = x[i]
    h = cell[s]
    n = count[i]
    si = species_of[int(numbers[i])]
    f = xi - xi
    e = cutoff_sq - cutoff_sq
    vd = f
    vo = f
    if n >= 0:  # a complete row (a truncated one stores -count)
        for t in range(n):
            j = base + neighbors[i, t]
            d = xi - xi
            if j >= base:
                d = x[j] - xi
            else:  # periodic image: stored as -1 - local index, with its packed lattice image
                j = base - 1 - neighbors[i, t]
                d = x[j] - xi + image_shift(unpack_image(images[i, t]), h)
            p = si * num_species + species_of[int(numbers[j])]
            e, f, vd, vo = add_pair(d, j, cutoff_sq, pair_sigma_sq[p], pair_eps4[p], pair_eps24[p], pair_shift[p],
                                    want_virial, half, forces, e, f, vd, vo)
    else:
        nb = nbins[s]
        sr = search[s]
        bi = atom_bin[i]
        wi = atom_wrap[i]
        xr = wrapped[i]
        offset = bin_offset[s]
        p0 = int(pbc[s, 0])
        p1 = int(pbc[s, 1])
        p2 = int(pbc[s, 2])
        for phase in range(2):  # unshifted neighbors first, then periodic images
            for o0 in range(-sr[0], sr[0] + 1):
                for o1 in range(-sr[1], sr[1] + 1):
                    for o2 in range(-sr[2], sr[2] + 1):
                        valid, cell_index, kb = stencil_bin(bi, o0, o1, o2, nb, p0, p1, p2, half)
                        if not valid:
                            continue
                        own_bin = o0 == 0 and o1 == 0 and o2 == 0
                        xb = xr - image_shift(kb, h)
                        c = offset + cell_index
                        start = bin_start[c]
                        for q in range(start, start + bin_count[c]):
                            j = bin_atoms[q]
                            if is_candidate(i, j, own_bin, half, wrapped, xb, r_list_sq):  # the build's test
                                k = kb + wi - atom_wrap[j]
                                if not in_phase(k, phase):
                                    continue
                                d = x[j] - xi + image_shift(k, h)
                                p = si * num_species + species_of[int(numbers[j])]
                                e, f, vd, vo = add_pair(d, j, cutoff_sq, pair_sigma_sq[p], pair_eps4[p],
                                                        pair_eps24[p], pair_shift[p], want_virial, half, forces,
                                                        e, f, vd, vo)
    w = cutoff_sq / cutoff_sq  # each pair once (half list): full weight
    if half == 0:
        w = cutoff_sq / (cutoff_sq + cutoff_sq)  # each pair seen from both atoms: half weight
        forces[i] = f
    else:
        forces[i] = forces[i] + f
    atom_energy[i] = e * w
    atom_virial[i] = wp.matrix_from_rows(
        wp.vector(vd[0], vo[2], vo[1]), wp.vector(vo[2], vd[1], vo[0]), wp.vector(vo[1], vo[0], vd[2])
    ) * w


@wp.kernel
def lj_system_chunks(
    ptr: wp.array(dtype=wp.int32),
    cell: wp.array(dtype=Any),
    atom_energy: wp.array(dtype=Any),
    atom_virial: wp.array(dtype=Any),
    want_virial: int,
    status: wp.array(dtype=wp.int32),
    skip_finished: int,
    chunk: int,
    part_energy: wp.array2d(dtype=Any),
    part_virial: wp.array2d(dtype=Any),
):
    """Thread (s, k): energy and virial sums of atoms ``k*chunk .. (k+1)*chunk - 1`` of system s, in order."""
    s, k = wp.tid()
    if is_finished(status, s, skip_finished):
        return
    start = ptr[s] + k * chunk
    end = wp.min(start + chunk, ptr[s + 1])
    if start >= end:
        return
    e = atom_energy.dtype(0.0)
    for i in range(start, end):
        e += atom_energy[i]
    part_energy[s, k] = e
    if want_virial != 0:
        h = cell[s]
        vir = h - h
        for i in range(start, end):
            vir += atom_virial[i]
        part_virial[s, k] = vir


@wp.kernel
def lj_systems(
    ptr: wp.array(dtype=wp.int32),
    cell: wp.array(dtype=Any),
    atom_energy: wp.array(dtype=Any),
    atom_virial: wp.array(dtype=Any),
    want_virial: int,
    status: wp.array(dtype=wp.int32),
    skip_finished: int,
    chunk: int,
    part_energy: wp.array2d(dtype=Any),
    part_virial: wp.array2d(dtype=Any),
    energy: wp.array(dtype=Any),
    stress: wp.array(dtype=Any),
):
    s = wp.tid()
    if is_finished(status, s, skip_finished):
        return
    start = ptr[s]
    h = cell[s]
    e = atom_energy.dtype(0.0)
    vir = h - h
    if chunk > 0:  # the chunk sums of lj_system_chunks, in chunk order
        for k in range((ptr[s + 1] - start + chunk - 1) // chunk):
            e += part_energy[s, k]
            if want_virial != 0:
                vir += part_virial[s, k]
    else:
        for i in range(start, ptr[s + 1]):
            e += atom_energy[i]
        if want_virial != 0:
            for i in range(start, ptr[s + 1]):
                vir += atom_virial[i]
    energy[s] = e
    if want_virial != 0:
        volume = wp.abs(wp.determinant(h))
        if volume > e - e:
            stress[s] = vir / volume
        else:
            stress[s] = h - h


for _scalar, _vec, _mat in ((wp.float32, wp.vec3f, wp.mat33f), (wp.float64, wp.vec3d, wp.mat33d)):
    wp.overload(
        lj_atoms,
        {
            "x": wp.array(dtype=_vec),
            "cutoff_sq": _scalar,
            "pair_sigma_sq": wp.array(dtype=_scalar),
            "pair_eps4": wp.array(dtype=_scalar),
            "pair_eps24": wp.array(dtype=_scalar),
            "pair_shift": wp.array(dtype=_scalar),
            "cell": wp.array(dtype=_mat),
            "wrapped": wp.array(dtype=_vec),
            "r_list_sq": _scalar,
            "forces": wp.array(dtype=_vec),
            "atom_energy": wp.array(dtype=_scalar),
            "atom_virial": wp.array(dtype=_mat),
        },
    )
    wp.overload(lj_zero_forces, {"forces": wp.array(dtype=_vec)})
    for _kernel in (lj_system_chunks, lj_systems):
        wp.overload(
            _kernel,
            {
                "cell": wp.array(dtype=_mat),
                "atom_energy": wp.array(dtype=_scalar),
                "atom_virial": wp.array(dtype=_mat),
                "part_energy": wp.array2d(dtype=_scalar),
                "part_virial": wp.array2d(dtype=_mat),
                **({"energy": wp.array(dtype=_scalar), "stress": wp.array(dtype=_mat)} if _kernel is lj_systems else {}),
            },
        )
