"""Hooks: user code called at named points of a dynamics step.

A hook is any object with a ``stage`` (a :class:`HookStage`), a ``frequency`` (call
every ``frequency`` steps; graduation hooks are called at every graduation event) and
``__call__(batch, context)``. Subclass :class:`Hook` for the defaults.

Stages of one step, in order::

    BEFORE_STEP -> (integrator, first half) -> model -> AFTER_FORCES
                -> (integrator, second half; convergence) -> AFTER_STEP
    ON_GRADUATION   when systems leave the run (at refill points and at the end)

``ON_CONVERGE`` is an alias of ``ON_GRADUATION`` (the name used by the seed tutorial).

For BEFORE_STEP / AFTER_FORCES / AFTER_STEP the hook receives the live batch (on the
device; avoid host synchronisation there unless ``frequency`` is large). For
ON_GRADUATION it receives a Batch of the graduated systems, on the CPU, carrying
``system_id``, ``status``, ``converged``, ``n_steps``, ``energies`` and ``forces``.

Example
-------
>>> from batchmd.dynamics.hooks import Hook, HookStage
>>> class PrintEnergies(Hook):
...     stage = HookStage.AFTER_STEP
...     frequency = 10
...     def __call__(self, batch, context):
...         print(context.step, batch.energies.sum().item())

See ``examples/plot_custom_hook.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

import torch

__all__ = ["HookStage", "Hook", "HookContext", "RunStats", "ConvergedSnapshotHook", "TrajectoryHook"]


class HookStage(Enum):
    """Named points of a dynamics step at which hooks run."""

    BEFORE_STEP = "before_step"
    AFTER_FORCES = "after_forces"
    AFTER_STEP = "after_step"
    ON_GRADUATION = "on_graduation"
    ON_CONVERGE = "on_graduation"  # alias used by the seed tutorial


@dataclass
class RunStats:
    """Throughput counters of a run, readable by hooks through ``context.stats``.

    Attributes
    ----------
    steps : int
        Loop iterations so far.
    atom_steps : int
        Sum over steps of the atoms of active systems (counted at refill points).
    systems_graduated, systems_converged, systems_out_of_steps, systems_failed : int
        Graduation counts by outcome (``systems_converged``: the last stage, an optimizer,
        met its criterion; ``systems_out_of_steps``: an optimizer ran out of steps before
        meeting its criterion).
    systems_total : int or None
        Dataset size when a sampler drives the run.
    occupancy_sum : float
        Sum of live-batch occupancy over steps: atoms in use / max_atoms, where atoms in
        use are those of systems that took the step or got their first (priming)
        evaluation in it; finished systems waiting for a refill point are not in use.
    max_atoms : int or None
        The live batch's atom budget.
    refills_in_place : int
        Systems written into a graduated system's slot in place
        (``FusedStage(refill_in_place=True)``: any size with a padded live batch, else the
        same atom count).
    live_atoms : int or None
        Atoms of the live systems after the last refill point (padding rows excluded); None
        before the first one.
    compactions : int
        Times a padded live batch was gathered and laid out again because too much of its
        budget was free in fragments (:mod:`batchmd.dynamics.slot_layout`).
    refill_points : int
        Refill points reached (graduation checks; inflight refills happen there).
    refill_seconds : float
        Host time spent at refill points after reading the status (graduation, sinks,
        sampling, the new live batch): the refill overhead of a run is
        ``refill_seconds / elapsed``.
    oom_events : int
        Out-of-memory errors the loop recovered from (see :mod:`batchmd.dynamics.oom`).
    systems_returned : int
        Unmoved systems handed back to the sampler after such errors (served again later).
    systems_completed : int
        Graduated systems whose last stage ran its steps (not "converged"): MD, or an
        optimizer without a convergence criterion.
    systems_refused : int
        Served systems refused at admission (:mod:`batchmd.dynamics.admission`): written as
        failed without running (also counted in ``systems_failed``).
    stage_counts : dict
        Per stage (``"k:method"``, the ``stage{k}_method`` of result frames and the CLI's
        method names, see :func:`~batchmd.dynamics.base.stage_method`), graduated systems by
        stage status name (``converged``, ``completed``, ``out_of_steps``, ``failed``, ``skipped``).
    start_time : float
        ``time.perf_counter()`` at the start of the run.
    """

    steps: int = 0
    atom_steps: int = 0
    systems_graduated: int = 0
    systems_converged: int = 0
    systems_out_of_steps: int = 0
    systems_failed: int = 0
    systems_total: int | None = None
    occupancy_sum: float = 0.0
    max_atoms: int | None = None
    refills_in_place: int = 0
    compactions: int = 0
    live_atoms: int | None = None
    refill_points: int = 0
    refill_seconds: float = 0.0
    oom_events: int = 0
    systems_returned: int = 0
    systems_completed: int = 0
    systems_refused: int = 0
    stage_counts: dict = field(default_factory=dict)
    start_time: float = field(default_factory=time.perf_counter, repr=False)

    def count_graduated(self, graduated, recorder=None) -> None:
        """Count graduated systems by outcome (host batch with ``status`` and ``stage{k}_status`` fields).

        ``systems_converged``: the last stage is an optimizer that met its criterion;
        ``systems_completed``: the last stage ran its steps (MD, or an optimizer without a
        convergence criterion); ``stage_counts``:
        ``{"0:fire": {"converged": 3, ...}, "1:nvt": {...}}`` (names of
        :mod:`batchmd.dynamics.stage_results`).
        """
        from batchmd.dynamics.stage_results import status_name

        status = graduated["status"].reshape(-1)
        n = int(status.numel())
        self.systems_graduated += n
        self.systems_out_of_steps += int((status == 2).sum())
        self.systems_failed += int((status == 3).sum())
        done = status == 1
        if recorder is None:
            self.systems_converged += int(done.sum())
            return
        last_completes = torch.tensor(recorder.completes, dtype=torch.bool)[graduated["stage"].reshape(-1).long()]
        self.systems_converged += int((done & ~last_completes).sum())
        self.systems_completed += int((done & last_completes).sum())
        for k, name in enumerate(recorder.names):
            key = f"{k}:{name}"
            if not graduated.has_field(f"stage{k}_status"):
                continue
            counts = self.stage_counts.setdefault(key, {})
            for code in graduated[f"stage{k}_status"].reshape(-1).tolist():
                label = status_name(code)
                counts[label] = counts.get(label, 0) + 1

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.start_time

    @property
    def atom_steps_per_second(self) -> float:
        """Atom-steps per second of wall time (atoms of active systems only)."""
        elapsed = self.elapsed
        return self.atom_steps / elapsed if elapsed > 0 else 0.0

    @property
    def mean_occupancy(self) -> float:
        """Mean live-batch occupancy (atoms in use / max_atoms) over steps; 1.0 without a budget."""
        return self.occupancy_sum / self.steps if self.steps else 0.0

    def as_dict(self) -> dict:
        """The counters as a plain dict (for logging or JSON)."""
        return {
            "steps": self.steps,
            "atom_steps": self.atom_steps,
            "atom_steps_per_second": self.atom_steps_per_second,
            "mean_occupancy": self.mean_occupancy,
            "systems_graduated": self.systems_graduated,
            "systems_converged": self.systems_converged,
            "systems_out_of_steps": self.systems_out_of_steps,
            "systems_failed": self.systems_failed,
            "systems_total": self.systems_total,
            "elapsed_s": self.elapsed,
        }


@dataclass
class HookContext:
    """What a hook is told besides the batch.

    Attributes
    ----------
    step : int
        Loop iteration (0 before the first step).
    stage_index : int or None
        Index of the stage whose hook this is (None for run-level hooks).
    stats : RunStats
        Throughput counters of the run.
    """

    step: int
    stage_index: int | None
    stats: RunStats


class Hook:
    """Base class for hooks: override ``__call__(batch, context)``.

    Class attributes ``stage`` (default AFTER_STEP) and ``frequency`` (default 1) may be
    overridden per class or per instance. ``host_only = True`` declares that the hook
    reads only host-side state (``context.step``, ``context.stats``), never the batch's
    tensors: on GPUs, where the loop replays chunks of steps as CUDA graphs
    (:mod:`batchmd.dynamics.cuda_graph`), such an AFTER_STEP hook then runs once after each
    replayed chunk (whatever its ``frequency``) instead of turning the graphs off.
    """

    stage: HookStage = HookStage.AFTER_STEP
    frequency: int = 1
    host_only: bool = False

    def __call__(self, batch, context: HookContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class ConvergedSnapshotHook(Hook):
    """Write each graduated system to a sink, exactly once.

    Parameters
    ----------
    sink : object with ``write(batch)``
        E.g. :class:`~batchmd.dynamics.sinks.HostMemory` or a durable file sink.
    statuses : iterable of SystemStatus, optional
        Only write systems whose final status is one of these (default: every graduated
        system, whatever its outcome).

    Notes
    -----
    Attached to a stage (``NVTLangevin(..., hooks=[hook])``) it sees the systems that
    graduate from that stage; given to a :class:`FusedStage` (``hooks=[...]``) it sees all.
    A sink reached both through a hook and through ``FusedStage(sinks=[...])`` still
    receives each system once.

    Examples
    --------
    ``examples/inflight_batching.py``.
    """

    stage = HookStage.ON_GRADUATION

    def __init__(self, sink, statuses=None) -> None:
        self.sink = sink
        self.statuses = None if statuses is None else tuple(int(s) for s in statuses)

    def select(self, graduated) -> torch.Tensor | None:
        """Indices of the graduated systems this hook writes (None = all)."""
        if self.statuses is None:
            return None
        status = graduated["status"]
        keep = torch.zeros_like(status, dtype=torch.bool)
        for code in self.statuses:
            keep |= status == code
        return torch.nonzero(keep).reshape(-1)

    def __call__(self, batch, context: HookContext) -> None:
        idx = self.select(batch)
        self.sink.write(batch if idx is None else batch.index_select(idx))


class TrajectoryHook(Hook):
    """Record per-system scalars (energy in eV, fmax in eV/Å, temperature in K) every few steps.

    Parameters
    ----------
    frequency : int
        Record every ``frequency`` steps (each record is one host synchronisation).
    fields : tuple of str
        System-level fields to record; ``"temperature"`` is the instantaneous kinetic
        temperature from ``velocities`` and ``atomic_masses`` over the system's degrees of
        freedom (``3N - 3 N_fixed - 3 [fix_com]``, as ASE's ``get_temperature``; the one
        count of :mod:`batchmd.dynamics.constraints`).

    Notes
    -----
    After the run, ``hook.records`` is a list of dicts ``{"step", "system_id", <field>...}``
    with one tensor [num_graphs] per field.

    Examples
    --------
    ``examples/plot_relaxation.py``.
    """

    stage = HookStage.AFTER_STEP

    def __init__(self, frequency: int = 1, fields=("energies", "fmax")) -> None:
        if frequency < 1:
            raise ValueError(f"TrajectoryHook: frequency must be >= 1, got {frequency}")
        self.frequency = int(frequency)
        self.fields = tuple(fields)
        self.records: list[dict] = []

    def __call__(self, batch, context: HookContext) -> None:
        record = {"step": context.step}
        if batch.has_field("system_id"):
            record["system_id"] = batch.system_id.reshape(-1).cpu().clone()
        for name in self.fields:
            if name == "temperature":
                from batchmd.dynamics.constraints import system_temperature

                record[name] = system_temperature(batch).cpu()
            else:
                record[name] = batch[name].reshape(batch.num_graphs, -1)[:, 0].detach().cpu().clone()
        self.records.append(record)
