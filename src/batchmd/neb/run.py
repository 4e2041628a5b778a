"""``run_bands``: many nudged elastic bands in one inflight-batched run, each optimized as ASE does.

Example
-------
>>> from batchmd.models import load_model
>>> from batchmd.neb import run_bands
>>> results = run_bands([(initial, final)], load_model("emt"), n_images=7, climb=True, fmax=0.05)  # doctest: +SKIP
>>> results[0].barrier_forward, results[0].status                                               # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np
import torch

from batchmd.neb.bands import Band, BandDataset, check_endpoints, interpolate_band
from batchmd.neb.forces import METHODS, NEBForces, method_code
from batchmd.neb.results import BandResult

__all__ = ["run_bands", "prepare_bands", "endpoint_energies"]


def _as_band(item, i: int, defaults: dict) -> tuple:
    """``(Band or None, (initial, final) or None)`` for one input item."""
    from ase import Atoms

    if isinstance(item, Band):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(a, Atoms) for a in item):
        return None, (item[0], item[1])
    if isinstance(item, (tuple, list)) and len(item) >= 3 and all(isinstance(a, Atoms) for a in item):
        return Band(images=list(item), **defaults), None
    raise ValueError(f"band {i}: expected a Band, an (initial, final) pair of ase.Atoms or a list of >= 3 images, "
                     f"got {type(item).__name__}" + (f" of length {len(item)}" if hasattr(item, "__len__") else ""))


def prepare_bands(items: Sequence, *, n_images: int = 7, method: str = "improvedtangent", climb: bool = False,
                  k: float = 0.1, interpolation: str = "linear", mic: bool | None = None,
                  pairs_override: dict | None = None) -> list[Band]:
    """Bands from pairs, image lists or :class:`Band` objects (pairs are interpolated by ASE).

    ``pairs_override``: ``{i: (initial, final)}`` endpoints replacing those of pair ``i``
    (e.g. relaxed endpoints). Raises ``ValueError`` naming the first bad band.
    """
    _check_options(n_images, method, k)
    defaults = {"k": k, "climb": climb, "method": method}
    bands = []
    for i, item in enumerate(items):
        band, pair = _as_band(item, i, defaults)
        where = f"band {i}"
        if pair is not None:
            if pairs_override and i in pairs_override:
                pair = pairs_override[i]
            images = interpolate_band(pair[0], pair[1], n_images, interpolation=interpolation, mic=mic, where=where)
            band = Band(images=images, band_id=i, **defaults)
        else:
            band = Band(images=[a.copy() for a in band.images], k=band.k, climb=band.climb, method=band.method,
                        band_id=i if band.band_id is None else band.band_id, info=dict(band.info))
            if len(band.images) < 3:
                raise ValueError(f"{where}: a band needs at least 3 images (endpoints included), "
                                 f"got {len(band.images)}")
            for j, atoms in enumerate(band.images[1:], start=1):
                check_endpoints(band.images[0], atoms, f"{where} image {j}")
            method_code(band.method)
            _check_options(len(band.images), band.method, band.k)
        bands.append(band)
    return bands


def _check_options(n_images, method, k) -> None:
    method_code(method)
    if isinstance(n_images, bool) or int(n_images) != n_images or n_images < 3:
        raise ValueError(f"batchmd.neb: n_images must be an integer >= 3 (endpoints included), got {n_images!r}")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise ValueError(f"batchmd.neb: k must be a positive spring constant in eV/Å^2, got {k!r}")


def endpoint_energies(bands: Sequence[Band], model, *, device="cpu", dtype=torch.float64,
                      max_atoms: int = 4096) -> list[tuple[float, float]]:
    """Energies (eV) of every band's two endpoints, evaluated by ``model`` in batched calls."""
    from batchmd.data import Batch

    frames = [a for band in bands for a in (band.images[0], band.images[-1])]
    energies = np.full(len(frames), np.nan)
    start = 0
    while start < len(frames):
        stop, atoms = start, 0
        while stop < len(frames) and (stop == start or atoms + len(frames[stop]) <= max_atoms):
            atoms += len(frames[stop])
            stop += 1
        batch = Batch.from_ase(frames[start:stop], dtype=dtype, device=device)
        out = model(batch)
        energies[start:stop] = out["energy"].detach().reshape(-1).to("cpu", torch.float64).numpy()
        start = stop
    return [(float(energies[2 * i]), float(energies[2 * i + 1])) for i in range(len(bands))]


def _relax_endpoints(items, model, fmax, max_steps, device, dtype) -> tuple[dict, dict]:
    """Relax every pair's endpoints in ONE batched FIRE run; ``({i: (ini, fin)}, {i: error})``."""
    from batchmd.ase import relax

    frames, owners = [], []
    for i, item in enumerate(items):
        if isinstance(item, (tuple, list)) and len(item) == 2:
            check_endpoints(item[0], item[1], f"band {i}")
            frames += [item[0], item[1]]
            owners.append(i)
    if not frames:
        return {}, {}
    out = relax(frames, model, fmax=fmax, max_steps=max_steps, device=device, dtype=dtype)
    relaxed, errors = {}, {}
    for n, i in enumerate(owners):
        ini, fin = out[2 * n], out[2 * n + 1]
        bad = [name for name, a in (("initial", ini), ("final", fin)) if a.info.get("status") != "converged"]
        if bad:
            errors[i] = f"endpoint relaxation did not converge ({', '.join(bad)}: {ini.info.get('status')}, " \
                        f"{fin.info.get('status')})"
        ini, fin = ini.copy(), fin.copy()
        for a, src in ((ini, items[i][0]), (fin, items[i][1])):
            a.set_constraint(src.constraints)
            a.calc = None
            for key in list(a.info):
                if key not in src.info:
                    del a.info[key]
        relaxed[i] = (ini, fin)
    return relaxed, errors


class _BandSink:
    """Graduated band systems -> :class:`BandResult` (in the order they graduate)."""

    def __init__(self, bands: dict, energies: dict, on_band: Callable | None, results: dict) -> None:
        self.bands, self.energies, self.on_band, self.results = bands, energies, on_band, results

    def write(self, batch) -> None:
        from batchmd.dynamics.status import SystemStatus, failure_text

        if batch.num_graphs == 0:
            return
        batch = batch.to("cpu")
        ptr = batch.ptr.tolist()
        get = lambda name: batch[name].reshape(batch.num_graphs, -1)[:, 0].tolist()  # noqa: E731
        status, steps, index = get("status"), get("n_steps"), get("input_index")
        fmax = get("fmax") if batch.has_field("fmax") else [float("nan")] * batch.num_graphs
        failure = get("failure") if batch.has_field("failure") else [0] * batch.num_graphs
        pos = batch.positions.to(torch.float64).numpy()
        e_img = batch["neb_image_energy"].to(torch.float64).numpy()[:, 0]
        f_img = batch["neb_true_forces"].to(torch.float64).numpy()
        for s in range(batch.num_graphs):
            i = int(index[s])
            band = self.bands[i]
            lo, hi = ptr[s], ptr[s + 1]
            n = len(band.images[0])
            m = len(band.images) - 2
            code = int(status[s])
            name = {int(SystemStatus.CONVERGED): "converged", int(SystemStatus.OUT_OF_STEPS): "out_of_steps",
                    int(SystemStatus.FAILED): "failed"}.get(code, "failed")
            e0, e1 = self.energies[i]
            energies = [e0] + [float(e_img[lo + j * n]) for j in range(m)] + [e1]
            images = []
            from ase.calculators.singlepoint import SinglePointCalculator

            for j, src in enumerate(band.images):
                atoms = src.copy()
                if 0 < j < len(band.images) - 1:
                    atoms.positions = pos[lo + (j - 1) * n: lo + j * n]
                    forces = f_img[lo + (j - 1) * n: lo + j * n]
                    if np.isfinite(energies[j]) and np.isfinite(forces).all():
                        atoms.calc = SinglePointCalculator(atoms, energy=energies[j], forces=forces.copy())
                elif np.isfinite(energies[j]):  # endpoints: the energy evaluated once, before the run
                    atoms.calc = SinglePointCalculator(atoms, energy=energies[j])
                atoms.info["neb_band"] = str(band.band_id)
                atoms.info["neb_image"] = j
                images.append(atoms)
            error = None
            if name == "failed":
                error = failure_text(int(failure[s]), int(steps[s])) or "failed"
            elif name == "out_of_steps":
                error = f"did not converge in {int(steps[s])} steps (fmax {float(fmax[s]):.4g} eV/Å)"
            res = BandResult(band.band_id, i, images, np.asarray(energies), name, int(steps[s]), float(fmax[s]),
                             error, _params(band))
            self.results[i] = res
            if self.on_band is not None:
                self.on_band(res)


def _params(band: Band) -> dict:
    return {"method": band.method, "climb": bool(band.climb), "k_eV_A2": float(band.k)}


def _failed(band: Band, i: int, energies, error: str) -> BandResult:
    images = [a.copy() for a in band.images]
    for j, a in enumerate(images):
        a.info["neb_band"], a.info["neb_image"] = str(band.band_id), j
    e = np.full(len(images), np.nan) if energies is None else np.r_[energies[0], np.full(len(images) - 2, np.nan),
                                                                     energies[1]]
    return BandResult(band.band_id, i, images, e, "failed", 0, float("nan"), error, _params(band))


def run_bands(items: Sequence, model, *, n_images: int = 7, method: str = "improvedtangent", climb: bool = False,
              k: float = 0.1, fmax: float = 0.05, max_steps: int = 1000, optimizer: str = "fire",
              interpolation: str = "linear", mic: bool | None = None, relax_endpoints: bool = False,
              endpoint_fmax: float = 0.01, endpoint_max_steps: int = 1000, optimizer_kwargs: dict | None = None,
              device="cpu", dtype: torch.dtype = torch.float64, max_atoms: int | None = None,
              max_batch_size: int | None = None, refill_frequency: int = 5, on_band: Callable | None = None,
              hooks=(), progress: bool = False) -> list[BandResult]:
    """Optimize many nudged elastic bands in one inflight-batched run; one :class:`BandResult` per band.

    Each band is one system of the live batch (:mod:`batchmd.neb.bands`) whose forces are
    the NEB forces (:class:`~batchmd.neb.forces.NEBForces`), so batchmd's FIRE / LBFGS step
    it as ``ase.optimize.FIRE(NEB(images, ...)).run(fmax, steps)`` does, step for step.

    Parameters
    ----------
    items : sequence
        Per band: an ``(initial, final)`` pair of ``ase.Atoms`` (interpolated here with
        ASE's ``NEB.interpolate``), a list of >= 3 images (endpoints included, used as
        given), or a :class:`~batchmd.neb.bands.Band` (own ``k``, ``climb``, ``method``).
    model : Model
        The potential (e.g. ``load_model("emt")``, Lennard-Jones, SevenNet-0).
    n_images : int
        Images per band from a pair, endpoints included (>= 3). Default 7.
    method : str
        ``"improvedtangent"`` (ASE's default), ``"aseneb"``, ``"eb"``, ``"spline"`` or
        ``"string"`` (ASE's methods; ``spline``/``string`` without preconditioning).
    climb : bool
        Climbing image.
    k : float
        Spring constant, eV/Å^2 (ASE's default 0.1).
    fmax : float
        Convergence: the largest NEB force on any atom of the band (eV/Å), as ASE's optimizer on an NEB.
    max_steps : int
        Optimizer step budget per band (ASE's ``steps``).
    optimizer : str
        ``"fire"`` or ``"lbfgs"`` (ASE's parameters: ``optimizer_kwargs``, e.g. ``{"maxstep": 0.1}``).
    interpolation : str
        ``"linear"`` or ``"idpp"`` for pairs.
    mic : bool, optional
        Minimum image in the interpolation (default: True for periodic endpoints). Spring
        vectors always use it along periodic directions, as ASE's NEB does.
    relax_endpoints : bool
        First relax every pair's endpoints (one batched FIRE run, ``endpoint_fmax`` eV/Å,
        ``endpoint_max_steps``); a band whose endpoint does not converge fails alone.
    device, dtype, max_atoms, max_batch_size, refill_frequency
        The live batch (``max_atoms``: atom budget, default every band's atoms up to
        4,096 and at least the largest band).
    on_band : callable, optional
        ``on_band(result)`` as each band finishes (while the run goes on).
    progress : bool
        A live progress line on stderr.

    Returns
    -------
    list of BandResult
        In input order. A band that does not converge (``out_of_steps``), whose endpoint
        energy is not finite or whose image evaluation fails (``failed``, with ``error``)
        is returned like the others; it never costs the other bands their results.
        ``run_bands.last_stats`` holds the last run's :class:`~batchmd.dynamics.RunStats`
        (steps, occupancy, refills).

    Raises
    ------
    ValueError
        Before anything runs, naming the first bad band: endpoints with different atom
        counts, elements, order, pbc or cells, fewer than 3 images, an unknown
        method, a bad ``k``, ``fmax``,
        ``max_steps`` or ``optimizer``; elements the model has no parameters for.
    """
    from batchmd.dynamics import FIRE, LBFGS, ConvergenceHook, FusedStage, SizeAwareSampler
    from batchmd.dynamics.guards import Guards
    from batchmd.dynamics.stages import NoProgressWarning

    items = list(items)
    if optimizer not in ("fire", "lbfgs"):
        raise ValueError(f"batchmd.neb: optimizer must be 'fire' or 'lbfgs', got {optimizer!r}")
    if isinstance(fmax, bool) or not isinstance(fmax, (int, float)) or not math.isfinite(fmax) or fmax <= 0:
        raise ValueError(f"batchmd.neb: fmax must be a positive number of eV/Å, got {fmax!r}")
    if isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 0:
        raise ValueError(f"batchmd.neb: max_steps must be a non-negative integer, got {max_steps!r}")
    _check_options(n_images, method, k)
    for i, item in enumerate(items):  # every band checked before anything runs
        band, pair = _as_band(item, i, {"k": k, "climb": climb, "method": method})
        if pair is not None:
            check_endpoints(pair[0], pair[1], f"band {i}")
    if hasattr(model, "check_species"):
        from ase import Atoms

        numbers = set()
        for item in items:
            seq = item.images if isinstance(item, Band) else item
            for a in seq:
                if isinstance(a, Atoms):
                    numbers.update(a.numbers.tolist())
        model.check_species(sorted(numbers))
    relaxed, endpoint_errors = {}, {}
    if relax_endpoints:
        relaxed, endpoint_errors = _relax_endpoints(items, model, endpoint_fmax, endpoint_max_steps, device, dtype)
    bands = prepare_bands(items, n_images=n_images, method=method, climb=climb, k=k, interpolation=interpolation,
                          mic=mic, pairs_override=relaxed)
    if not bands:
        return []
    energies = endpoint_energies(bands, model, device=device, dtype=dtype)
    results: dict = {}
    todo = []
    for i, band in enumerate(bands):
        e = energies[i]
        if i in endpoint_errors:
            results[i] = _failed(band, i, e, endpoint_errors[i])
        elif not (math.isfinite(e[0]) and math.isfinite(e[1])):
            results[i] = _failed(band, i, e, "an endpoint energy is not finite (the model could not evaluate it)")
        else:
            todo.append(i)
        if i in results and on_band is not None:
            on_band(results[i])
    if todo:
        neb_model = NEBForces(model)
        kwargs = dict(optimizer_kwargs or {})
        hook = ConvergenceHook.from_forces(float(fmax))
        cls = FIRE if optimizer == "fire" else LBFGS
        stage = cls(neb_model, convergence_hook=hook, n_steps=int(max_steps), **kwargs)
        dataset = BandDataset([bands[i] for i in todo], [energies[i] for i in todo], todo, dtype=dtype)
        sizes = [dataset.get_metadata(n)[0] for n in range(len(todo))]
        budget = max_atoms if max_atoms is not None else max(max(sizes), min(sum(sizes), 4096))
        if budget < max(sizes):
            raise ValueError(f"batchmd.neb: max_atoms={budget} is smaller than the largest band "
                             f"({max(sizes)} atoms = moving images x atoms)")
        sampler = SizeAwareSampler(dataset, max_atoms=budget, max_batch_size=max_batch_size)
        sink = _BandSink(dict(enumerate(bands)), dict(enumerate(energies)), on_band, results)
        hooks = list(hooks)
        progress_hook = None
        if progress:
            from batchmd.progress import ProgressHook

            progress_hook = ProgressHook(enabled=True)
            hooks.append(progress_hook)
        fused = FusedStage(sub_stages=[(0, stage)], sampler=sampler, sinks=[sink], hooks=hooks,
                           refill_frequency=refill_frequency, device=device, dtype=dtype, compute_stress=False,
                           refill_in_place=True, guards=Guards(max_density=None, max_energy_drop=None))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoProgressWarning)  # bands given converged take no step
                fused.run(batch=None)
        finally:
            if progress_hook is not None:
                progress_hook.close()
        run_bands.last_stats = fused.stats
    return [results[i] for i in range(len(bands)) if i in results]


run_bands.last_stats = None
