"""Warp kernels for a batched Verlet neighbor list built from per-system cell lists.

Algorithm
---------
Every system ``s`` (atoms ``ptr[s] .. ptr[s+1]-1``) gets its own *binning frame*: a
3x3 matrix whose rows are the periodic cell vectors and, for each non-periodic
direction, a unit vector orthogonal to the periodic ones (for an isolated cluster the
frame is the identity). ``frac = G @ r`` with ``G = inverse(frame)^T`` gives frame
coordinates; periodic coordinates are wrapped to ``[0, 1)`` and non-periodic ones
(in Å) are measured from the system's lowest atom. Bins along direction ``d`` have a
perpendicular thickness ``w_d``; the bin counts ``nbins[s]`` are chosen on the host
when the batch structure changes, everything else (frame, bin widths and the search
range ``search[s][d] = ceil(r_list / w_d)``) is recomputed on the device at every
rebuild, so a changed cell never needs the host. Searching ``-search .. +search`` bins
in each direction (wrapping periodic ones, each wrap being one lattice image) finds
every image of every atom within ``r_list``, including an atom's own images and several
images of the same atom when the cell is smaller than twice the cutoff. One bin per
direction is the O(N^2)-with-images path that small systems get automatically.

Kernels, in launch order (``rebuild[s]`` is decided on the device, every later kernel
early-exits for systems that are not flagged, so a step never synchronises the host):

``nl_flag_systems``   one thread per system: flag if the list cutoff differs from the
                      reference (NaN reference = refilled slot), ``force`` is set, or its
                      cell changed too much for the skin (the strain-aware test, in
                      :mod:`batchmd.kernels.neighbor_skin`, re-exported here).
``nl_flag_atoms``     one thread per atom: flag its system if it moved more than its skin
                      margin from the (affinely deformed) reference (or its reference is
                      NaN, or it overflowed and ``check_overflow``).
``nl_frame``          one thread per flagged system: frame, bin widths, search ranges
                      (EMPTY systems, the padding of a padded live batch, FAILED systems and
                      non-finite cells are unflagged here: never walked, never grown).
``nl_bin_atoms``      one thread per atom: its bin, own lattice wrap and wrapped position;
                      stores the reference position.
``nl_sort_bins``      one thread per flagged system: serial counting sort of its atoms
                      into bins, ascending atom index inside a bin (deterministic).
                      On GPUs the same tables come from ``nl_clear_bins`` (per bin),
                      ``nl_count_bins`` (per atom), ``nl_scan_bins`` (per system, over
                      its bins), ``nl_fill_bins`` (per atom) and ``nl_order_bins`` (per
                      bin: insertion sort by atom index), bit for bit.
``nl_build``          one thread per atom: writes up to ``K`` neighbors (with packed
                      images) and the neighbor count ``n``; a row that did not fit, or held
                      an image beyond ``±IMAGE_LIMIT``, stores ``-n`` (reported, never
                      truncated silently) and ``max_count`` the largest ``n``.

Row layout: a row first holds the neighbors in the same cell image as ``i`` (system-local
index ``j >= 0``, no shift), then the periodic images (stored as ``-1 - j``, with their
integer lattice image ``n = (n0, n1, n2)`` packed in ``images``), each part in the fixed
stencil/bin/atom order, which depends only on the system's own atoms. Pair kernels thus
skip the image work for most pairs of a large cell. With ``half != 0`` each pair is kept
once: only bin offsets that are lexicographically positive are visited (a half stencil),
plus ``j > i`` in the atom's own bin (``half_skip``); this also halves the build's
candidates. The stencil is symmetric, so the pair ``(j, i)`` sits at the opposite offset
and is found exactly once.

Image packing
-------------
A pair's image is ``x_j + n0 a + n1 b + n2 c - x_i`` (rows ``a, b, c`` of the cell, Å);
the consumer computes the Cartesian shift at use time with :func:`image_shift` from the
current cell, bit for bit the build's former stored value: the list is only used after
the skin check, which rebuilds a system whose cell differs from the cell of its build.
``n`` is packed in one int32 as three ``IMAGE_BITS = 10``-bit fields holding
``n_d + 512`` (:func:`pack_image` / :func:`unpack_image`), so ``|n_d| <= IMAGE_LIMIT = 511``
and the packed value is never negative. Neither part of ``n`` has a bound that fits any
fixed packing: the bin-image part reaches about ``r_list / width + 2`` (a cell of
perpendicular width ``width`` Å; only degenerate cells are refused, so a 0.01 Å-thin
direction with ``r_list = 9.5`` Å needs ~950), and for unwrapped positions the wrap
difference of two atoms grows with diffusion. A row with an image beyond ``±511`` is
therefore marked like an overflowed row (``-n``): its atom is evaluated exactly by the
bin walk, and its system is rebuilt at the next structure change (never a wrong pair).

The pair kernels re-walk the bins for an atom whose count is negative (unshifted
candidates, then images, with the build's acceptance test bit for bit), so results stay
bitwise identical to the list path (see :mod:`batchmd.kernels.lennard_jones`).
"""

from __future__ import annotations

from typing import Any

import warp as wp

from batchmd.kernels.bookkeeping import EMPTY, FAILED
from batchmd.kernels.neighbor_skin import nl_flag_atoms, nl_flag_systems  # noqa: F401 (launched as nlk.*)

wp.set_module_options({"enable_backward": False})

# Relative margin on bin search ranges (guards against round-off at exact ties).
SEARCH_MARGIN = wp.constant(1.0e-6)


@wp.func
def floor_div(c: int, n: int):
    """Floor division of integers (Python semantics) for a positive ``n``."""
    q = c / n
    if c < 0 and q * n != c:
        q = q - 1
    return q


@wp.func
def bin_image(c: int, n: int, periodic: int):
    """Map an unwrapped bin coordinate to ``(bin, image, valid)`` along one direction."""
    if periodic != 0:
        k = floor_div(c, n)
        return wp.vec3i(c - k * n, k, 1)
    if c < 0 or c >= n:
        return wp.vec3i(0, 0, 0)
    return wp.vec3i(c, 0, 1)


@wp.func
def bin_cell(b: wp.vec3i, nb: wp.vec3i):
    """Linear index of a bin triple inside one system's bin grid."""
    return (b[0] * nb[1] + b[1]) * nb[2] + b[2]


@wp.func
def in_phase(k: wp.vec3i, phase: int):
    """Phase 0 takes candidates without lattice shift, phase 1 those with one."""
    unshifted = k[0] == 0 and k[1] == 0 and k[2] == 0
    return unshifted == (phase == 0)


@wp.func
def image_shift(k: wp.vec3i, h: Any):
    """Cartesian lattice translation ``k0*a + k1*b + k2*c`` (rows of ``h``)."""
    return h[0] * h.dtype(k[0]) + h[1] * h.dtype(k[1]) + h[2] * h.dtype(k[2])


IMAGE_BITS = wp.constant(10)
IMAGE_BIAS = wp.constant(512)  # 2 ** (IMAGE_BITS - 1): stored field = n + IMAGE_BIAS
IMAGE_MASK = wp.constant(1023)  # 2 ** IMAGE_BITS - 1
IMAGE_LIMIT = wp.constant(511)  # largest |n_d| a packed image holds


@wp.func
def image_fits(k: wp.vec3i):
    """Whether every component of ``k`` fits a packed image (``|k_d| <= IMAGE_LIMIT``)."""
    return wp.abs(k[0]) <= IMAGE_LIMIT and wp.abs(k[1]) <= IMAGE_LIMIT and wp.abs(k[2]) <= IMAGE_LIMIT


@wp.func
def pack_image(k: wp.vec3i):
    """Three lattice image offsets (``|k_d| <= IMAGE_LIMIT``) in one non-negative int32."""
    return (((k[0] + IMAGE_BIAS) << IMAGE_BITS) | (k[1] + IMAGE_BIAS)) << IMAGE_BITS | (k[2] + IMAGE_BIAS)


@wp.func
def unpack_image(p: wp.int32):
    """Inverse of :func:`pack_image`."""
    return wp.vec3i(
        (p >> (IMAGE_BITS + IMAGE_BITS)) - IMAGE_BIAS,
        ((p >> IMAGE_BITS) & IMAGE_MASK) - IMAGE_BIAS,
        (p & IMAGE_MASK) - IMAGE_BIAS,
    )


@wp.func
def half_skip(half: int, o0: int, o1: int, o2: int):
    """Half lists visit only bin offsets that are lexicographically >= 0 (a half stencil)."""
    if half == 0 or o0 > 0:
        return False
    if o0 < 0:
        return True
    if o1 != 0:
        return o1 < 0
    return o2 < 0


@wp.func
def stencil_bin(bi: wp.vec3i, o0: int, o1: int, o2: int, nb: wp.vec3i, p0: int, p1: int, p2: int, half: int):
    """The bin at stencil offset ``(o0, o1, o2)`` from bin ``bi``, shared by the build and the bin walk.

    Returns ``(valid, cell, image)``: ``valid`` is False beyond a non-periodic edge or for
    an offset the half stencil skips; ``cell`` is the bin's index within its system's
    grid and ``image`` the lattice image it lies in.
    """
    c0 = bin_image(bi[0] + o0, nb[0], p0)
    c1 = bin_image(bi[1] + o1, nb[1], p1)
    c2 = bin_image(bi[2] + o2, nb[2], p2)
    valid = c0[2] != 0 and c1[2] != 0 and c2[2] != 0 and not half_skip(half, o0, o1, o2)
    return valid, bin_cell(wp.vec3i(c0[0], c1[0], c2[0]), nb), wp.vec3i(c0[1], c1[1], c2[1])


@wp.func
def is_candidate(i: int, j: int, own_bin: bool, half: int, wrapped: wp.array(dtype=Any), xb: Any, r_list_sq: Any):
    """The build's acceptance test for atom ``j`` of a stencil bin (``xb``: atom i moved into that bin's image).

    A NaN distance is accepted: a non-finite position gives NaN pairs (and NaN model outputs),
    never an atom without neighbors."""
    if own_bin and (j == i or (half != 0 and j < i)):
        return False
    d = wrapped[j] - xb
    return not (wp.dot(d, d) >= r_list_sq)


@wp.kernel
def nl_frame(
    x: wp.array(dtype=Any),
    cell: wp.array(dtype=Any),
    pbc: wp.array2d(dtype=wp.bool),
    ptr: wp.array(dtype=wp.int32),
    nbins: wp.array(dtype=wp.vec3i),
    r_list: Any,
    list_code: Any,
    rebuild: wp.array(dtype=wp.int32),
    frame: wp.array(dtype=Any),
    lower: wp.array(dtype=Any),
    width: wp.array(dtype=Any),
    search: wp.array(dtype=wp.vec3i),
    ref_cell: wp.array(dtype=Any),
    ref_cutoff: wp.array(dtype=Any),
    status: wp.array(dtype=wp.int32),
    skip_empty: int,
):
    s = wp.tid()
    if rebuild[s] == 0:
        return
    if skip_empty != 0 and (status[s] == EMPTY or status[s] == FAILED):
        rebuild[s] = 0  # padding of a padded live batch, or a failed system (runaway guards): never listed
        return
    h = cell[s]
    if not (wp.isfinite(wp.trace(wp.transpose(h) * h))):
        rebuild[s] = 0  # a non-finite cell is never walked (its rows keep their last build)
        return
    one = r_list / r_list
    zero = r_list - r_list
    r0 = h[0]
    r1 = h[1]
    r2 = h[2]
    p0 = pbc[s, 0]
    p1 = pbc[s, 1]
    p2 = pbc[s, 2]
    n_periodic = int(p0) + int(p1) + int(p2)
    if n_periodic == 0:
        r0 = wp.vector(one, zero, zero)
        r1 = wp.vector(zero, one, zero)
        r2 = wp.vector(zero, zero, one)
    elif n_periodic == 1:
        a = r0
        if p1:
            a = r1
        if p2:
            a = r2
        e = wp.vector(one, zero, zero)
        if wp.abs(a[1]) <= wp.abs(a[0]) and wp.abs(a[1]) <= wp.abs(a[2]):
            e = wp.vector(zero, one, zero)
        elif wp.abs(a[2]) <= wp.abs(a[0]) and wp.abs(a[2]) <= wp.abs(a[1]):
            e = wp.vector(zero, zero, one)
        u = wp.normalize(wp.cross(a, e))
        v = wp.normalize(wp.cross(a, u))
        if p0:
            r1 = u
            r2 = v
        elif p1:
            r0 = u
            r2 = v
        else:
            r0 = u
            r1 = v
    elif n_periodic == 2:
        if not p0:
            r0 = wp.normalize(wp.cross(r1, r2))
        elif not p1:
            r1 = wp.normalize(wp.cross(r2, r0))
        else:
            r2 = wp.normalize(wp.cross(r0, r1))
    g = wp.transpose(wp.inverse(wp.matrix_from_rows(r0, r1, r2)))
    frame[s] = g
    nb = nbins[s]
    lo = wp.vector(zero, zero, zero)
    hi = wp.vector(zero, zero, zero)
    if n_periodic < 3:
        start = ptr[s]
        for i in range(start, ptr[s + 1]):
            f = g * x[i]
            if i == start:
                lo = f
                hi = f
            lo = wp.min(lo, f)
            hi = wp.max(hi, f)
    w = wp.vector(zero, zero, zero)
    sr = wp.vec3i(0, 0, 0)
    for d in range(3):
        grad = wp.length(g[d])  # 1 / (plane spacing per unit frame coordinate)
        need = r_list * grad  # the list cutoff in frame units
        if pbc[s, d]:
            w[d] = one / h.dtype(nb[d])
            lo[d] = zero
        else:
            w[d] = wp.max((hi[d] - lo[d]) / h.dtype(nb[d]), need * (one + h.dtype(SEARCH_MARGIN)))
        sr[d] = int(wp.ceil(need / w[d] * (one + h.dtype(SEARCH_MARGIN))))
    lower[s] = lo
    width[s] = w
    search[s] = sr
    ref_cell[s] = h
    ref_cutoff[s] = list_code


@wp.kernel
def nl_bin_atoms(
    x: wp.array(dtype=Any),
    batch_idx: wp.array(dtype=wp.int32),
    pbc: wp.array2d(dtype=wp.bool),
    nbins: wp.array(dtype=wp.vec3i),
    bin_offset: wp.array(dtype=wp.int32),
    cell: wp.array(dtype=Any),
    frame: wp.array(dtype=Any),
    lower: wp.array(dtype=Any),
    width: wp.array(dtype=Any),
    rebuild: wp.array(dtype=wp.int32),
    atom_bin: wp.array(dtype=wp.vec3i),
    atom_wrap: wp.array(dtype=wp.vec3i),
    atom_cell: wp.array(dtype=wp.int32),
    wrapped: wp.array(dtype=Any),
    ref_x: wp.array(dtype=Any),
):
    i = wp.tid()
    s = batch_idx[i]
    if rebuild[s] == 0:
        return
    xi = x[i]
    f = frame[s] * xi
    nb = nbins[s]
    lo = lower[s]
    w = width[s]
    b = wp.vec3i(0, 0, 0)
    k = wp.vec3i(0, 0, 0)
    for d in range(3):
        if pbc[s, d]:
            fl = wp.floor(f[d])
            k[d] = int(fl)
            b[d] = int((f[d] - fl) / w[d])
        else:
            b[d] = int(wp.floor((f[d] - lo[d]) / w[d]))
        b[d] = wp.clamp(b[d], 0, nb[d] - 1)
    atom_bin[i] = b
    atom_wrap[i] = k
    atom_cell[i] = bin_offset[s] + bin_cell(b, nb)
    wrapped[i] = xi - image_shift(k, cell[s])
    ref_x[i] = xi


@wp.kernel
def nl_sort_bins(
    ptr: wp.array(dtype=wp.int32),
    nbins: wp.array(dtype=wp.vec3i),
    bin_offset: wp.array(dtype=wp.int32),
    atom_cell: wp.array(dtype=wp.int32),
    rebuild: wp.array(dtype=wp.int32),
    bin_start: wp.array(dtype=wp.int32),
    bin_count: wp.array(dtype=wp.int32),
    bin_atoms: wp.array(dtype=wp.int32),
):
    s = wp.tid()
    if rebuild[s] == 0:
        return
    nb = nbins[s]
    b0 = bin_offset[s]
    b1 = b0 + nb[0] * nb[1] * nb[2]
    for b in range(b0, b1):
        bin_count[b] = 0
    for i in range(ptr[s], ptr[s + 1]):
        bin_count[atom_cell[i]] += 1
    run = ptr[s]
    for b in range(b0, b1):
        bin_start[b] = run
        run += bin_count[b]
        bin_count[b] = 0
    for i in range(ptr[s], ptr[s + 1]):
        c = atom_cell[i]
        bin_atoms[bin_start[c] + bin_count[c]] = i
        bin_count[c] += 1


# The same bin tables from parallel kernels (GPUs). A single thread sorting a 32,000-atom
# system walks its atoms three times in dependent global-memory steps: milliseconds per
# rebuild on a GPU. Here counting and filling are one thread per atom (atomics), the scan is
# one thread per system over its bins only, and a last pass (one thread per bin) sorts each
# bin's few atoms by index, so the tables equal nl_sort_bins' bit for bit.
@wp.kernel
def nl_clear_bins(bin_system: wp.array(dtype=wp.int32), rebuild: wp.array(dtype=wp.int32),
                  bin_count: wp.array(dtype=wp.int32)):
    c = wp.tid()
    if rebuild[bin_system[c]] != 0:
        bin_count[c] = 0


@wp.kernel
def nl_count_bins(batch_idx: wp.array(dtype=wp.int32), atom_cell: wp.array(dtype=wp.int32),
                  rebuild: wp.array(dtype=wp.int32), bin_count: wp.array(dtype=wp.int32)):
    i = wp.tid()
    if rebuild[batch_idx[i]] != 0:
        wp.atomic_add(bin_count, atom_cell[i], 1)


@wp.kernel
def nl_scan_bins(ptr: wp.array(dtype=wp.int32), nbins: wp.array(dtype=wp.vec3i), bin_offset: wp.array(dtype=wp.int32),
                 rebuild: wp.array(dtype=wp.int32), bin_start: wp.array(dtype=wp.int32),
                 bin_count: wp.array(dtype=wp.int32)):
    s = wp.tid()
    if rebuild[s] == 0:
        return
    nb = nbins[s]
    b0 = bin_offset[s]
    run = ptr[s]
    for b in range(b0, b0 + nb[0] * nb[1] * nb[2]):
        bin_start[b] = run
        run += bin_count[b]
        bin_count[b] = 0  # refilled by nl_fill_bins


@wp.kernel
def nl_fill_bins(batch_idx: wp.array(dtype=wp.int32), atom_cell: wp.array(dtype=wp.int32),
                 rebuild: wp.array(dtype=wp.int32), bin_start: wp.array(dtype=wp.int32),
                 bin_count: wp.array(dtype=wp.int32), bin_atoms: wp.array(dtype=wp.int32)):
    i = wp.tid()
    if rebuild[batch_idx[i]] != 0:
        c = atom_cell[i]
        slot = wp.atomic_add(bin_count, c, 1)  # any order; nl_order_bins sorts each bin
        bin_atoms[bin_start[c] + slot] = i


@wp.kernel
def nl_order_bins(bin_system: wp.array(dtype=wp.int32), rebuild: wp.array(dtype=wp.int32),
                  bin_start: wp.array(dtype=wp.int32), bin_count: wp.array(dtype=wp.int32),
                  bin_atoms: wp.array(dtype=wp.int32)):
    c = wp.tid()
    if rebuild[bin_system[c]] == 0:
        return
    start = bin_start[c]
    for k in range(1, bin_count[c]):  # insertion sort by atom index (bins hold a few dozen)
        a = bin_atoms[start + k]
        m = k
        while m > 0:
            prev = bin_atoms[start + m - 1]
            if prev <= a:
                break
            bin_atoms[start + m] = prev
            m -= 1
        bin_atoms[start + m] = a


@wp.kernel
def nl_build(
    batch_idx: wp.array(dtype=wp.int32),
    ptr: wp.array(dtype=wp.int32),
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
    half: int,
    rebuild: wp.array(dtype=wp.int32),
    neighbors: wp.array2d(dtype=wp.int32),
    images: wp.array2d(dtype=wp.int32),
    count: wp.array(dtype=wp.int32),
    max_count: wp.array(dtype=wp.int32),
):
    i = wp.tid()
    s = batch_idx[i]
    if rebuild[s] == 0:
        return
    capacity = neighbors.shape[1]
    base = ptr[s]
    h = cell[s]
    nb = nbins[s]
    sr = search[s]
    bi = atom_bin[i]
    wi = atom_wrap[i]
    xi = wrapped[i]
    offset = bin_offset[s]
    p0 = int(pbc[s, 0])
    p1 = int(pbc[s, 1])
    p2 = int(pbc[s, 2])
    # Unshifted neighbors fill the row from the front, periodic images from the back
    # (reversed); both keep the stencil order, and the back part is moved behind the
    # front part at the end, so a row reads: unshifted (stencil order), then images.
    n0 = int(0)
    n1 = int(0)
    fits = int(1)  # 0 once an image does not fit its packing: the row is then marked like an overflow
    for o0 in range(-sr[0], sr[0] + 1):
        for o1 in range(-sr[1], sr[1] + 1):
            for o2 in range(-sr[2], sr[2] + 1):
                valid, cell_index, kb = stencil_bin(bi, o0, o1, o2, nb, p0, p1, p2, half)
                if not valid:
                    continue
                own_bin = o0 == 0 and o1 == 0 and o2 == 0
                xb = xi - image_shift(kb, h)
                c = offset + cell_index
                start = bin_start[c]
                for t in range(start, start + bin_count[c]):
                    j = bin_atoms[t]
                    if is_candidate(i, j, own_bin, half, wrapped, xb, r_list_sq):
                        k = kb + wi - atom_wrap[j]
                        unshifted = k[0] == 0 and k[1] == 0 and k[2] == 0
                        if not unshifted and not image_fits(k):
                            fits = 0
                        if n0 + n1 < capacity:
                            if unshifted:
                                neighbors[i, n0] = j - base
                            elif fits != 0:
                                neighbors[i, capacity - 1 - n1] = -1 - (j - base)
                                images[i, capacity - 1 - n1] = pack_image(k)
                        if unshifted:
                            n0 += 1
                        else:
                            n1 += 1
    n = n0 + n1
    if n <= capacity and fits != 0:
        for m in range(n1 / 2):  # reverse the back part in place ...
            a = capacity - n1 + m
            b = capacity - 1 - m
            ja = neighbors[i, a]
            ka = images[i, a]
            neighbors[i, a] = neighbors[i, b]
            images[i, a] = images[i, b]
            neighbors[i, b] = ja
            images[i, b] = ka
        for m in range(n1):  # ... and move it behind the front part (forward copy is safe)
            neighbors[i, n0 + m] = neighbors[i, capacity - n1 + m]
            images[i, n0 + m] = images[i, capacity - n1 + m]
    if n > capacity or fits == 0:
        # row truncated, or an image beyond IMAGE_LIMIT: marked so that no later width change
        # can make it look valid; the pair kernels walk the bins for this atom
        count[i] = -n
    else:
        count[i] = n
    wp.atomic_max(max_count, 0, n)


def _overload_all() -> None:
    for scalar, vec, mat in ((wp.float32, wp.vec3f, wp.mat33f), (wp.float64, wp.vec3d, wp.mat33d)):
        vec_a, mat_a, sc_a = wp.array(dtype=vec), wp.array(dtype=mat), wp.array(dtype=scalar)
        wp.overload(
            nl_frame,
            {
                "x": vec_a,
                "cell": mat_a,
                "r_list": scalar,
                "list_code": scalar,
                "frame": mat_a,
                "lower": vec_a,
                "width": vec_a,
                "ref_cell": mat_a,
                "ref_cutoff": sc_a,
            },
        )
        wp.overload(nl_bin_atoms, {"x": vec_a, "cell": mat_a, "frame": mat_a, "lower": vec_a, "width": vec_a,
                                   "wrapped": vec_a, "ref_x": vec_a})
        wp.overload(nl_build, {"cell": mat_a, "wrapped": vec_a, "r_list_sq": scalar})


_overload_all()
