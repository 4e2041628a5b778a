"""Equilibration as graduation: an MD stage that runs each system until it is equilibrated, then for a
fixed production time, and graduates it.

:class:`Equilibrate` wraps an MD stage (:class:`~batchmd.dynamics.NVTLangevin`,
:class:`~batchmd.dynamics.NoseHooverChainNVT`, :class:`~batchmd.dynamics.IsotropicMTKNPT`,
:class:`~batchmd.dynamics.MTKNPT`, :class:`~batchmd.dynamics.CRescaleNPT`, ...). Each system goes
through two phases in it:

1. **Equilibration.** Every ``sample_every`` steps the potential energy (eV), the kinetic
   temperature (K) and, under a barostat, the volume (Å^3) of each system are written into a
   per-system ring buffer of the last ``window`` samples, on the device, by torch ops
   (no host synchronisation in the step loop). At refill points -- where the loop reads
   the status anyway -- systems with at least ``min_samples`` samples, ``test_every`` of
   them new since their last test, are tested on the host (:func:`equilibration_test`).
   A system that passes enters production at that step.
2. **Production.** The same observables (and the pressure, GPa, where the stress is
   computed) are recorded for ``production_steps`` steps into a second buffer; then the
   system graduates (or enters the next stage) and its production averages with
   statistical-inefficiency error bars (:func:`production_statistics`) become per-system
   result fields.

A system that is not equilibrated after ``max_equilibration_steps`` steps graduates at the
next refill point as ``out_of_steps`` (stage status) with ``equilibration_status``
"not equilibrated in N steps": never a silent production of an unequilibrated system.
In inflight runs a graduated system hands its slot to the next sample, which starts its
own equilibration phase: each system runs as long as *it* needs.

The test (:func:`equilibration_test`)
-------------------------------------
For each observable, on the chronological window ``x[0..n-1]``:

* Chodera's automated equilibration detection [Chodera2016]_ (pymbar's
  ``timeseries.detect_equilibration``): the start ``t0`` of the equilibrated region is the
  one that maximises the number of effectively uncorrelated samples
  ``N_eff = (n - t0) / g(t0)``, ``g`` the statistical inefficiency of ``x[t0:]``.
* The equilibrated region must cover at least ``1 - max_discard_fraction`` of the window
  (``t0 <= max_discard_fraction * n``; default half) and hold ``N_eff >=
  min_effective_samples`` (default 20): a drifting series has a large ``g`` and its best
  ``t0`` lies near the end, so it fails.
* A trend test on the region ``x[t0:]``: the slope of its least-squares line must be
  within ``drift_z`` (default 2.5) standard errors of zero, the slope's standard error
  inflated by ``sqrt(g)`` (pymbar's statistical inefficiency of the residuals, i.e. the
  effective sample size of [Chodera2016]_). Detection alone accepts a linear drift of two
  standard deviations across the window in about half the cases (synthetic AR(1) series:
  22/40 white, 32/40 with lag-1 correlation 0.5); with the trend test 9/40 and 21/40, while
  stationary series still pass 40/40 and 39/40 (see ``tests/test_equilibration.py``).

A system is equilibrated when every observable passes. ``equilibrated_at_step`` is the
stage step of the latest ``t0`` over the observables; production starts at the step of
the test (``equilibration_detected_at_step``), after the tested samples, so production
averages never reuse the data that decided equilibration (no selection bias).

Failure modes (documented, tested where cheap): a relaxation slower than the window
(``window * sample_every`` steps) can look stationary inside it; a correlation time so
long that ``N_eff < min_effective_samples`` on a full window means the system is never
declared equilibrated (raise ``window`` or ``sample_every``); the test runs only at refill
points, so detection is quantised to ``refill_frequency`` steps, and a system tested after
``max_equilibration_steps`` is not equilibrated even if it passes then.

Result fields (system fields of graduated systems; ``atoms.info`` keys of result frames)
-----------------------------------------------------------------------------------------
``equilibration_status`` (:class:`EquilibrationStatus`; text in result frames:
"equilibrated", "not equilibrated in N steps", "failed", "skipped"),
``equilibrated_at_step``, ``equilibration_detected_at_step`` (stage steps; -1 if not),
``production_steps_run``, ``production_samples``, and for ``temperature_K``,
``potential_energy_eV``, ``volume_A3``, ``pressure_GPa``: ``production_mean_<obs>`` (over
the production samples only), ``production_sem_<obs>`` (standard error of the mean,
``std * sqrt(g / n)``, ``std`` and ``g`` estimated on the equilibrated part of the window
followed by the production: see :func:`production_statistics`) and ``production_g_<obs>``
(statistical inefficiency in samples). NaN where not measured.

References
----------
.. [Chodera2016] J. D. Chodera, "A simple method for automated equilibration detection in
   molecular simulations", J. Chem. Theory Comput. 12, 1799-1805 (2016),
   doi:10.1021/acs.jctc.5b00784; implementation: pymbar ``timeseries``.

Example
-------
>>> from batchmd.dynamics import NVTLangevin
>>> from batchmd.dynamics.equilibration import Equilibrate
>>> # stage = Equilibrate(NVTLangevin(model, dt=5.0, temperature=60.0, friction=0.005),
>>> #                     production_steps=2000, max_equilibration_steps=20000)
>>> # result = batchmd.ase.run_frames(frames, [stage])   # frames carry the keys above

See ``benchmarks/equilibration.py`` and ``docs/equilibration.rst``.
"""

from __future__ import annotations

import math
from enum import IntEnum

import numpy as np
import torch

from batchmd.dynamics.status import SystemStatus

__all__ = ["Equilibrate", "EquilibrationStatus", "equilibration_test", "production_statistics",
           "equilibration_status_text", "RESULT_OBSERVABLES", "EQUILIBRATION_KEYS"]

#: Observables of production results, in the order of the buffers' columns (names with units).
RESULT_OBSERVABLES = ("temperature_K", "potential_energy_eV", "volume_A3", "pressure_GPa")
#: The result keys of an equilibration stage (``atoms.info`` of result frames, summary columns), in order.
EQUILIBRATION_KEYS = ("equilibration_status", "equilibrated_at_step", "equilibration_detected_at_step",
                      "equilibration_steps", "production_steps_run", "production_samples",
                      *(f"production_{w}_{o}" for o in RESULT_OBSERVABLES for w in ("mean", "sem", "g")))
_TESTED = {"temperature": 0, "potential_energy": 1, "volume": 2}  # equilibration test columns
_GPA = 160.21766208  # eV/Å^3 -> GPa (ase.units.GPa = 1 / this)


class EquilibrationStatus(IntEnum):
    """Phase of a system in an :class:`Equilibrate` stage (system field ``equilibration_status``)."""

    EQUILIBRATING = 0
    PRODUCTION = 1
    EQUILIBRATED = 2      # final: production complete, averages reported
    NOT_EQUILIBRATED = 3  # final: max_equilibration_steps passed without passing the test
    SKIPPED = 4           # final: the system never entered the stage (an earlier stage ended its run)
    FAILED = 5            # final: the system failed (guards, non-finite values) in the stage


def equilibration_status_text(code, steps=None) -> str:
    """The result-frame text of an :class:`EquilibrationStatus` code.

    >>> equilibration_status_text(3, steps=5000)
    'not equilibrated in 5000 steps'
    >>> equilibration_status_text(2)
    'equilibrated'
    """
    code = EquilibrationStatus(int(code))
    if code == EquilibrationStatus.NOT_EQUILIBRATED:
        return f"not equilibrated in {int(steps)} steps" if steps is not None else "not equilibrated"
    return code.name.lower().replace("_", " ")


def _pymbar_timeseries():
    import logging
    import warnings

    logging.getLogger("pymbar").setLevel(logging.ERROR)  # its JAX notice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pymbar import timeseries
    return timeseries


def _inefficiency(x: np.ndarray) -> float:
    """pymbar's statistical inefficiency of ``x`` (>= 1; 1 for a constant or too short series)."""
    if x.size < 4 or not np.ptp(x) > 1e-10 * max(1.0, float(np.abs(x).max())):
        return 1.0
    try:
        return max(1.0, float(_pymbar_timeseries().statistical_inefficiency(x, mintime=3)))
    except Exception:  # pymbar.utils.ParameterError on a degenerate series
        return 1.0


def equilibration_test(x, min_effective_samples: float = 20.0, max_discard_fraction: float = 0.5,
                       drift_z: float = 2.5, nskip: int | None = None) -> tuple[bool, int]:
    """Whether the series ``x`` (1-D, chronological) has reached equilibrium, and where.

    Chodera's detection [Chodera2016]_ (pymbar ``detect_equilibration``) gives ``t0``
    maximising ``N_eff``; the series passes when ``t0 <= max_discard_fraction * len(x)``,
    ``N_eff >= min_effective_samples`` and the least-squares slope of ``x[t0:]`` is within
    ``drift_z`` standard errors of zero (the error inflated by ``sqrt(g)``, pymbar's statistical
    inefficiency of the residuals).
    A constant series passes with ``t0 = 0``. ``nskip``: stride of the candidate ``t0``
    (pymbar's ``nskip``; default ``len(x) // 20``, so ~20 candidates: the cost of a test is
    ~20 statistical inefficiencies, ~2 ms for 200 samples, instead of ~20 ms with every ``t0``).

    Returns
    -------
    (bool, int)
        Passed, and ``t0`` (sample index).

    Raises
    ------
    ValueError
        A non-finite value or fewer than 8 samples.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    n = x.size
    if n < 8:
        raise ValueError(f"equilibration_test: needs at least 8 samples, got {n}")
    if not np.isfinite(x).all():
        raise ValueError("equilibration_test: the series has non-finite values")
    if not np.ptp(x) > 1e-10 * max(1.0, float(np.abs(x).max())):
        return True, 0
    nskip = max(1, n // 20) if nskip is None else max(1, int(nskip))
    t0, g, neff = _pymbar_timeseries().detect_equilibration(x, fast=True, nskip=nskip)
    t0 = int(t0)
    if t0 > max_discard_fraction * n or not float(neff) >= min_effective_samples:
        return False, t0
    if _trend_z(x[t0:]) > drift_z:
        return False, t0
    return True, t0


def _trend_z(x: np.ndarray) -> float:
    """|slope| / standard error of the least-squares line through ``x`` (against the sample index).

    The slope's ordinary standard error is inflated by ``sqrt(g)``, ``g`` pymbar's statistical
    inefficiency of the residuals: the t-test of a linear trend in a correlated series with its
    effective sample size. 0 for a constant series.
    """
    t = np.arange(x.size, dtype=np.float64)
    t -= t.mean()
    slope = float((t * (x - x.mean())).sum() / (t * t).sum())
    residual = x - x.mean() - slope * t
    se = float(residual.std()) * math.sqrt(_inefficiency(residual) / float((t * t).sum()))
    return abs(slope) / se if se > 0 else (0.0 if slope == 0 else math.inf)


def production_statistics(x, history=None) -> tuple[float, float, float]:
    """Mean, standard error of the mean and statistical inefficiency of the series ``x``.

    ``sem = std * sqrt(g / n)`` (``n = len(x)``) with ``g`` pymbar's statistical inefficiency
    [Chodera2016]_, in samples. ``history``: equilibrated samples of the same trajectory just
    before ``x`` (the stage passes the equilibration window from ``t0`` on): ``std`` and ``g``
    are then estimated on ``history + x``, the mean on ``x`` alone. A short series biases
    ``g`` low; on 200-sample productions of weakly thermostatted argon (correlation time ~10
    samples) the differences to the long-run mean spread over 1.41 (T) and 1.49 (E_pot)
    SEMs with ``x`` alone, 1.04 and 1.11 with 200 samples of history (25,000-step control
    run, see ``benchmarks/equilibration.md``). NaN for an empty series or one with
    non-finite values (history with non-finite values is ignored).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        return float("nan"), float("nan"), float("nan")
    longer = x
    if history is not None:
        history = np.asarray(history, dtype=np.float64).reshape(-1)
        if history.size and np.isfinite(history).all():
            longer = np.concatenate([history, x])
    g = _inefficiency(longer)
    sem = float(longer.std(ddof=1)) * math.sqrt(g / x.size) if longer.size > 1 else float("nan")
    return float(x.mean()), sem, g


def _observables(batch) -> torch.Tensor:
    """``[B, 4]``: temperature (K), potential energy (eV), volume (Å^3), pressure (GPa; NaN without stress)."""
    from ase.units import kB

    from batchmd.dynamics.constraints import system_dof

    b, dtype, dev = batch.num_graphs, batch.dtype, batch.device
    v = batch.velocities
    if v is None:
        ke = torch.zeros(b, dtype=dtype, device=dev)
        kin = torch.zeros(b, 3, 3, dtype=dtype, device=dev)
    else:
        mv = batch.atomic_masses.to(dtype)[:, None, None] * v[:, :, None] * v[:, None, :]
        kin = torch.zeros(b, 3, 3, dtype=dtype, device=dev).index_add_(0, batch.batch_idx.long(), mv)
        ke = 0.5 * torch.diagonal(kin, dim1=1, dim2=2).sum(-1)
    dof = system_dof(batch, record=False).to(dtype)
    temperature = torch.where(dof > 0, 2.0 * ke / (dof.clamp(min=1.0) * kB), torch.zeros_like(ke))
    energy = batch.energies.reshape(-1).to(dtype)
    cell = batch.cell.to(dtype).reshape(b, 3, 3)
    volume = (cell[:, 0] * torch.cross(cell[:, 1], cell[:, 2], dim=-1)).sum(-1).abs()  # no LU: no device sync
    if batch.has_field("stress") and batch["stress"] is not None:
        safe = torch.where(volume > 0, volume, torch.ones_like(volume))
        stress = batch["stress"].reshape(b, 3, 3).to(dtype) - kin / safe[:, None, None]
        pressure = -torch.diagonal(stress, dim1=1, dim2=2).sum(-1) / 3.0 * _GPA
        pressure = torch.where(volume > 0, pressure, torch.full_like(pressure, float("nan")))
    else:
        pressure = torch.full_like(energy, float("nan"))
    return torch.stack([temperature, energy, volume, pressure], dim=1)


class _Sampler:
    """AFTER_STEP hook of an :class:`Equilibrate` stage: writes the observables of its ACTIVE systems."""

    def __init__(self, owner) -> None:
        from batchmd.dynamics.hooks import HookStage

        self.owner = owner
        self.stage = HookStage.AFTER_STEP
        self.frequency = owner.sample_every
        self.host_only = False

    def __call__(self, batch, context) -> None:
        self.owner._sample(batch, context.stage_index)


class Equilibrate:
    """An MD stage that graduates each system once equilibrated, after a production run.

    Parameters
    ----------
    stage : Dynamics
        An MD stage (not an optimizer) without ``n_steps`` or ``convergence_hook`` of its own;
        its parameters, state, velocity policy and name (``stage{k}_method``) are used as is.
    production_steps : int
        Steps of production per system after equilibration (a multiple of ``sample_every``).
    max_equilibration_steps : int
        A system not equilibrated after this many steps in the stage graduates as
        ``out_of_steps`` with ``equilibration_status`` "not equilibrated in N steps".
    sample_every : int
        Steps between samples of the observables (default 10).
    window : int
        Samples in the equilibration ring buffer: the test sees the last ``window`` samples
        (default 200).
    min_samples : int
        Samples before the first test (default 50; >= 8).
    test_every : int
        New samples between two tests of a system (default 25).
    observables : sequence of str, optional
        Tested series among ``"temperature"``, ``"potential_energy"``, ``"volume"``
        (default: the first two, plus the volume when the stage changes the cell).
    min_effective_samples, max_discard_fraction, drift_z : float
        Parameters of :func:`equilibration_test` (defaults 20, 0.5, 2.5).

    Raises
    ------
    ValueError
        One line: an optimizer stage, a stage with its own ``n_steps`` or
        ``convergence_hook``, non-positive counts, ``production_steps`` not a multiple of
        ``sample_every``, ``min_samples`` above ``window`` or under 8, an unknown observable.

    Notes
    -----
    Engine hooks (the only changes to the loop, in :mod:`batchmd.dynamics.refill`):
    ``at_refill_point(batch, k)`` runs before the status read of every refill point, and
    ``transient_fields`` (the buffers) are left out of graduated systems. Per step the
    stage costs its inner stage plus a three-op completion check; every ``sample_every``
    steps the sampling hook adds ~30 small torch ops. Hooks inside the step turn off CUDA
    graph capture (``cuda_graph="auto"``). Production ends at the first step after its
    ``production_steps // sample_every``-th sample (``production_steps_run`` reports it).
    """

    is_optimizer = False

    def __init__(self, stage, production_steps: int, max_equilibration_steps: int, sample_every: int = 10,
                 window: int = 200, min_samples: int = 50, test_every: int = 25, observables=None,
                 min_effective_samples: float = 20.0, max_discard_fraction: float = 0.5, drift_z: float = 2.5):
        if getattr(stage, "is_optimizer", False) or getattr(stage, "velocity_policy", None) is None:
            raise ValueError(f"Equilibrate: {type(stage).__name__} is not an MD stage")
        if stage.n_steps is not None or stage.convergence_hook is not None:
            raise ValueError("Equilibrate: the wrapped stage must have neither n_steps nor a convergence_hook "
                             "(Equilibrate sets the stage's end)")
        for name, value in (("production_steps", production_steps),
                            ("max_equilibration_steps", max_equilibration_steps), ("sample_every", sample_every),
                            ("window", window), ("min_samples", min_samples), ("test_every", test_every)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Equilibrate: {name} must be a positive integer, got {value!r}")
        if production_steps % sample_every:
            raise ValueError(f"Equilibrate: production_steps ({production_steps}) must be a multiple of "
                             f"sample_every ({sample_every})")
        if not 8 <= min_samples <= window:
            raise ValueError(f"Equilibrate: min_samples must be between 8 and window ({window}), got {min_samples}")
        if not (0 < max_discard_fraction < 1 and drift_z > 0 and min_effective_samples > 0):
            raise ValueError("Equilibrate: need 0 < max_discard_fraction < 1, drift_z > 0, min_effective_samples > 0")
        if observables is None:
            observables = ["temperature", "potential_energy"]
            if getattr(stage, "pressure", None) is not None or getattr(stage, "needs_stress", False):
                observables.append("volume")
        unknown = [o for o in observables if o not in _TESTED]
        if unknown or not observables:
            raise ValueError(f"Equilibrate: observables must be among {', '.join(_TESTED)}, got {observables!r}")
        self.inner = stage
        self.model = stage.model
        self.production_steps = int(production_steps)
        self.max_equilibration_steps = int(max_equilibration_steps)
        self.sample_every = int(sample_every)
        self.window = int(window)
        self.min_samples = int(min_samples)
        self.test_every = int(test_every)
        self.observables = tuple(observables)
        self.min_effective_samples = float(min_effective_samples)
        self.max_discard_fraction = float(max_discard_fraction)
        self.drift_z = float(drift_z)
        self.production_samples = self.production_steps // self.sample_every
        # Backstop budget: production may start up to max_equilibration_steps, its samples fall on
        # multiples of sample_every of the loop's step, and completion is seen one step after.
        self.n_steps = self.max_equilibration_steps + self.production_steps + self.sample_every + 1
        self._sampler = _Sampler(self)
        self.hooks = [self._sampler] + list(stage.hooks)
        from batchmd.dynamics.convergence import ConvergenceHook

        self.convergence_hook = ConvergenceHook("equilibration_status", 0.0, predicate=self._done)
        self._solo = None

    # ----------------------------------------------------------------- delegation
    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return (f"Equilibrate({self.inner!r}, production_steps={self.production_steps}, "
                f"max_equilibration_steps={self.max_equilibration_steps}, sample_every={self.sample_every})")

    #: Buffers of the live batch, left out of graduated systems (see refill.py ``_graduate``).
    transient_fields = ("eq_series", "eq_sample_steps", "eq_count", "eq_tested", "eq_prod_series", "eq_prod_count")

    # ----------------------------------------------------------------- stage protocol
    def requirements(self):
        """The wrapped stage's requirements (:mod:`batchmd.dynamics.admission`)."""
        from batchmd.dynamics.admission import stage_requirements

        return stage_requirements(self.inner)

    def _ensure_fields(self, batch) -> None:
        b, dev, dtype = batch.num_graphs, batch.device, batch.dtype
        shapes = {
            "eq_series": ((b, self.window, 4), dtype, 0.0), "eq_sample_steps": ((b, self.window), torch.int32, 0),
            "eq_count": ((b,), torch.int32, 0), "eq_tested": ((b,), torch.int32, 0),
            "eq_prod_series": ((b, self.production_samples, 4), dtype, 0.0), "eq_prod_count": ((b,), torch.int32, 0),
            "equilibration_status": ((b,), torch.int32, 0), "equilibrated_at_step": ((b,), torch.int32, -1),
            "equilibration_detected_at_step": ((b,), torch.int32, -1),
            "equilibration_steps": ((b,), torch.int32, -1), "production_steps_run": ((b,), torch.int32, -1),
            "production_samples": ((b,), torch.int32, 0),
            **{f"production_{w}_{o}": ((b,), dtype, float("nan")) for o in RESULT_OBSERVABLES
               for w in ("mean", "sem", "g")},
        }
        for name, (shape, kind, fill) in shapes.items():
            if not batch.has_field(name) or tuple(batch[name].shape) != shape or batch[name].dtype != kind:
                batch.set_field(name, torch.full(shape, fill, dtype=kind, device=dev), "system")

    def init_state(self, batch, mask: torch.Tensor) -> None:
        """The wrapped stage's state, and a fresh equilibration phase for systems where ``mask`` [B] is True."""
        self.inner.init_state(batch, mask)
        self._ensure_fields(batch)
        for name in ("eq_count", "eq_tested", "eq_prod_count", "equilibration_status"):
            batch[name].masked_fill_(mask, 0)
        for name in ("equilibrated_at_step", "equilibration_detected_at_step"):
            batch[name].masked_fill_(mask, -1)

    def pre_force(self, batch, stage_index: int) -> None:
        self.inner.pre_force(batch, stage_index)

    def post_force(self, batch, stage_index: int) -> None:
        self.inner.post_force(batch, stage_index)

    def _done(self, batch) -> torch.Tensor:
        """Convergence predicate (every step, device only): production complete."""
        if not batch.has_field("eq_prod_count"):
            return torch.zeros(batch.num_graphs, dtype=torch.bool, device=batch.device)
        return (batch["equilibration_status"] == int(EquilibrationStatus.PRODUCTION)) & (
            batch["eq_prod_count"] >= self.production_samples)

    def _sample(self, batch, k) -> None:
        """Write the observables of ACTIVE systems of stage ``k`` into their buffers (device only)."""
        if batch.num_graphs == 0 or not batch.has_field("eq_count"):
            return
        active = (batch["status"] == int(SystemStatus.ACTIVE)) & (batch["stage"] == k)
        phase = batch["equilibration_status"]
        values = _observables(batch).to(batch["eq_series"].dtype)
        rows = torch.arange(batch.num_graphs, device=batch.device)
        steps = batch["stage_steps"]
        eq = active & (phase == int(EquilibrationStatus.EQUILIBRATING))
        count = batch["eq_count"]
        slot = (count % self.window).long()
        series, when = batch["eq_series"], batch["eq_sample_steps"]
        series[rows, slot] = torch.where(eq[:, None], values, series[rows, slot])
        when[rows, slot] = torch.where(eq, steps, when[rows, slot])
        count.add_(eq.to(count.dtype))
        prod_count = batch["eq_prod_count"]
        prod = active & (phase == int(EquilibrationStatus.PRODUCTION)) & (prod_count < self.production_samples)
        slot = prod_count.clamp(max=self.production_samples - 1).long()
        pseries = batch["eq_prod_series"]
        pseries[rows, slot] = torch.where(prod[:, None], values, pseries[rows, slot])
        prod_count.add_(prod.to(prod_count.dtype))

    # ----------------------------------------------------------------- refill points (host)
    def at_refill_point(self, batch, k: int) -> None:
        """Test systems in their equilibration phase, end those past the limit, write results of leaving ones.

        Called by the loop before it reads the status (one read of seven small int32
        tensors here, plus the buffers of the systems tested or finished).
        """
        if batch.num_graphs == 0 or not batch.has_field("eq_count"):
            return
        names = ("status", "stage", "stage_steps", "equilibration_status", "eq_count", "eq_tested")
        ints = torch.stack([batch[n].reshape(-1).to(torch.int32) for n in names]).cpu().numpy()
        status, stage, steps, phase, count, tested = ints
        active = status == int(SystemStatus.ACTIVE)
        eq = (stage == k) & active & (phase == int(EquilibrationStatus.EQUILIBRATING))
        due = eq & (count >= self.min_samples) & ((count - tested >= self.test_every)
                                                  | (steps >= self.max_equilibration_steps))
        new_phase = phase.copy()
        at_step = {}
        if due.any():
            self._test(batch, np.nonzero(due)[0], count, steps, new_phase, at_step)
        late = eq & (new_phase == int(EquilibrationStatus.EQUILIBRATING)) & (steps >= self.max_equilibration_steps)
        status = status.copy()
        if late.any():
            status[late] = int(SystemStatus.OUT_OF_STEPS)
            index = torch.as_tensor(np.nonzero(late)[0], device=batch.device)
            batch["status"][index] = int(SystemStatus.OUT_OF_STEPS)
        finished = ~np.isin(status, (int(SystemStatus.ACTIVE), int(SystemStatus.PENDING), int(SystemStatus.EMPTY)))
        unfinal = new_phase <= int(EquilibrationStatus.PRODUCTION)
        leaving = unfinal & (finished | ((stage > k) & (new_phase == int(EquilibrationStatus.PRODUCTION))))
        if leaving.any():
            self._finish(batch, k, np.nonzero(leaving)[0], status, stage, steps, new_phase)
        changed = np.nonzero(new_phase != phase)[0]
        if changed.size:
            index = torch.as_tensor(changed, device=batch.device)
            batch["equilibration_status"][index] = torch.as_tensor(new_phase[changed], dtype=torch.int32,
                                                                    device=batch.device)
        if at_step:
            index = torch.as_tensor(list(at_step), device=batch.device)
            t0, now = zip(*at_step.values())
            batch["equilibrated_at_step"][index] = torch.as_tensor(t0, dtype=torch.int32, device=batch.device)
            batch["equilibration_detected_at_step"][index] = torch.as_tensor(now, dtype=torch.int32,
                                                                              device=batch.device)

    def _test(self, batch, systems, count, steps, new_phase, at_step) -> None:
        index = torch.as_tensor(systems, device=batch.device)
        series = batch["eq_series"][index].cpu().numpy()
        when = batch["eq_sample_steps"][index].cpu().numpy()
        columns = [_TESTED[o] for o in self.observables]
        for row, s in enumerate(systems):
            n = int(min(count[s], self.window))
            order = (np.arange(n) + (int(count[s]) - n)) % self.window  # oldest first
            passed, t0_max = True, 0
            for col in columns:
                x = series[row, order, col]
                if not np.isfinite(x).all():
                    passed = False
                    break
                ok, t0 = equilibration_test(x, self.min_effective_samples, self.max_discard_fraction, self.drift_z)
                passed &= ok
                t0_max = max(t0_max, t0)
                if not passed:
                    break
            if passed and steps[s] <= self.max_equilibration_steps:
                new_phase[s] = int(EquilibrationStatus.PRODUCTION)
                at_step[int(s)] = (int(when[row, order[t0_max]]), int(steps[s]))
        batch["eq_tested"][index] = batch["eq_count"][index]

    def _finish(self, batch, k, systems, status, stage, steps, new_phase) -> None:
        """Final ``equilibration_status`` and production statistics of systems leaving the stage or the run."""
        dev = batch.device
        index = torch.as_tensor(systems, device=dev)
        prod = batch["eq_prod_series"][index].cpu().numpy()
        prod_count = batch["eq_prod_count"][index].cpu().numpy()
        detected = batch["equilibration_detected_at_step"][index].cpu().numpy()
        start = batch["equilibrated_at_step"][index].cpu().numpy()
        window = batch["eq_series"][index].cpu().numpy()
        window_steps = batch["eq_sample_steps"][index].cpu().numpy()
        window_count = batch["eq_count"][index].cpu().numpy()
        results = {f"production_{w}_{o}": np.full(len(systems), np.nan) for o in RESULT_OBSERVABLES
                   for w in ("mean", "sem", "g")}
        run_steps = np.full(len(systems), -1, dtype=np.int32)
        samples = np.zeros(len(systems), dtype=np.int32)
        for row, s in enumerate(systems):
            if status[s] == int(SystemStatus.FAILED) and stage[s] == k:
                new_phase[s] = int(EquilibrationStatus.FAILED)
            elif stage[s] < k:
                new_phase[s] = int(EquilibrationStatus.SKIPPED)
            elif new_phase[s] == int(EquilibrationStatus.EQUILIBRATING):
                new_phase[s] = int(EquilibrationStatus.NOT_EQUILIBRATED)
            elif new_phase[s] == int(EquilibrationStatus.PRODUCTION):
                new_phase[s] = int(EquilibrationStatus.EQUILIBRATED) if prod_count[row] >= self.production_samples \
                    else int(EquilibrationStatus.NOT_EQUILIBRATED)
            n = int(prod_count[row])
            samples[row] = n
            if new_phase[s] == int(EquilibrationStatus.EQUILIBRATED):  # failed or cut: no averages, NaN
                run_steps[row] = (int(steps[s]) if stage[s] == k else -1) - int(detected[row])
                filled = int(min(window_count[row], self.window))
                order = (np.arange(filled) + (int(window_count[row]) - filled)) % self.window  # oldest first
                order = order[window_steps[row, order] >= start[row]]  # the equilibrated region, t0 on
                for col, name in enumerate(RESULT_OBSERVABLES):
                    mean, sem, g = production_statistics(prod[row, :n, col], history=window[row, order, col])
                    results[f"production_mean_{name}"][row] = mean
                    results[f"production_sem_{name}"][row] = sem
                    results[f"production_g_{name}"][row] = g
        if (stage[systems] > k).any():  # left the stage for the next one: its steps here are stage_start's
            start = batch["stage_start"][index].cpu().numpy() if batch.has_field("stage_start") else None
            if start is not None and start.shape[1] > k + 1:
                for row, s in enumerate(systems):
                    if stage[s] > k and detected[row] >= 0:
                        run_steps[row] = int(start[row, k + 1] - start[row, k]) - int(detected[row])
        fields = dict(results)
        fields["production_steps_run"] = run_steps
        fields["production_samples"] = samples
        fields["equilibration_steps"] = np.where(detected >= 0, detected,
                                                 np.where(stage[systems] == k, steps[systems], -1)).astype(np.int32)
        for name, values in fields.items():
            batch[name][index] = torch.as_tensor(values, dtype=batch[name].dtype, device=dev)

    # ----------------------------------------------------------------- running alone
    def run(self, batch, n_steps: int | None = None, check_frequency: int = 10, resume: bool = False):
        """Run this stage alone over ``batch`` (see :meth:`Dynamics.run <batchmd.dynamics.Dynamics.run>`)."""
        if self._solo is None:
            from batchmd.dynamics.fused import FusedStage

            self._solo = FusedStage(sub_stages=[(0, self)])
        self._solo.refill_frequency = int(check_frequency)
        return self._solo.run(batch, n_steps=n_steps, resume=resume)

    def __add__(self, other):
        from batchmd.dynamics.fused import FusedStage

        return FusedStage(sub_stages=[(0, self)]) + other
