"""Live-batch budgets (``max_atoms``, ``max_edges``) chosen for the user.

A :class:`~batchmd.dynamics.SizeAwareSampler` fills the live batch up to an atom budget
(and an edge budget for models with a neighbor list). Too small a budget wastes the
device; too large a one crashes with an out-of-memory error. :func:`choose_budget` picks
it from measurements of the actual model:

- **CUDA: a measured memory model.** The model is evaluated (energy, forces and, if it
  computes it, stress: what a dynamics step asks of it) on a few probe batches built by
  repeating representative systems, from a few hundred atoms upward, doubling until the
  peak reaches a quarter of the free memory (or the model runs out of memory). The peak
  allocation of each call (``torch.cuda.max_memory_allocated``) is fitted by least
  squares to ``base + bytes_per_atom * atoms + bytes_per_edge * edges``
  (:class:`MemoryModel`), and the budget is the largest batch whose predicted peak fits
  ``headroom`` (default 80%) of the memory free at that moment. The fit is cached per
  model, dtype and device (in this process and in ``$BATCHMD_CACHE_DIR`` or
  ``~/.cache/batchmd/budgets.json``), so the probe runs once. Free memory is read at
  every call, so a second process on the same GPU gets a smaller budget.
- **CPU: a throughput probe.** On a CPU nothing runs out of memory first; what matters
  is how many atoms per call the model needs to reach its best rate (atom evaluations per
  second). The probe times evaluations from ~64 atoms up, doubling, and takes the
  smallest size within 10% of the best rate seen (larger batches only lengthen each step,
  and in inflight runs delay every refill).

Edges: when the model declares a ``cutoff`` (Å) (and not ``memory_scales_with = "n_atoms"``),
each representative system's edges are
counted with ASE's neighbor list (``ase.neighborlist.neighbor_list``, a well-kept
implementation; probing is not a hot path), and the edge budget is the atom budget times
the mean edges per atom of those systems, so that a batch that fills both budgets is
exactly at the predicted peak.

Users can still set budgets by hand: pass ``max_atoms``/``max_edges`` to the sampler, or
to :func:`choose_budget` to skip the probe (``source == "user"``). When a run hits an
out-of-memory error anyway, the loop shrinks the live batch and retries the step (see
:mod:`batchmd.dynamics.oom`) and :func:`record_oom` lowers the cached budget.

Example
-------
>>> import torch
>>> from ase.build import bulk
>>> from batchmd.data import AtomicData
>>> from batchmd.dynamics.budget import choose_budget
>>> from batchmd.models.demo import DemoModelWrapper
>>> systems = [AtomicData.from_ase(bulk("Si", cubic=True))]
>>> budget = choose_budget(DemoModelWrapper(), systems, device="cpu", dtype=torch.float64,
...                        max_probe_atoms=128, cache=False)  # doctest: +SKIP
>>> budget.source, budget.max_atoms >= 8                                      # doctest: +SKIP
('throughput', True)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

__all__ = ["Budget", "MemoryModel", "choose_budget", "fit_memory_model", "probe_memory", "probe_throughput",
           "record_oom", "model_key", "clear_cache"]

#: In-process cache: key -> {"memory_model": {...}, "cpu_max_atoms": int, "oom_atoms": int}.
_CACHE: dict[str, dict] = {}


@dataclass(frozen=True)
class MemoryModel:
    """Peak device memory (bytes) of one model evaluation: ``base + per_atom * atoms + per_edge * edges``.

    Attributes
    ----------
    base_bytes, bytes_per_atom, bytes_per_edge : float
        Fitted coefficients (non-negative).
    points : tuple of (atoms, edges, bytes)
        The measurements the fit came from.
    """

    base_bytes: float
    bytes_per_atom: float
    bytes_per_edge: float = 0.0
    points: tuple = ()

    def predict(self, atoms: float, edges: float = 0.0) -> float:
        """Predicted peak bytes of a batch of ``atoms`` atoms and ``edges`` edges."""
        return self.base_bytes + self.bytes_per_atom * atoms + self.bytes_per_edge * edges

    def max_atoms(self, available_bytes: float, edges_per_atom: float = 0.0) -> int:
        """Largest atom count whose predicted peak fits ``available_bytes`` (edges scaling with atoms)."""
        per_atom = self.bytes_per_atom + self.bytes_per_edge * edges_per_atom
        if per_atom <= 0:
            raise ValueError("MemoryModel: the fitted memory does not grow with the batch; probe larger batches")
        return max(0, int((available_bytes - self.base_bytes) // per_atom))


@dataclass(frozen=True)
class Budget:
    """A live-batch budget and where it came from.

    Attributes
    ----------
    max_atoms : int
        Atom budget for :class:`~batchmd.dynamics.SizeAwareSampler`.
    max_edges : int or None
        Edge budget (None when the model has no cutoff or the user gave none).
    source : str
        ``"memory"`` (CUDA memory model), ``"throughput"`` (CPU probe), ``"user"``.
    memory_model : MemoryModel or None
        The fit behind a ``"memory"`` budget.
    details : dict
        Probe numbers (free memory, rates per size, cache hit...), for logs and reports.
    """

    max_atoms: int
    max_edges: int | None
    source: str
    memory_model: MemoryModel | None = None
    details: dict = field(default_factory=dict)

    def sampler_kwargs(self) -> dict:
        """``dict(max_atoms=..., max_edges=...)`` for :class:`~batchmd.dynamics.SizeAwareSampler`."""
        return {"max_atoms": self.max_atoms, "max_edges": self.max_edges}


# ------------------------------------------------------------------------------------ cache
def model_key(model, dtype: torch.dtype, device) -> str:
    """Cache key: the model's ``budget_key`` attribute if it has one, else its class and the
    names, shapes and a checksum of its parameters; plus dtype and device name."""
    device = torch.device(device)
    name = getattr(model, "budget_key", None)
    if name is None:
        digest = hashlib.sha1(type(model).__qualname__.encode())
        if isinstance(model, torch.nn.Module):
            for pname, tensor in list(model.named_parameters()) + list(model.named_buffers()):
                digest.update(f"{pname}{tuple(tensor.shape)}{float(tensor.detach().double().sum()):.12e}".encode())
        name = f"{type(model).__qualname__}-{digest.hexdigest()[:16]}"
    where = device.type
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        where = f"cuda:{props.name}:{props.total_memory}"
    return f"{name}|{str(dtype).replace('torch.', '')}|{where}"


def _cache_path() -> Path:
    root = os.environ.get("BATCHMD_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "batchmd")
    return Path(root) / "budgets.json"


def _load_disk() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _cache_get(key: str, use_disk: bool) -> dict:
    entry = _CACHE.get(key)
    if entry is None and use_disk:
        entry = _load_disk().get(key)
        if entry is not None:
            _CACHE[key] = entry
    return dict(entry or {})


def _cache_put(key: str, entry: dict, use_disk: bool) -> None:
    _CACHE[key] = entry
    if not use_disk:
        return
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load_disk()
        data[key] = entry
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:  # a read-only home must not stop a run
        pass


def clear_cache(disk: bool = False) -> None:
    """Forget cached probes (this process; and the file too when ``disk``)."""
    _CACHE.clear()
    if disk:
        try:
            _cache_path().unlink()
        except OSError:
            pass


def record_oom(model, dtype: torch.dtype, device, atoms: int, edges: int = 0, cache: bool = True) -> None:
    """Remember that ``atoms`` atoms (``edges`` edges) ran out of memory for this model.

    Later :func:`choose_budget` calls cap their budget at 80% of the smallest such size.
    Called by the dynamics loop when it recovers from an out-of-memory error.
    """
    key = model_key(model, dtype, device)
    entry = _cache_get(key, cache)
    entry["oom_atoms"] = int(min(atoms, entry.get("oom_atoms", atoms)))
    _cache_put(key, entry, cache)


# ------------------------------------------------------------------------------------ probes
def _as_data_list(systems) -> list:
    from batchmd.data import AtomicData, Batch

    if isinstance(systems, Batch):
        return systems.to_data_list()
    out = []
    for s in systems:
        out.append(s if isinstance(s, AtomicData) else AtomicData.from_ase(s))
    if not out:
        raise ValueError("choose_budget: give at least one representative system")
    return out


def _edge_cutoff(model) -> float | None:
    """The cutoff (Å) whose edges the budget counts: ``model.cutoff``, or None when the model
    declares ``memory_scales_with = "n_atoms"`` (TorchSim's name for a memory that does not grow
    with neighbors; :class:`~batchmd.models.torchsim.TorchSimModel` passes its model's on)."""
    if getattr(model, "memory_scales_with", None) == "n_atoms":
        return None
    return getattr(model, "cutoff", None)


def _count_edges(data, cutoff: float | None) -> int:
    """Directed edges (i, j, image) within ``cutoff`` Å, by ASE's neighbor list."""
    if not cutoff:
        return 0
    from ase.neighborlist import neighbor_list

    from batchmd.data import Batch

    atoms = Batch.from_data_list([data]).to_ase()[0]
    return int(len(neighbor_list("i", atoms, float(cutoff))))


def _probe_batch(systems: list, sizes: list[int], edges: list[int], target_atoms: int, device, dtype):
    """A batch of ``systems`` repeated in turn until it holds at least ``target_atoms``; (batch, atoms, edges)."""
    from batchmd.data import Batch

    chosen, atoms, n_edges, i = [], 0, 0, 0
    while atoms < target_atoms or not chosen:
        k = i % len(systems)
        chosen.append(systems[k])
        atoms += sizes[k]
        n_edges += edges[k]
        i += 1
    return Batch.from_data_list(chosen, device=device, dtype=dtype), atoms, n_edges


def _evaluate(model, batch) -> None:
    out = model(batch)
    if isinstance(out, dict):  # keep nothing alive past the call
        out.clear()


def _cuda_peak(model, batch) -> float:
    """Peak bytes allocated during one evaluation of ``model`` on ``batch`` (CUDA)."""
    device = batch.device
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _evaluate(model, batch)
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - base)


def fit_memory_model(points: Sequence[tuple[float, float, float]]) -> MemoryModel:
    """Least-squares fit of ``bytes = base + a * atoms + e * edges`` to (atoms, edges, bytes) points.

    Edges are fitted only when they vary independently of atoms (otherwise their cost is
    folded into the per-atom term); coefficients are kept non-negative.

    Raises
    ------
    ValueError
        With fewer than two points of different sizes.
    """
    pts = [(float(a), float(e), float(m)) for a, e, m in points]
    if len({a for a, _, _ in pts}) < 2:
        raise ValueError("fit_memory_model: need measurements at two or more batch sizes")
    a = torch.tensor([[1.0, p[0], p[1]] for p in pts], dtype=torch.float64)
    y = torch.tensor([p[2] for p in pts], dtype=torch.float64)
    ratios = [e / at for at, e, _ in pts]
    # Edges get their own term only when edges per atom vary between the points (>10%).
    use_edges = max(ratios) > 0 and (max(ratios) - min(ratios)) > 0.1 * max(ratios)
    cols = a if use_edges else a[:, :2]
    coef = torch.linalg.lstsq(cols, y.unsqueeze(1)).solution.reshape(-1).tolist()
    if not use_edges:
        coef.append(0.0)
    base, per_atom, per_edge = coef
    if per_edge < 0:  # refit without the edge term
        coef = torch.linalg.lstsq(a[:, :2], y.unsqueeze(1)).solution.reshape(-1).tolist()
        base, per_atom, per_edge = coef[0], coef[1], 0.0
    if base < 0:  # a line through the origin instead
        cols0 = a[:, 1:3] if per_edge > 0 else a[:, 1:2]
        coef = torch.linalg.lstsq(cols0, y.unsqueeze(1)).solution.reshape(-1).tolist()
        base, per_atom, per_edge = 0.0, coef[0], (coef[1] if per_edge > 0 else 0.0)
    per_atom, per_edge = max(per_atom, 0.0), max(per_edge, 0.0)
    # An upper envelope: raise the base so that no measurement lies above the line.
    base += max(0.0, max(m - (base + per_atom * at + per_edge * ed) for at, ed, m in pts))
    return MemoryModel(base, per_atom, per_edge, tuple(pts))


def probe_memory(model, systems, device, dtype: torch.dtype, cutoff: float | None = None,
                 start_atoms: int = 256, max_probe_atoms: int = 1 << 17, free_bytes: float | None = None,
                 measure: Callable | None = None) -> MemoryModel:
    """Measure peak memory on growing probe batches and fit a :class:`MemoryModel`.

    Parameters
    ----------
    model : callable
        ``model(batch)``; evaluated as a dynamics step would (forces included).
    systems : sequence of AtomicData or ase.Atoms, or a Batch
        Representative systems, repeated to build probe batches.
    device, dtype
        Where and in which floating dtype the run will evaluate.
    cutoff : float, optional
        Edge cutoff (Å) for the edge term (default: ``model.cutoff``).
    start_atoms, max_probe_atoms : int
        First probe size and the largest (sizes double in between).
    free_bytes : float, optional
        Free memory (default: ``torch.cuda.mem_get_info``); probing stops once a peak
        exceeds a quarter of it.
    measure : callable, optional
        ``measure(model, batch) -> peak bytes`` (default: CUDA allocator statistics); lets
        tests exercise the fit on a CPU.

    Raises
    ------
    RuntimeError
        If fewer than two sizes could be measured (the smallest already runs out of memory).
    """
    device = torch.device(device)
    measure = measure or _cuda_peak
    data = _as_data_list(systems)
    cutoff = _edge_cutoff(model) if cutoff is None else cutoff
    sizes = [d.num_nodes for d in data]
    edges = [_count_edges(d, cutoff) for d in data]
    if free_bytes is None:
        free_bytes = float(torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else float("inf")
    points, target = [], max(start_atoms, max(sizes))
    while target <= max_probe_atoms:
        batch, atoms, n_edges = _probe_batch(data, sizes, edges, target, device, dtype)
        try:
            peak = measure(model, batch)
        except torch.OutOfMemoryError:
            del batch
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        del batch
        points.append((atoms, n_edges, peak))
        if peak > 0.25 * free_bytes:
            break
        target *= 2
    if len(points) < 2:
        raise RuntimeError(f"probe_memory: measured {len(points)} batch size(s) before running out of memory "
                           f"(from {max(start_atoms, max(sizes))} atoms); set max_atoms by hand")
    return fit_memory_model(points)


def probe_throughput(model, systems, device, dtype: torch.dtype, start_atoms: int = 64,
                     max_probe_atoms: int = 4096, min_seconds: float = 0.2, time_limit: float = 20.0,
                     plateau: float = 0.9) -> tuple[int, list[tuple[int, float]]]:
    """Time evaluations on growing probe batches; returns (chosen atoms, [(atoms, atom-evals/s)]).

    The chosen size is the smallest whose rate is within ``plateau`` of the best. Probing
    stops at ``max_probe_atoms``, when ``time_limit`` seconds have passed, or when two
    sizes in a row fall below ``plateau`` of the best (past the knee).
    """
    device = torch.device(device)
    data = _as_data_list(systems)
    sizes = [d.num_nodes for d in data]
    rates: list[tuple[int, float]] = []
    started = time.perf_counter()
    target, below = max(start_atoms, max(sizes)), 0
    while target <= max_probe_atoms and time.perf_counter() - started < time_limit:
        batch, atoms, _ = _probe_batch(data, sizes, [0] * len(data), target, device, dtype)
        try:
            _evaluate(model, batch)  # warm-up (allocations, lazy initialisation)
            calls, t0 = 0, time.perf_counter()
            while True:
                _evaluate(model, batch)
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= min_seconds or calls >= 50:
                    break
        except torch.OutOfMemoryError:
            break
        rates.append((atoms, atoms * calls / elapsed))
        best = max(r for _, r in rates)
        below = below + 1 if rates[-1][1] < plateau * best else 0
        if below >= 2:
            break
        target *= 2
    if not rates:
        raise RuntimeError("probe_throughput: no probe batch could be evaluated; set max_atoms by hand")
    best = max(r for _, r in rates)
    chosen = min(a for a, r in rates if r >= plateau * best)
    return chosen, rates


# ------------------------------------------------------------------------------------ choice
def choose_budget(model, systems, device=None, dtype: torch.dtype | None = None, *, max_atoms: int | None = None,
                  max_edges: int | None = None, headroom: float = 0.8, cutoff: float | None = None,
                  cache: bool = True, free_bytes: float | None = None, measure: Callable | None = None,
                  max_probe_atoms: int | None = None) -> Budget:
    """Choose ``max_atoms`` / ``max_edges`` for a live batch of ``model`` (see the module docstring).

    Parameters
    ----------
    model : callable
        The model the run will evaluate (``model(batch) -> {"energy", "forces", ...}``).
    systems : sequence of AtomicData or ase.Atoms, or a Batch
        A few representative systems (e.g. the first samples of the dataset). The budget
        is never below the largest of them.
    device, dtype : optional
        Of the run (default: the first system's).
    max_atoms, max_edges : int, optional
        Budgets set by hand: returned as they are (``source="user"``), no probe.
    headroom : float
        Fraction of the free GPU memory the predicted peak may use (0 < headroom <= 1).
    cutoff : float, optional
        Edge cutoff in Å (default ``model.cutoff``; None: no edge budget).
    cache : bool
        Use and update the on-disk cache as well as the in-process one.
    free_bytes, measure : optional
        Free memory and the peak-memory measurement, for tests (see :func:`probe_memory`).
    max_probe_atoms : int, optional
        Largest probe batch (default 131,072 atoms on CUDA, 4,096 on CPU).

    Returns
    -------
    Budget

    Raises
    ------
    ValueError
        For a headroom outside (0, 1] or non-positive hand-set budgets.
    RuntimeError
        If even the smallest probe batch cannot be evaluated.
    """
    if max_atoms is not None:
        if int(max_atoms) <= 0 or (max_edges is not None and int(max_edges) < 0):
            raise ValueError(f"choose_budget: budgets must be positive, got max_atoms={max_atoms}, max_edges={max_edges}")
        return Budget(int(max_atoms), None if max_edges is None else int(max_edges), "user")
    if not 0.0 < headroom <= 1.0:
        raise ValueError(f"choose_budget: headroom must be in (0, 1], got {headroom}")
    data = _as_data_list(systems)
    device = torch.device(device) if device is not None else data[0].device
    dtype = dtype or data[0].dtype
    largest = max(d.num_nodes for d in data)
    cutoff = _edge_cutoff(model) if cutoff is None else cutoff
    key = model_key(model, dtype, device)
    entry = _cache_get(key, cache)
    details: dict = {"key": key}
    use_memory = device.type == "cuda" or measure is not None
    if use_memory:
        if "memory_model" in entry:
            mm = MemoryModel(**{k: (tuple(tuple(p) for p in v) if k == "points" else v)
                                for k, v in entry["memory_model"].items()})
            details["cache_hit"] = True
        else:
            mm = probe_memory(model, data, device, dtype, cutoff=cutoff, free_bytes=free_bytes, measure=measure,
                              max_probe_atoms=max_probe_atoms or (1 << 17))
            entry["memory_model"] = asdict(mm)
            _cache_put(key, entry, cache)
            details["cache_hit"] = False
        if free_bytes is None:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            free_bytes = float(torch.cuda.mem_get_info(device)[0])
        edges = [_count_edges(d, cutoff) for d in data] if cutoff else [0] * len(data)
        epa = sum(edges) / sum(d.num_nodes for d in data)
        atoms = mm.max_atoms(headroom * free_bytes, epa)
        details.update(free_bytes=free_bytes, headroom=headroom, edges_per_atom=epa,
                       predicted_peak=mm.predict(atoms, atoms * epa))
        source = "memory"
    else:
        mm = None
        if "cpu_max_atoms" in entry:
            atoms = int(entry["cpu_max_atoms"])
            details["cache_hit"] = True
        else:
            atoms, rates = probe_throughput(model, data, device, dtype, max_probe_atoms=max_probe_atoms or 4096)
            entry["cpu_max_atoms"] = int(atoms)
            _cache_put(key, entry, cache)
            details.update(cache_hit=False, rates=rates)
        epa = 0.0
        if cutoff:
            edges = [_count_edges(d, cutoff) for d in data]
            epa = sum(edges) / sum(d.num_nodes for d in data)
        source = "throughput"
    if "oom_atoms" in entry:
        atoms = min(atoms, int(0.8 * entry["oom_atoms"]))
        details["oom_atoms"] = entry["oom_atoms"]
    if atoms < largest:
        if source == "memory":
            raise RuntimeError(f"choose_budget: the largest representative system ({largest} atoms) does not fit "
                               f"{headroom:.0%} of the free memory by the fitted model ({atoms} atoms)")
        atoms = largest
    edges_budget = int(math.ceil(atoms * epa)) if cutoff and epa > 0 else None
    return Budget(int(atoms), edges_budget, source, mm, details)
