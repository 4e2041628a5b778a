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

__all__ = ["LennardJones"]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"batchmd: LennardJones {name} must be a positive finite number, got {value!r}")
    return float(value)


class LennardJones(Model):
    """12-6 Lennard-Jones model for batches of systems (energy, forces, stress).

    Parameters
    ----------
    sigma : float
        Length scale (Å), > 0.
    epsilon : float
        Well depth (eV), > 0.
    cutoff : float, optional
        Cutoff radius (Å), > 0. Default ``3 * sigma`` (ASE's default ``rc``).
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
    torch_compute = False

    def __init__(
        self,
        sigma: float = 1.0,
        epsilon: float = 1.0,
        cutoff: float | None = None,
        shift: bool = True,
        skin: float = 1.0,
        compute_stress: bool = True,
        capacity: int | None = None,
        half_list: bool | None = None,
    ) -> None:
        super().__init__()
        self.sigma = _positive("sigma", sigma)
        self.epsilon = _positive("epsilon", epsilon)
        self.cutoff = _positive("cutoff", 3.0 * self.sigma if cutoff is None else cutoff)
        if not isinstance(skin, (int, float)) or not math.isfinite(skin) or skin < 0:
            raise ValueError(f"batchmd: LennardJones skin must be >= 0 (Å), got {skin!r}")
        self.shift = bool(shift)
        self.computes_stress = bool(compute_stress)
        self.neighbor_list = NeighborList(self.cutoff, skin=skin, capacity=capacity, half=half_list)
        c6 = (self.sigma / self.cutoff) ** 6
        self._e_shift = 4.0 * self.epsilon * (c6 * c6 - c6) if self.shift else 0.0
        self._scratch: dict = {}
        self._parts = None
        # Per-system sums in chunks (batchmd.kernels.reductions.chunk_plan): None = on GPUs for
        # large systems; True/False force it (tests compare both paths on the CPU).
        self.chunked_reductions: bool | None = None
        self._launch = LaunchCache()
        self._out_views = WarpViewCache()

    def extra_repr(self) -> str:
        return (f"sigma={self.sigma}, epsilon={self.epsilon}, cutoff={self.cutoff}, shift={self.shift}, "
                f"skin={self.neighbor_list.skin}")

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

    def between_graph_chunks(self, batch) -> None:
        """Called by the dynamics loop between replayed CUDA-graph chunks: grow an overflowed neighbor list.

        See ``NeighborList.grow_if_overflowed`` (:mod:`batchmd.models.neighbors`).
        """
        self.neighbor_list.grow_if_overflowed(batch)

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
            dynamics loop turns it on (:attr:`supports_skip_finished`).
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
        w_status = self._out_views("status", status) if skip else buf["w"]["no_status"]
        launch, sc = self._launch, self._launch.scalar
        if half:  # reaction forces are added into forces: clear those about to be computed
            launch(ljk.lj_zero_forces, n, [v["batch_idx"], w_status, skip, w["forces"]], device, dtype)
        want = int(self.computes_stress and (out is None or "stress" in out))
        launch(ljk.lj_atoms, n, [
            v["x"], v["batch_idx"], v["ptr"], v["neighbors"], v["images"], v["count"],
            sc("cutoff_sq", T, self.cutoff**2), sc("sigma_sq", T, self.sigma**2), sc("eps4", T, 4.0 * self.epsilon),
            sc("eps24", T, 24.0 * self.epsilon), sc("e_shift", T, self._e_shift), want, half, w_status, skip,
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
