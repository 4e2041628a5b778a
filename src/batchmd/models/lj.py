"""Lennard-Jones potential on Warp kernels, matching ``ase.calculators.lj.LennardJones``.

Pair energy (eV) within the cutoff ``rc`` (Å)::

    u(r) = 4 eps [(sigma/r)^12 - (sigma/r)^6] - u_shift,   u_shift = 4 eps [(sigma/rc)^12 - (sigma/rc)^6]

With ``shift=True`` (the default) ``u(rc) = 0``, exactly as
``ase.calculators.lj.LennardJones(sigma, epsilon, rc, smooth=False)``; ``shift=False``
drops ``u_shift`` (forces are the same). Periodic, non-periodic and mixed boundaries,
triclinic cells and cells smaller than twice the cutoff (several images of an atom,
including its own) are handled by the batched neighbor list
(:class:`batchmd.models.neighbors.NeighborList`), which the model maintains by itself in
the batch's ``_nl_*`` fields: the first call builds it, later calls reuse it until an atom
moved more than ``skin / 2``.

Each atom's force, pair energies and pair virials are summed by one thread over its own
neighbor row (a full list on CUDA; on CPU a half list whose reaction forces are added in
thread order), and each system's energy and virial by one thread over its atoms in order:
results are deterministic and bitwise independent of the other systems in the batch and of
the slot a system occupies (see :mod:`batchmd.kernels.lennard_jones`).

Example
-------
>>> import torch
>>> from ase.build import bulk
>>> from batchmd.data import Batch
>>> from batchmd.models.lj import LennardJones
>>> batch = Batch.from_ase([bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)], dtype=torch.float64)
>>> out = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)(batch)
>>> out["energy"].shape, out["forces"].shape, out["stress"].shape
(torch.Size([1, 1]), torch.Size([32, 3]), torch.Size([1, 3, 3]))
"""

from __future__ import annotations

import math

import torch

from batchmd.kernels import lennard_jones as ljk
from batchmd.kernels.reductions import chunk_plan
from batchmd.models.base import Model
from batchmd.models.neighbors import NeighborList
from batchmd.runtime import LaunchCache, WarpViewCache, to_warp, warp_scalar

__all__ = ["LennardJones", "LJ_PRESETS", "LJ_CUTOFF_FACTOR", "mix"]

#: Per-element Lennard-Jones parameters ``symbol: (sigma Å, epsilon eV)``: the defaults of
#: ``LennardJones()`` (argon), ``LennardJones(species=[...])`` and the CLI's ``--model lj``.
#: Noble gases from Ashcroft & Mermin, *Solid State Physics* (1976), Table 20.5 (fits to
#: gas-phase data, Bernardes 1958); argon's sigma 3.405 Å as in Rahman, Phys. Rev. 136,
#: A405 (1964). No other element has honest Lennard-Jones parameters.
LJ_PRESETS = {
    "He": (2.56, 0.00088),
    "Ne": (2.74, 0.0031),
    "Ar": (3.405, 0.0104),
    "Kr": (3.65, 0.0140),
    "Xe": (3.98, 0.0200),
}

#: Default cutoff: this many times the largest sigma (ASE's ``LennardJones`` default ``rc = 3 sigma``).
LJ_CUTOFF_FACTOR = 3.0


def mix(a: tuple[float, float], b: tuple[float, float], rule: str = "lorentz-berthelot") -> tuple[float, float]:
    """Cross parameters ``(sigma_ij, epsilon_ij)`` of species ``a = (sigma_i, epsilon_i)`` and ``b``.

    ``"lorentz-berthelot"`` (default): ``sigma_ij = (sigma_i + sigma_j) / 2``,
    ``epsilon_ij = sqrt(epsilon_i epsilon_j)`` (Lorentz 1881, Berthelot 1898).
    ``"geometric"``: both geometric means (as in OPLS).

    Example
    -------
    >>> mix((3.0, 0.01), (4.0, 0.04))
    (3.5, 0.02)
    """
    if rule == "lorentz-berthelot":
        return 0.5 * (a[0] + b[0]), math.sqrt(a[1] * b[1])
    if rule == "geometric":
        return math.sqrt(a[0] * b[0]), math.sqrt(a[1] * b[1])
    raise ValueError(f"batchmd: LennardJones mixing must be 'lorentz-berthelot' or 'geometric', got {rule!r}")


def _species_table(species) -> dict:
    """``{symbol: (sigma, epsilon)}`` from symbols (presets) or a mapping; checked."""
    from ase.data import atomic_numbers

    if isinstance(species, str):
        species = [species]
    if not isinstance(species, dict):
        species = list(species)
        missing = [sym for sym in species if sym not in LJ_PRESETS]
        if missing:
            raise ValueError(f"batchmd: LennardJones has no preset for {' '.join(missing)} "
                             f"(presets: {' '.join(LJ_PRESETS)}); pass species={{symbol: (sigma, epsilon)}}")
        species = {sym: LJ_PRESETS[sym] for sym in species}
    if not species:
        raise ValueError("batchmd: LennardJones species must name at least one element")
    table = {}
    for sym, pair in species.items():
        if sym not in atomic_numbers or atomic_numbers[sym] == 0:
            raise ValueError(f"batchmd: LennardJones species: unknown element {sym!r}")
        sigma, epsilon = pair
        table[sym] = (_positive(f"sigma of {sym}", sigma), _positive(f"epsilon of {sym}", epsilon))
    return table


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"batchmd: LennardJones {name} must be a positive finite number, got {value!r}")
    return float(value)


class LennardJones(Model):
    """12-6 Lennard-Jones model for batches of systems (energy, forces, stress).

    Three ways to give parameters (the defaults are stated here and in :data:`LJ_PRESETS`):

    - ``LennardJones()``: argon (sigma 3.405 Å, epsilon 0.0104 eV), for Ar only;
    - ``LennardJones(species=["Ar", "Kr"])`` or ``species={"Na": (2.6, 0.005), ...}``:
      per-element parameters (presets of :data:`LJ_PRESETS` by symbol), cross pairs by
      the ``mixing`` rule (Lorentz-Berthelot by default); only those elements are accepted
      (:meth:`check_species`);
    - ``LennardJones(sigma, epsilon)``: one parameter pair for every element (reduced
      units or a deliberate choice; no element check).

    The cutoff defaults to ``3 x`` the largest sigma (:data:`LJ_CUTOFF_FACTOR`, ASE's
    default ``rc``), for the API and the ``batchmd`` command alike.

    Parameters
    ----------
    sigma : float, optional
        Length scale (Å), > 0, for every element (with ``epsilon``).
    epsilon : float, optional
        Well depth (eV), > 0, for every element (with ``sigma``).
    cutoff : float, optional
        Cutoff radius (Å), > 0. Default ``3 * max(sigma)`` (ASE's default ``rc``).
    species : sequence of str or dict, optional
        Elements by symbol (presets) or ``{symbol: (sigma Å, epsilon eV)}``.
    mixing : str
        ``"lorentz-berthelot"`` (default) or ``"geometric"``; see :func:`mix`.
    shift : bool
        Shift pair energies to zero at the cutoff (ASE's ``smooth=False`` behaviour).
    skin : float
        Verlet skin of the neighbor list (Å), >= 0.
    compute_stress : bool
        Compute the per-system stress (adds a per-pair outer product; disable it to save
        ~10% in dynamics that do not need it).
    capacity : int, optional
        Initial neighbor capacity per atom (grows automatically; see
        :class:`~batchmd.models.neighbors.NeighborList`).
    half_list : bool, optional
        Visit each pair once and scatter the reaction force (about 2x fewer pair
        evaluations). Default: True on CPU (Warp runs CPU threads in order, so the scatter
        is deterministic), False on CUDA (one thread per atom over a full list, no atomics).
        True with a batch on a GPU raises ``ValueError``: the scatter would race there.

    Attributes
    ----------
    cutoff : float
        Cutoff (Å).
    needs_neighbors : bool
        True (the model maintains its own neighbor list).
    computes_stress : bool
        Whether ``"stress"`` is returned.
    neighbor_list : NeighborList
        The list it maintains.

    Returns (of ``model(batch)``)
    -----------------------------
    dict with ``"energy"`` [B, 1] eV, ``"forces"`` [N, 3] eV/Å and, when
    ``computes_stress``, ``"stress"`` [B, 3, 3] eV/Å^3 (ASE convention; zeros for a
    system whose cell has zero volume). Fresh tensors on each call.

    Example
    -------
    >>> model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, skin=1.0)
    >>> out = model(batch)            # doctest: +SKIP
    >>> out["forces"].shape           # doctest: +SKIP
    torch.Size([N, 3])
    """

    needs_neighbors = True
    supports_out = True
    supports_skip_finished = True
    supports_cuda_graph = True
    #: EMPTY systems (padding rows of a padded live batch) are never evaluated nor listed, so
    #: inflight refills of any size are written in place (:mod:`batchmd.dynamics.slot_layout`).
    supports_empty_systems = True
    torch_compute = False

    def __init__(
        self,
        sigma: float | None = None,
        epsilon: float | None = None,
        cutoff: float | None = None,
        shift: bool = True,
        skin: float = 1.0,
        compute_stress: bool = True,
        capacity: int | None = None,
        half_list: bool | None = None,
        species=None,
        mixing: str = "lorentz-berthelot",
    ) -> None:
        super().__init__()
        if (sigma is None) != (epsilon is None):
            raise ValueError("batchmd: LennardJones needs both sigma and epsilon (or species=..., or neither: argon)")
        if sigma is not None and species is not None:
            raise ValueError("batchmd: LennardJones takes sigma/epsilon (one pair for every element) or species, not both")
        mix((1.0, 1.0), (1.0, 1.0), mixing)  # checks the rule's name
        self.mixing = mixing
        if sigma is not None:
            self.species = None  # one pair, any element
            self.sigma, self.epsilon = _positive("sigma", sigma), _positive("epsilon", epsilon)
            self.supported_numbers = None
        else:
            from ase.data import atomic_numbers

            self.species = _species_table("Ar" if species is None else species)
            self.sigma = max(p[0] for p in self.species.values())
            self.epsilon = max(p[1] for p in self.species.values())
            self.supported_numbers = frozenset(atomic_numbers[sym] for sym in self.species)
        self.cutoff = _positive("cutoff", LJ_CUTOFF_FACTOR * self.sigma if cutoff is None else cutoff)
        if not isinstance(skin, (int, float)) or not math.isfinite(skin) or skin < 0:
            raise ValueError(f"batchmd: LennardJones skin must be >= 0 (Å), got {skin!r}")
        self.shift = bool(shift)
        self.computes_stress = bool(compute_stress)
        self.neighbor_list = NeighborList(self.cutoff, skin=skin, capacity=capacity, half=half_list)
        self._pair_tables: dict = {}
        self._scratch: dict = {}
        self._parts = None
        # Per-system sums in chunks (batchmd.kernels.reductions.chunk_plan): None = on GPUs for
        # large systems; True/False force it (tests compare both paths on the CPU).
        self.chunked_reductions: bool | None = None
        self._launch = LaunchCache()
        self._out_views = WarpViewCache()

    def extra_repr(self) -> str:
        params = (f"species={self.species}, mixing={self.mixing!r}" if self.species is not None
                  else f"sigma={self.sigma}, epsilon={self.epsilon}")
        return f"{params}, cutoff={self.cutoff}, shift={self.shift}, skin={self.neighbor_list.skin}"

    @property
    def model_name(self) -> str:
        return getattr(self, "_model_name", None) or "lj"

    def model_info(self) -> dict[str, str]:
        """``model``, and the parameters: ``lj_sigma``/``lj_epsilon`` (Å, eV; per element when
        species are set), ``lj_mixing``, ``lj_cutoff`` (Å), ``lj_shift``."""
        if self.species is None:
            sigma, epsilon = f"{self.sigma:g}", f"{self.epsilon:g}"
        else:
            sigma = " ".join(f"{sym}:{p[0]:g}" for sym, p in self.species.items())
            epsilon = " ".join(f"{sym}:{p[1]:g}" for sym, p in self.species.items())
        info = {"model": self.model_name, "lj_sigma": sigma, "lj_epsilon": epsilon, "lj_cutoff": f"{self.cutoff:g}",
                "lj_shift": str(self.shift)}
        if self.species is not None and len(self.species) > 1:
            info["lj_mixing"] = self.mixing
        return info

    def pair_parameters(self) -> dict:
        """``{(symbol_i, symbol_j): (sigma Å, epsilon eV)}`` for every pair of species (mixed)."""
        if self.species is None:
            return {("*", "*"): (self.sigma, self.epsilon)}
        return {(a, b): mix(pa, pb, self.mixing) if a != b else pa
                for a, pa in self.species.items() for b, pb in self.species.items()}

    def _tables(self, dtype, device) -> dict:
        """Warp views of the species map (over Z) and the ``[S*S]`` pair tables, cached per dtype and device."""
        key = (dtype, device)
        hit = self._pair_tables.get(key)
        if hit is not None:
            return hit
        from ase.data import atomic_numbers

        species_of = torch.zeros(119, dtype=torch.int32)
        if self.species is None:
            pairs = [(self.sigma, self.epsilon)]
        else:
            symbols = list(self.species)
            for k, sym in enumerate(symbols):
                species_of[atomic_numbers[sym]] = k
            table = self.pair_parameters()
            pairs = [table[(a, b)] for a in symbols for b in symbols]
        shifts = []
        for sigma, epsilon in pairs:
            c6 = (sigma / self.cutoff) ** 6
            shifts.append(4.0 * epsilon * (c6 * c6 - c6) if self.shift else 0.0)
        t = {
            "species_of": species_of.to(device),
            "sigma_sq": torch.tensor([p[0] ** 2 for p in pairs], dtype=dtype, device=device),
            "eps4": torch.tensor([4.0 * p[1] for p in pairs], dtype=dtype, device=device),
            "eps24": torch.tensor([24.0 * p[1] for p in pairs], dtype=dtype, device=device),
            "shift": torch.tensor(shifts, dtype=dtype, device=device),
        }
        hit = {"t": t, "num_species": 1 if self.species is None else len(self.species),
               **{name: to_warp(value) for name, value in t.items()}}
        self._pair_tables[key] = hit
        return hit

    def _output_buffers(self, n: int, b: int, dtype: torch.dtype, device: torch.device) -> dict:
        """Persistent per-atom/per-system buffers and their Warp views, reused while the shapes hold."""
        key = (n, b, dtype, device)
        if self._scratch.get("key") != key:
            t = {
                "forces": torch.zeros(n, 3, dtype=dtype, device=device),
                "energy": torch.zeros(b, 1, dtype=dtype, device=device),
                "stress": torch.zeros(b, 3, 3, dtype=dtype, device=device),
                "atom_energy": torch.zeros(n, dtype=dtype, device=device),
                "atom_virial": torch.zeros(n, 3, 3, dtype=dtype, device=device),
                "no_status": torch.zeros(1, dtype=torch.int32, device=device),
            }
            w = {
                "forces": to_warp(t["forces"], vector=True),
                "energy": to_warp(t["energy"].view(b)),
                "stress": to_warp(t["stress"], matrix=True),
                "atom_energy": to_warp(t["atom_energy"]),
                "atom_virial": to_warp(t["atom_virial"], matrix=True),
                "no_status": to_warp(t["no_status"]),
            }
            self._scratch = {"key": key, "t": t, "w": w}
        return self._scratch

    def systems_replaced(self, batch, systems: torch.Tensor) -> None:
        """The loop wrote new systems into slots ``systems`` in place: rebuild their neighbor lists.

        See ``NeighborList.systems_replaced`` (:mod:`batchmd.models.neighbors`).
        """
        self.neighbor_list.systems_replaced(batch, systems)

    def between_graph_chunks(self, batch) -> bool:
        """Called by the dynamics loop before a CUDA-graph chunk: grow an overflowed neighbor list.

        Returns True when the next chunk must run eagerly (the list needs host setup, e.g.
        new bin grids after an in-place refill), so that the loop captures again after it.
        See ``NeighborList.grow_if_overflowed`` and ``needs_setup`` (:mod:`batchmd.models.neighbors`).
        """
        self.neighbor_list.grow_if_overflowed(batch)
        return self.neighbor_list.needs_setup(batch)

    def _reduction_chunks(self, max_atoms: int, b: int, dtype: torch.dtype, device: torch.device):
        """Chunk size for the per-system sums (0: one thread walks each system) and the partial-sum buffers.

        The rule is :func:`batchmd.kernels.reductions.chunk_plan`; the buffers grow only, so
        their Warp views and recorded launches survive refills.
        """
        chunk, count = chunk_plan(max_atoms, device, self.chunked_reductions)
        key = (dtype, device)
        parts = self._parts
        if parts is None or parts["key"] != key or parts["rows"] < b or parts["cols"] < count:
            rows = max(b, int(1.5 * parts["rows"]) if parts is not None and parts["key"] == key else b, 1)
            cols = max(count, parts["cols"] if parts is not None and parts["key"] == key else 1)
            energy = torch.zeros(rows, cols, dtype=dtype, device=device)
            virial = torch.zeros(rows, cols, 3, 3, dtype=dtype, device=device)
            parts = {"key": key, "rows": rows, "cols": cols, "t": (energy, virial),
                     "energy": to_warp(energy), "virial": to_warp(virial, matrix=True)}
            self._parts = parts
        return chunk, {"energy": parts["energy"], "virial": parts["virial"], "count": count}

    def _targets(self, out: dict, n: int, b: int, dtype, device) -> tuple[dict, dict]:
        """Caller-owned output tensors (checked) and their cached Warp views."""
        shapes = {"forces": (n, 3), "energy": (b, 1), "stress": (b, 3, 3)}
        t, w = {}, {}
        for name, shape in shapes.items():
            tensor = out.get(name)
            if tensor is None:
                if name == "stress":
                    continue  # no stress asked for: not computed (saves ~15% of the pair work)
                raise ValueError(f"LennardJones: out[{name!r}] is required")
            if tuple(tensor.shape) != shape or tensor.dtype != dtype or tensor.device != device or not tensor.is_contiguous():
                raise ValueError(f"LennardJones: out[{name!r}] must be a contiguous {dtype} tensor of shape {list(shape)} "
                                 f"on {device}, got {tensor.dtype} {list(tensor.shape)}")
            t[name] = tensor
            flat = tensor.view(b) if name == "energy" else tensor
            w[name] = self._out_views(name, flat, vector=name == "forces", matrix=name == "stress")
        return t, w

    def forward(self, batch, out: dict | None = None, skip_finished: bool = False) -> dict[str, torch.Tensor]:
        """Energies (eV), forces (eV/Å) and stress (eV/Å^3) of every system of ``batch``.

        Parameters
        ----------
        batch : Batch
            The systems.
        out : dict, optional
            Preallocated ``"forces"`` [N,3], ``"energy"`` [B,1] and, optionally,
            ``"stress"`` [B,3,3] tensors to write into; they are returned. Stress is
            computed only when ``out`` holds a ``"stress"`` tensor (and the model computes
            stress). The dynamics loop passes the batch's own fields, so a step allocates
            nothing. Without ``out``, fresh tensors are returned.
        skip_finished : bool
            Leave ``out`` untouched for systems whose int32 ``status`` field is neither
            ACTIVE nor PENDING (see :class:`~batchmd.dynamics.SystemStatus`): they no longer
            move, so their last forces, energy and stress still hold. Needs ``out``. The
            dynamics loop turns it on (:attr:`supports_skip_finished`). Without it, systems
            whose ``status`` is EMPTY (the padding of a padded live batch, see
            :mod:`batchmd.dynamics.slot_layout`) are still skipped.
        """
        status = None
        if skip_finished:
            if out is None:
                raise ValueError("LennardJones: skip_finished needs out= (the outputs kept for finished systems)")
            status = batch["status"] if batch.has_field("status") else None
            if status is None or status.dtype != torch.int32 or tuple(status.shape) != (batch.num_graphs,):
                raise ValueError("LennardJones: skip_finished needs an int32 'status' system field [B]")
        nl = self.neighbor_list
        v = nl.update(batch)
        n, b, device, dtype = batch.num_nodes, batch.num_graphs, batch.device, batch.dtype
        T = warp_scalar(dtype)
        buf = self._output_buffers(n, b, dtype, device)
        t, w = dict(buf["t"]), dict(buf["w"])
        if out is not None:
            ot, ow = self._targets(out, n, b, dtype, device)
            t.update(ot)
            w.update(ow)
        half = int(nl.half)
        skip = int(status is not None)
        if not skip and batch.has_field("status"):
            padded = batch["status"]  # skip EMPTY systems (padding of a padded live batch) only
            if padded.dtype == torch.int32 and tuple(padded.shape) == (b,):
                status, skip = padded, 2
        w_status = self._out_views("status", status) if skip else buf["w"]["no_status"]
        launch, sc = self._launch, self._launch.scalar
        if half:  # reaction forces are added into forces: clear those about to be computed
            launch(ljk.lj_zero_forces, n, [v["batch_idx"], w_status, skip, w["forces"]], device, dtype)
        want = int(self.computes_stress and (out is None or "stress" in out))
        tables = self._tables(dtype, device)
        numbers = batch.atomic_numbers
        if numbers.dtype != torch.int64:
            raise ValueError(f"LennardJones: atomic_numbers must be int64, got {numbers.dtype}")
        launch(ljk.lj_atoms, n, [
            v["x"], v["batch_idx"], v["ptr"], v["neighbors"], v["images"], v["count"],
            sc("cutoff_sq", T, self.cutoff**2), self._out_views("numbers", numbers), tables["species_of"],
            tables["num_species"], tables["sigma_sq"], tables["eps4"], tables["eps24"], tables["shift"],
            want, half, w_status, skip,
            v["cell"], v["pbc"], v["nbins"], v["bin_offset"], v["search"], v["atom_bin"], v["atom_wrap"],
            v["bin_start"], v["bin_count"], v["bin_atoms"], v["wrapped"], sc("r_list_sq", T, nl.r_list**2),
            w["forces"], w["atom_energy"], w["atom_virial"],
        ], device, dtype)
        chunk, parts = self._reduction_chunks(nl.max_system_atoms, b, dtype, device)
        reduce_args = [v["ptr"], v["cell"], w["atom_energy"], w["atom_virial"], want, w_status, skip, chunk,
                       parts["energy"], parts["virial"]]
        if chunk:
            launch(ljk.lj_system_chunks, (b, parts["count"]), reduce_args, device, dtype)
        launch(ljk.lj_systems, b, reduce_args + [w["energy"], w["stress"]], device, dtype)
        if out is not None:
            return {name: t[name] for name in (("energy", "forces", "stress") if want else ("energy", "forces"))}
        result = {"energy": t["energy"].clone(), "forces": t["forces"].clone()}
        if want:
            result["stress"] = t["stress"].clone()
        return result
