"""NEB forces of many bands at once: :class:`NEBForces`, a model over *band systems*.

A band system is one system of a live batch whose atoms are the moving images of one
nudged elastic band, concatenated (``n_moving x N`` atoms, image by image; see
:mod:`batchmd.neb.bands`). :class:`NEBForces` wraps any batchmd model (``inner``):

1. it re-segments the band batch into *image systems* (each moving image its own system,
   with the band's cell and pbc; same position tensor, no copy) and evaluates ``inner``
   on all images of all bands in ONE call;
2. from the image energies and forces (FixAtoms applied, as ASE's ``image.get_forces()``),
   the endpoint energies stored with the band, and the neighbouring images' positions, it
   computes the NEB force of every image as ``ase.mep.NEB.get_forces`` does for the band's
   method (``aseneb``, ``improvedtangent``, ``eb``), spring constant ``k`` and climbing
   image -- vectorised in torch over all bands (per-row and per-image index tensors, no
   Python loop over bands); ``spline`` and ``string`` bands take their tangents (and
   ``spline`` its spring force) from ASE's own spline code per band on the host, and
   string bands are re-equispaced after each step (:mod:`batchmd.neb.splines`);
3. it returns the NEB forces as the band system's forces and the band's highest interior
   image energy (ASE's ``NEB.get_potential_energy()``) as its energy, so any batchmd
   optimizer (FIRE, LBFGS) optimizes a band exactly as ASE's optimizer optimizes an
   ``NEB`` object (one vector of ``n_moving x N`` rows: FIRE's power and norms, LBFGS's
   history and step scaling, and ``fmax`` over the whole band).

Image energies (eV) and the unconstrained image forces (eV/Å) are written into the band
batch's own fields ``neb_image_energy`` / ``neb_true_forces`` (atom level; every row of an
image holds its image's energy), so results leave the loop with their band.

Source: ``ase.mep.neb`` (ASE 3.29: ``BaseNEB.get_forces``, ``ASENEBMethod``,
``ImprovedTangentMethod``, ``FullSpringMethod``; Henkelman and Jónsson, J. Chem. Phys.
113, 9978 (2000) for the improved tangent; Henkelman, Uberuaga and Jónsson, ibid. 9901
for the climbing image). Minimum-image spring vectors as ``ase.geometry.find_mic``.
"""

from __future__ import annotations

import itertools

import torch

from batchmd.models.base import Model
from batchmd.neb.splines import SplineBands
from batchmd.runtime import torch_threads

__all__ = ["NEBForces", "METHODS", "method_code", "minimum_image"]

#: NEB methods implemented, by code (the int32 system field ``neb_method``).
METHODS = ("aseneb", "improvedtangent", "eb", "spline", "string")
#: Image ``system_id`` = band ``system_id`` x stride + image index (1 .. n_moving).
_IMAGE_ID_STRIDE = 100_000


def method_code(method: str) -> int:
    """The int code of an NEB method name (``ValueError`` for an unknown one)."""
    if isinstance(method, str) and method in METHODS:
        return METHODS.index(method)
    raise ValueError(f"batchmd.neb: unknown NEB method {method!r}; use one of {', '.join(METHODS)}")


def minimum_image(v: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, row_system: torch.Tensor | None = None,
                  kinds: tuple[bool, bool] | None = None) -> torch.Tensor:
    """Minimum-image vectors, row by row (``ase.geometry.find_mic``).

    Parameters
    ----------
    v : torch.Tensor
        ``[R, 3]`` displacement vectors, Å.
    cell : torch.Tensor
        ``[S, 3, 3]`` cells (rows are cell vectors), Å: one per system, or one per row when
        ``row_system`` is None.
    pbc : torch.Tensor
        ``[S, 3]`` bool periodic directions (a zero cell vector counts as non-periodic).
    row_system : torch.Tensor, optional
        ``[R]`` the system of each row.
    kinds : (bool, bool), optional
        ``(any periodic system, any skewed periodic cell)`` when the caller knows them
        (:func:`cell_kinds`; saves two host synchronisations per call on a GPU).

    Returns
    -------
    torch.Tensor
        ``[R, 3]``: ``v`` plus the lattice vector that makes it shortest (periodic
        directions only; rows of systems without periodicity are returned as given).
        Fractional wrapping into [-1/2, 1/2); for skewed cells, a search over the 27
        neighbouring shifts follows (ASE: naive wrap when safe, else a Minkowski-reduced
        search); the unshifted vector wins ties.
    """
    if row_system is None:
        row_system = torch.arange(v.shape[0], device=v.device)
    periodic = pbc & (cell.abs().sum(-1) > 0)  # [S, 3]
    any_periodic, any_skewed = cell_kinds(cell, pbc) if kinds is None else kinds
    if not any_periodic:
        return v
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(cell)
    full = torch.where((cell.abs().sum(-1, keepdim=True) > 0), cell, eye)  # complete open directions
    inv = torch.linalg.inv(full)  # [S, 3, 3]: frac = v @ inv
    per_row = periodic[row_system]
    frac = torch.bmm(v.unsqueeze(1), inv[row_system]).squeeze(1)
    frac = torch.where(per_row, frac - torch.floor(frac + 0.5), frac)
    wrapped = torch.bmm(frac.unsqueeze(1), full[row_system]).squeeze(1)
    out = torch.where(per_row.any(-1, keepdim=True), wrapped, v)
    if any_skewed:
        off = full - torch.diag_embed(torch.diagonal(full, dim1=1, dim2=2))
        skewed = (off.abs().amax((1, 2)) > 0) & periodic.any(-1)  # [S]
        rows = skewed[row_system].nonzero().reshape(-1)
        sys_r = row_system[rows]
        shifts = torch.tensor([s for s in itertools.product((0, -1, 1), repeat=3)], dtype=v.dtype, device=v.device)
        shifts = shifts.unsqueeze(0) * periodic[sys_r].to(v.dtype).unsqueeze(1)  # [r, 27, 3]
        cand = out[rows].unsqueeze(1) + torch.bmm(shifts, full[sys_r])
        best = (cand * cand).sum(-1).argmin(1)
        out = out.clone()
        out[rows] = cand[torch.arange(rows.shape[0], device=v.device), best]
    return out


def cell_kinds(cell: torch.Tensor, pbc: torch.Tensor) -> tuple[bool, bool]:
    """``(any system periodic, any periodic system with a non-diagonal cell)`` (one host read)."""
    periodic = pbc & (cell.abs().sum(-1) > 0)
    off = cell - torch.diag_embed(torch.diagonal(cell, dim1=1, dim2=2))
    skewed = (off.abs().amax((1, 2)) > 0) & periodic.any(-1)
    flags = torch.stack([periodic.any(), skewed.any()]).tolist()
    return bool(flags[0]), bool(flags[1])


class _Layout:
    """Index tensors of one band batch layout (rebuilt when the layout changes)."""

    def __init__(self, batch) -> None:
        dev = batch.device
        ptr = batch.ptr.long().tolist()
        n_moving = batch["neb_n_moving"].reshape(-1).long().tolist()
        b = batch.num_graphs
        image_starts, image_band, image_j = [], [], []
        for s in range(b):
            m = n_moving[s]
            n = (ptr[s + 1] - ptr[s]) // m if m > 0 else 0
            for j in range(m):
                image_starts.append(ptr[s] + j * n)
                image_band.append(s)
                image_j.append(j + 1)  # ASE's image index (0 is the initial endpoint)
        self.num_images = len(image_band)
        self.ptr_ref = batch.ptr
        self.image_ptr = torch.tensor(image_starts + [ptr[-1]], dtype=torch.int64, device=dev)
        self.image_band = torch.tensor(image_band, dtype=torch.int64, device=dev)
        self.image_j = torch.tensor(image_j, dtype=torch.int64, device=dev)
        counts = self.image_ptr[1:] - self.image_ptr[:-1]
        self.row_image = torch.repeat_interleave(torch.arange(self.num_images, device=dev), counts)
        self.row_band = batch.batch_idx.long()
        rows = torch.arange(batch.num_nodes, device=dev)
        n_atoms = counts[self.row_image]
        j_row = self.image_j[self.row_image]
        m_row = torch.tensor(n_moving, dtype=torch.int64, device=dev)[self.row_band]
        self.first_row = j_row == 1
        self.last_row = j_row == m_row
        self.prev_row = torch.where(self.first_row, rows, rows - n_atoms)
        self.next_row = torch.where(self.last_row, rows, rows + n_atoms)
        first_image = self.image_j == 1
        last_image = self.image_j == torch.tensor(n_moving, dtype=torch.int64, device=dev)[self.image_band]
        idx = torch.arange(self.num_images, device=dev)
        self.first_image, self.last_image = first_image, last_image
        self.prev_image = torch.where(first_image, idx, idx - 1)
        self.next_image = torch.where(last_image, idx, idx + 1)
        self.m_max = max(n_moving) if n_moving else 0
        self.pad_index = self.image_band * max(self.m_max, 1) + (self.image_j - 1)
        self.batch = None  # the image Batch, built on first use
        self.kinds = cell_kinds(batch.cell, batch.pbc)  # the cells are fixed during an NEB
        # spline/string bands (host-side, batchmd.neb.splines): their rows, methods and cache keys
        self.n_moving = n_moving
        self.band_rows = [(ptr[s], ptr[s + 1]) for s in range(b)]
        self.methods = batch["neb_method"].reshape(-1).tolist()
        keys = batch["input_index"].reshape(-1).tolist() if batch.has_field("input_index") else list(range(b))
        self.band_keys = keys
        self.spline_bands = [s for s in range(b) if self.methods[s] in (3, 4) and n_moving[s] > 0]
        self.string_bands = [s for s in self.spline_bands if self.methods[s] == 4]


class NEBForces(Model):
    """A batchmd model over band systems: NEB forces of every image of every band (see the module docstring).

    Parameters
    ----------
    inner : Model
        The potential evaluated on the images (``inner(batch) -> {"energy", "forces"}``),
        e.g. ``load_model("emt")``, :class:`~batchmd.models.lj.LennardJones`, SevenNet-0.

    Notes
    -----
    Per-band parameters are system fields of the band systems, set when a band is built
    (:func:`batchmd.neb.bands.band_data`): ``neb_k`` (eV/Å^2), ``neb_climb`` (0/1),
    ``neb_method`` (code into :data:`METHODS`), ``neb_n_moving``, ``neb_e_initial`` /
    ``neb_e_final`` (endpoint energies, eV), ``neb_eqlength`` (Å, for ``eb``); atom fields
    ``neb_initial`` / ``neb_final`` (each row: its atom's endpoint positions, Å).

    Only bands whose status is ACTIVE or PENDING are evaluated; the others keep their
    forces and energy (they no longer move). A band whose image the inner model cannot
    evaluate (non-finite output, a calculator error) gets NaN forces and fails alone.

    Returns ``{"energy": [B, 1] (the band's highest interior image energy, eV),
    "forces": [N, 3] (NEB forces, eV/Å)}``.
    """

    supports_out = False
    supports_skip_finished = False
    supports_cuda_graph = False
    supports_empty_systems = False
    computes_stress = False
    cutoff = None
    needs_neighbors = False

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner
        self.torch_compute = getattr(inner, "torch_compute", True)
        self.supported_numbers = getattr(inner, "supported_numbers", None)
        self._layout = None
        self._fixed_cache = {}
        self._splines = SplineBands()

    @property
    def model_name(self) -> str:
        return f"NEB[{getattr(self.inner, 'model_name', type(self.inner).__name__)}]"

    def model_info(self) -> dict[str, str]:
        info = dict(self.inner.model_info()) if hasattr(self.inner, "model_info") else {}
        info["model"] = getattr(self.inner, "model_name", type(self.inner).__name__)
        return info

    def check_species(self, numbers) -> None:
        if hasattr(self.inner, "check_species"):
            self.inner.check_species(numbers)

    def systems_replaced(self, batch, systems) -> None:
        """In-place refill: the layout of the band batch may have changed; rebuild it at the next call."""
        self._layout = None

    def _get_layout(self, batch) -> _Layout:
        lay = self._layout
        if lay is None or lay.ptr_ref is not batch.ptr or lay.row_band.shape[0] != batch.num_nodes:
            lay = self._layout = _Layout(batch)
            self._splines.prune(lay.band_keys[s] for s in lay.spline_bands)
        return lay

    def _image_batch(self, batch, lay: _Layout):
        """The image systems over the band batch's positions (persistent, so inner neighbor lists survive)."""
        from batchmd.data import Batch

        names = ("positions", "atomic_numbers", "atomic_masses", "cell", "pbc")
        img = lay.batch
        if img is None:
            specs = batch.specs
            fields = {"positions": batch.positions, "atomic_numbers": batch.atomic_numbers,
                      "atomic_masses": batch.atomic_masses, "cell": batch.cell[lay.image_band].contiguous(),
                      "pbc": batch.pbc[lay.image_band].contiguous()}
            img = Batch(fields, {n: specs[n] for n in names}, lay.image_ptr, batch_idx=lay.row_image)
            img.set_field("status", torch.zeros(lay.num_images, dtype=torch.int32, device=batch.device), "system")
            if batch.has_field("system_id"):  # a stable identity per image (per-system calculators key on it)
                sid = batch["system_id"].reshape(-1).long()[lay.image_band] * _IMAGE_ID_STRIDE + lay.image_j
                img.set_field("system_id", sid.reshape(-1, 1).contiguous(), "system")
            lay.batch = img
        elif img.positions is not batch.positions:
            img.set_field("positions", batch.positions)
        return img

    def forward(self, batch) -> dict[str, torch.Tensor]:
        from batchmd.dynamics.status import SystemStatus

        lay = self._get_layout(batch)
        dtype, dev = batch.dtype, batch.device
        b = batch.num_graphs
        if "status" in batch.fields:
            band_status = batch["status"].reshape(-1)
            live = (band_status == int(SystemStatus.ACTIVE)) | (band_status == int(SystemStatus.PENDING))
        else:
            live = torch.ones(b, dtype=torch.bool, device=dev)
        if lay.string_bands:  # ASE's NEB.set_positions -> StringMethod.adjust_positions after a step
            self._splines.adjust(batch, lay, live)
        img = self._image_batch(batch, lay)
        img["status"].copy_(torch.where(live[lay.image_band], int(SystemStatus.ACTIVE),
                                        int(SystemStatus.EMPTY)).to(torch.int32))
        out = self.inner(img)
        energy = out["energy"].reshape(-1).to(dtype)
        true_forces = out["forces"].to(dtype)
        if batch.has_field("fixed"):
            forces = torch.where(batch["fixed"].reshape(-1, 1), torch.zeros((), dtype=dtype, device=dev), true_forces)
        else:
            forces = true_forces
        # small per-row bookkeeping: on a CPU, OpenMP wake-ups cost more than they save (~30x here)
        with torch_threads(1 if dev.type == "cpu" else None):
            neb, emax = self._neb_forces(batch, lay, energy, forces, live)
        live_rows = live[lay.row_band].unsqueeze(-1)
        old_f = batch.forces if batch.forces is not None and batch.forces.shape == neb.shape else torch.zeros_like(neb)
        old_e = batch.energies.reshape(-1) if batch.energies is not None and batch.energies.numel() == b \
            else torch.zeros(b, dtype=dtype, device=dev)
        neb = torch.where(live_rows, neb, old_f)
        emax = torch.where(live, emax, old_e)
        row_energy = energy[lay.row_image].unsqueeze(-1)
        for name, value in (("neb_image_energy", row_energy), ("neb_true_forces", true_forces)):
            if batch.has_field(name) and batch[name].shape == value.shape:
                batch[name].copy_(torch.where(live_rows, value, batch[name]))
        return {"energy": emax.reshape(b, 1), "forces": neb}

    def _neb_forces(self, batch, lay: _Layout, energy: torch.Tensor, forces: torch.Tensor, live: torch.Tensor):
        """NEB forces [N, 3] and the highest interior energy [B] (``ase.mep.neb.BaseNEB.get_forces``)."""
        dtype, dev = batch.dtype, batch.device
        b, n_img = batch.num_graphs, lay.num_images
        pos = batch.positions
        left = torch.where(lay.first_row.unsqueeze(-1), batch["neb_initial"], pos[lay.prev_row])
        right = torch.where(lay.last_row.unsqueeze(-1), batch["neb_final"], pos[lay.next_row])
        t1 = minimum_image(pos - left, batch.cell, batch.pbc, lay.row_band, lay.kinds)  # spring1.t: image i-1 -> i
        t2 = minimum_image(right - pos, batch.cell, batch.pbc, lay.row_band, lay.kinds)  # spring2.t: image i -> i+1

        def image_sum(x):  # [N] -> [I]
            return torch.zeros(n_img, dtype=dtype, device=dev).index_add_(0, lay.row_image, x)

        def per_row(x):  # [I] -> [N, 1]
            return x[lay.row_image].unsqueeze(-1)

        nt1 = torch.sqrt(image_sum((t1 * t1).sum(-1)))
        nt2 = torch.sqrt(image_sum((t2 * t2).sum(-1)))
        band = lay.image_band
        k = batch["neb_k"].reshape(-1).to(dtype)[band]
        climb = batch["neb_climb"].reshape(-1).bool()[band]
        method = batch["neb_method"].reshape(-1).long()[band]
        e_prev = torch.where(lay.first_image, batch["neb_e_initial"].reshape(-1).to(dtype)[band],
                             energy[lay.prev_image])
        e_next = torch.where(lay.last_image, batch["neb_e_final"].reshape(-1).to(dtype)[band], energy[lay.next_image])
        # imax: the highest interior image (ASE: 1 + argsort(energies[1:-1])[-1])
        padded = torch.full((b * max(lay.m_max, 1),), -torch.inf, dtype=dtype, device=dev)
        padded[lay.pad_index] = energy
        padded = padded.view(b, max(lay.m_max, 1))
        emax, flipped = padded.flip(1).max(1)  # last of equal maxima, as ASE's argsort(...)[-1]
        imax = (padded.shape[1] - 1 - flipped) + 1
        is_max = lay.image_j == imax[band]
        # --- tangents, per method (ASE's get_tangent)
        up = (e_next > energy) & (energy > e_prev)
        down = (e_next < energy) & (energy < e_prev)
        dvmax = torch.maximum((e_next - energy).abs(), (e_prev - energy).abs())
        dvmin = torch.minimum((e_next - energy).abs(), (e_prev - energy).abs())
        one, zero = torch.ones_like(energy), torch.zeros_like(energy)
        rising = e_next > e_prev
        j = lay.image_j
        ai = imax[band]
        is_ase, is_it, is_eb = method == 0, method == 1, method == 2
        mixed = torch.where(per_row(rising), t2 * per_row(dvmax) + t1 * per_row(dvmin),
                            t2 * per_row(dvmin) + t1 * per_row(dvmax))
        tau_it = torch.where(per_row(up), t2, torch.where(per_row(down), t1, mixed))
        tau_ase = torch.where(per_row(j < ai), t2, torch.where(per_row(j > ai), t1, t1 + t2))
        safe1 = torch.where(nt1 > 0, nt1, one)
        safe2 = torch.where(nt2 > 0, nt2, one)
        tau_eb = t1 / per_row(safe1) + t2 / per_row(safe2)
        tau = torch.where(per_row(is_ase), tau_ase, torch.where(per_row(is_it), tau_it, tau_eb))
        norm = torch.sqrt(image_sum((tau * tau).sum(-1)))
        normalise = ~is_ase  # improvedtangent and eb tangents are unit vectors
        div = torch.where(normalise & (norm > 0), norm, one)
        tau = tau / per_row(div)
        ftan = image_sum((forces * tau).sum(-1))  # tangential_force = vdot(forces[i-1], tangent)
        # --- aseneb
        mag2 = image_sum((tau * tau).sum(-1))
        mag_or_one = torch.where(mag2 != 0, mag2, one)
        factor = tau / per_row(mag_or_one)
        spring_dot = image_sum(((t1 * per_row(k) - t2 * per_row(k)) * tau).sum(-1))
        f_ase = forces - per_row(ftan) * factor - per_row(spring_dot) * factor
        # --- improvedtangent
        f_it = forces - per_row(ftan) * tau + per_row(nt2 * k - nt1 * k) * tau
        # --- eb (full spring)
        eq = batch["neb_eqlength"].reshape(-1).to(dtype)[band]
        f1 = -per_row(nt1 - eq) * t1 / per_row(safe1) * per_row(k)
        f2 = per_row(nt2 - eq) * t2 / per_row(safe2) * per_row(k)
        near = climb & ((j - ai).abs() == 1)
        scale = torch.where(dvmax != 0, dvmin / torch.where(dvmax != 0, dvmax, one), zero)
        springs = torch.where(per_row(near), (f1 + f2) * per_row(scale), f1 + f2)
        f_eb = forces - per_row(ftan) * tau + springs
        neb = torch.where(per_row(is_ase), f_ase, torch.where(per_row(is_it), f_it, f_eb))
        if lay.spline_bands:  # spline / string: tangent from the band's cubic spline (host, batchmd.neb.splines)
            is_spl = per_row(method >= 3)
            tau_s, eta = self._splines.tangents(batch, lay, live)
            tau = torch.where(is_spl, tau_s, tau)
            ftan = torch.where(method >= 3, image_sum((forces * tau_s).sum(-1)), ftan)
            neb = torch.where(is_spl, forces - per_row(ftan) * tau_s + eta, neb)
        # --- climbing image: full force, tangential component inverted
        climbing = climb & is_max
        c_ase = forces - per_row(2 * ftan / mag_or_one) * tau
        c_other = forces - per_row(2 * ftan) * tau
        c = torch.where(per_row(is_ase), c_ase, c_other)
        neb = torch.where(per_row(climbing), c, neb)
        return neb, emax
