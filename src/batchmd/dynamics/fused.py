"""FusedStage: several dynamics stages over one live batch, with inflight refills.

Every system is in exactly one stage (its ``stage`` field). Each step::

    BEFORE_STEP hooks
    stage.pre_force(batch, k)   for every stage k   (Warp kernels; only stage-k ACTIVE systems move)
    model(batch)                one evaluation serves every stage (FAILED systems get no neighbors)
    runaway guards              non-finite positions/velocities/cell, density: FAILED before the model
    force statistics            per-system fmax (eV/Å), non-finite and runaway guards, one kernel
    AFTER_FORCES hooks
    stage.post_force(batch, k)  for every stage k
    advance_status              counters, convergence, budgets, transitions (one kernel)
    init_state of stage k+1     for systems that just entered it (device-side masks)
    AFTER_STEP hooks

A model that supports it (``supports_skip_finished``, e.g. Lennard-Jones) is asked to
skip the systems that finished (converged, out of steps, failed) but wait in the batch for
the next refill point, or for the slowest system of a batch run: they no longer move, so
their forces, energy and stress stay valid, and a step costs what the moving systems cost.

Nothing above synchronises with the host. Every ``refill_frequency`` steps (a *refill
point*) the loop reads the per-system status once: graduated systems leave the batch,
their graduation hooks and sinks fire, and -- in inflight mode -- the sampler refills the
freed capacity: survivors and newcomers are gathered into the new live batch in one
device-side pass (:meth:`~batchmd.data.Batch.select_and_append`; newcomers enter at the
end). Refilled systems are PENDING: the next step's evaluation gives them forces (and a
fresh neighbor list) at their initial positions before their first move; see
:mod:`batchmd.dynamics.refill`. A stage may do host work there too: its
``at_refill_point(batch, k)`` runs before the status read and may end systems, and its
``transient_fields`` stay out of graduated systems (equilibration as graduation,
:mod:`batchmd.dynamics.equilibration`).

``n_steps`` on graduated systems counts the steps taken in total, over all stages
(``stage_steps`` counts steps in the last stage). Each stage's outcome per system (status,
steps, final fmax of optimizers, mean temperature of MD) is recorded on the device and
given to graduated systems as ``stage{k}_*`` fields (:mod:`batchmd.dynamics.stage_results`).

Example
-------
See ``examples/inflight_batching.py`` (the seed tutorial)::

    fused = FusedStage(sub_stages=[(0, fire), (1, nvt)], sampler=sampler,
                       sinks=[HostMemory(capacity=30)], refill_frequency=5)
    fused.run(batch=None, n_steps=500)     # None once the dataset is exhausted
"""

from __future__ import annotations

import logging

import torch

from batchmd.dynamics.admission import check_model_stress
from batchmd.dynamics.hooks import HookContext, HookStage, RunStats
from batchmd.dynamics.cuda_graph import StepGraph, graph_steps_allowed
from batchmd.dynamics.guards import GuardRunner, resolve_guards
from batchmd.dynamics.oom import OOMRecovery
from batchmd.dynamics.outputs import ModelOutputs
from batchmd.dynamics.refill import RefillPoints
from batchmd.dynamics.constraints import (apply_com_constraint, apply_force_constraints, record_com_reference,
                                          record_degrees_of_freedom)
from batchmd.dynamics.stage_results import StageRecorder
from batchmd.dynamics.stages import NoProgressWarning, normalise_stages, stage_tables, warn_if_idle
from batchmd.dynamics.velocities import apply_velocity_policy
from batchmd.kernels import bookkeeping as bk
from batchmd.kernels.reductions import chunk_plan
from batchmd.runtime import CachedLaunch, torch_threads, WarpViewCache, to_warp

__all__ = ["FusedStage", "NoProgressWarning"]


log = logging.getLogger(__name__)


class FusedStage(RefillPoints, OOMRecovery, ModelOutputs):
    """Chain dynamics stages over one live batch; optionally refill it from a sampler.

    Parameters
    ----------
    sub_stages : list of (int, Dynamics) or Dynamics
        The stages in order; indices must be 0, 1, 2, ...
    sampler : SizeAwareSampler, optional
        Inflight mode: ``run(batch=None)`` builds the live batch from the sampler and
        refills freed slots with its samples.
    sinks : list, optional
        Every graduated system is written once to each sink (objects with ``write(batch)``).
    hooks : list of Hook, optional
        Run-level hooks (see :mod:`batchmd.dynamics.hooks`).
    refill_frequency : int
        Steps between refill points (graduation, sinks, refills, termination check).
    device, dtype : optional
        Device and floating dtype of the live batch in inflight mode (default: those of
        the samples; CPU and float32 for the seed tutorial).
    model : callable, optional
        The model; by default the stages' shared model (all stages must share one model,
        since one evaluation per step serves every stage).
    compute_stress : bool
        Ask models that write into the batch (``supports_out``, e.g. Lennard-Jones) for the
        stress (eV/Å^3) at every evaluation. Off by default (none of FIRE, NVE,
        NVTLangevin or NoseHooverChainNVT needs it; it costs ~15% of a Lennard-Jones
        evaluation); systems then carry a NaN ``stress``, never a stale one. Stages that
        declare ``needs_stress`` (the MTK barostats, optimizers with a cell filter) turn it on whatever this says; a model
        declaring ``computes_stress=False`` is then refused (``ValueError``).
    cpu_threads : int, None or "auto"
        torch's intra-op threads while :meth:`run` works on a CPU batch (restored after).
        ``"auto"`` (default): 1 when the model computes in Warp kernels
        (``model.torch_compute`` False, e.g. Lennard-Jones), since the loop's own torch ops
        are then small bookkeeping for which OpenMP thread wake-ups cost more than they
        save (inflight W4W on 2 cores: 2.7x faster); otherwise unchanged. ``None``: never
        touch torch's setting.
    cuda_graph : bool or "auto"
        On a GPU, replay the steps between refill points as one captured CUDA graph
        (:mod:`batchmd.dynamics.cuda_graph`): one launch instead of ~25 per step.
        ``"auto"`` (default): when the model declares ``supports_cuda_graph`` (e.g.
        Lennard-Jones), no hook runs inside the step and there is no sampler. ``True``:
        also for models that do not declare it (they must not synchronise or allocate in
        ``forward``), and in inflight mode with ``refill_in_place`` (refills then keep the
        batch's tensors, so a graph survives them; not yet measured on a GPU).
        ``False``: never. Results are bitwise those of eager steps.
    refill_in_place : bool
        Inflight mode: write newcomers into graduated slots in place (no new tensors, views
        or launches; the model refreshes its caches through ``systems_replaced``). With a
        model that declares ``supports_empty_systems`` (Lennard-Jones) and no edges, the
        live batch is *padded* (:mod:`batchmd.dynamics.slot_layout`): fixed ``2 x
        max_batch_size`` system rows and ``max_atoms`` atom rows, and a slot takes any
        sample that fits its free rows (first fit), compacting rarely. Otherwise a slot
        takes the earliest remaining sample of exactly its atom count, before samples that
        fit the freed space are appended as usual. Samples are thus served out of turn: a
        different serving order, the same per-system results (each system's trajectory
        does not depend on its slot or neighbours). Hooks that run inside the step see the
        padding as EMPTY systems. Default False.
    oom_retry : bool
        Recover from ``torch.OutOfMemoryError`` in the model's evaluation: shrink the live
        batch (unmoved systems go back to the sampler), evaluate in chunks if still needed,
        retry the step; nothing is lost or duplicated (:mod:`batchmd.dynamics.oom`).
        Default True.
    guards : Guards, True or False
        Runaway guards (:mod:`batchmd.dynamics.guards`): non-finite positions, velocities,
        cell and stress, a density bound (atoms/Å^3), an MD displacement bound (Å/step) and
        an energy-drop bound (eV/atom) fail a system with a reason, on the device. True
        (default): ``Guards()``; False: off (non-finite energy and forces still fail).
    """

    def __init__(
        self,
        sub_stages,
        sampler=None,
        sinks=None,
        hooks=None,
        refill_frequency: int = 10,
        device=None,
        dtype=None,
        model=None,
        compute_stress: bool = False,
        cpu_threads: int | str | None = "auto",
        cuda_graph: bool | str = "auto",
        refill_in_place: bool = False,
        oom_retry: bool = True,
        guards=True,
    ) -> None:
        self.stages = normalise_stages(sub_stages)
        self.guards = resolve_guards(guards)
        self._guard = GuardRunner(self.guards, self.stages)
        self._stepping = False  # inside step(): a system failing the guards before the model took a step
        self._recorder = StageRecorder(self.stages)
        if cuda_graph not in (True, False, "auto"):
            raise ValueError(f"FusedStage: cuda_graph must be True, False or 'auto', got {cuda_graph!r}")
        self.cuda_graph = cuda_graph
        self._graphs = StepGraph()
        self.refill_in_place = bool(refill_in_place)
        self.oom_retry = bool(oom_retry)
        self._eval_max_atoms = None  # atoms per model call after an out-of-memory error (oom.py)
        self._newcomers = {}  # system_id -> sample, for systems served at the last refill point
        self._layout = None  # SlotLayout of a padded live batch (refill_in_place with a model that allows it)
        if not (cpu_threads is None or cpu_threads == "auto" or (isinstance(cpu_threads, int) and cpu_threads >= 1)):
            raise ValueError(f"FusedStage: cpu_threads must be 'auto', None or an int >= 1, got {cpu_threads!r}")
        self.cpu_threads = cpu_threads
        models = {id(stage.model): stage.model for stage in self.stages}
        if model is None:
            if len(models) != 1:
                raise ValueError("FusedStage: all stages must share the same model object (one evaluation per step)")
            model = next(iter(models.values()))
        self.model = model
        check_model_stress(self.stages, model)  # admission's rule on the model (admission.py)
        self._resuming = False
        self.compute_stress = bool(compute_stress)
        self.sampler = sampler
        self.sinks = list(sinks) if sinks is not None else []
        # A recorder spanning several hook stages (batchmd.trajectory) gives its parts via loop_hooks().
        self.hooks = [h for hook in (hooks or []) for h in (hook.loop_hooks() if hasattr(hook, "loop_hooks") else [hook])]
        if int(refill_frequency) < 1:
            raise ValueError(f"FusedStage: refill_frequency must be >= 1, got {refill_frequency}")
        self.refill_frequency = int(refill_frequency)
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.stats = RunStats()
        self._step_index = 0
        self._tables = None
        self._buf = None
        self._launch_stats = CachedLaunch(bk.system_force_stats_overloads)
        self._launch_stats_chunks = CachedLaunch(bk.system_force_stats_chunks_overloads)
        self.chunked_reductions: bool | None = None  # None: chunked force statistics on GPUs (tests force it)
        self._launch_advance = CachedLaunch(bk.advance_status_overloads)
        self._reported = None
        self._owned_status = None
        # The first evaluation of a run is always complete: a batch may arrive with outputs
        # from another model or loop, which skipping finished systems would keep.
        self._complete_next = True

    # ----------------------------------------------------------------- composition
    def __add__(self, other) -> "FusedStage":
        other_stages = other.stages if isinstance(other, FusedStage) else [other]
        return FusedStage(
            sub_stages=self.stages + list(other_stages),
            sampler=self.sampler,
            sinks=self.sinks,
            hooks=self.hooks,
            refill_frequency=self.refill_frequency,
            device=self.device,
            dtype=self.dtype,
            compute_stress=self.compute_stress,
            cpu_threads=self.cpu_threads,
            cuda_graph=self.cuda_graph,
            refill_in_place=self.refill_in_place,
            oom_retry=self.oom_retry,
            guards=self.guards is not None and self.guards,
        )

    @property
    def num_stages(self) -> int:
        """Number of chained stages."""
        return len(self.stages)

    # ----------------------------------------------------------------- device tables
    def _stage_tables(self, device) -> dict:
        if self._tables is None or self._tables["device"] != device:
            self._tables = stage_tables(self.stages, device)
        return self._tables

    def _buffers(self, batch) -> dict:
        """Per-batch-structure buffers and Warp views (rebuilt only when the batch object changes)."""
        buf = self._buf
        if buf is not None and buf["batch"] is batch and buf["shape"] == (batch.num_graphs, batch.num_nodes):
            return buf
        b, dev = batch.num_graphs, batch.device
        if not batch.has_field("fmax") or batch["fmax"].dtype != batch.dtype or batch["fmax"].shape != (b,):
            batch.set_field("fmax", torch.zeros(b, dtype=batch.dtype, device=dev), "system")
        if batch.has_field("stress") and not self._stress_computed():
            # Not computed in this run: a stress the systems arrived with no longer applies.
            batch.set_field("stress", torch.full((b, 3, 3), float("nan"), dtype=batch.dtype, device=dev), "system")
        # Force statistics in chunks of atoms for large systems on GPUs (chunk_plan); a maximum
        # is order independent: the same numbers either way.
        largest = int(batch.num_atoms_per_system.max()) if b else 0  # one read per batch structure
        chunk, count = chunk_plan(largest, dev, self.chunked_reductions)
        part_max_sq = torch.zeros(b, count, dtype=batch.dtype, device=dev)
        part_finite = torch.zeros(b, count, dtype=torch.int32, device=dev)  # failure bits per chunk
        part_disp = torch.zeros(b, count, dtype=torch.float64, device=dev)  # MD displacement bound per chunk (Å)
        buf = {
            "batch": batch,
            "shape": (b, batch.num_nodes),
            "stats_chunk": (chunk, count, to_warp(part_max_sq), to_warp(part_finite), to_warp(part_disp)),
            "finite": torch.zeros(b, dtype=torch.int32, device=dev),  # failure bits, 0 = finite
            "converged": torch.zeros(b, dtype=torch.bool, device=dev),
            "entered": torch.zeros(b, dtype=torch.bool, device=dev),
            "enter": torch.zeros(max(self.num_stages - 1, 0), b, dtype=torch.bool, device=dev),
            "views": WarpViewCache(),
        }
        self._buf = buf
        return buf

    # ----------------------------------------------------------------- priming
    def _evaluate(self, batch) -> None:
        """One model evaluation; results written into the batch; per-system fmax, finite and force-criterion flags."""
        self._guard.before_evaluation(batch, self._buffers(batch)["views"], self._active_atom_steps(batch.device),
                                      self._stepping)  # FAILED here: no neighbors, NaN energy (guards.py)
        targets = self._output_fields(batch)
        if targets is None:
            out = self._call_model(batch)  # in chunks after an out-of-memory error (oom.py)
        elif self._outputs_kept and not self._complete_next and getattr(self.model, "supports_skip_finished", False):
            out = self.model(batch, out=targets, skip_finished=True)  # finished systems keep their outputs
        else:
            out = self.model(batch, out=targets)
        self._complete_next = False
        forces = out["forces"]
        energy = out["energy"]
        if forces.dtype != batch.dtype or energy.dtype != batch.dtype:
            raise TypeError(
                f"FusedStage: the model returned {forces.dtype} forces for a {batch.dtype} batch; "
                "models must compute in the batch's dtype"
            )
        b = batch.num_graphs
        self._store(batch, "forces", forces, "atom")
        self._store(batch, "energies", energy.reshape(b, 1), "system")
        apply_force_constraints(batch)  # FixAtoms: fixed atoms feel no force (as ASE's get_forces)
        if out.get("stress") is not None:
            self._store(batch, "stress", out["stress"].reshape(b, 3, 3), "system")
        buf = self._buffers(batch)
        views = buf["views"]
        tables = self._stage_tables(batch.device)
        chunk, count, w_part_max_sq, w_part_finite, w_part_disp = buf["stats_chunk"]
        w_forces, w_ptr = views("forces", batch.forces, vector=True), views("ptr", batch.ptr)
        if chunk:
            self._launch_stats_chunks(batch.dtype, (b, count), [w_forces, w_ptr, chunk, w_part_max_sq, w_part_finite,
                                                                w_part_disp, *self._guard.chunk_args(batch, views)],
                                      batch.device)
        self._launch_stats(
            batch.dtype,
            b,
            [
                w_forces,
                views("energies", batch.energies.view(-1)),
                w_ptr,
                views("stage", batch["stage"]),
                tables["w_fmax"],
                chunk,
                w_part_max_sq,
                w_part_finite,
                w_part_disp,
                views("fmax", batch["fmax"]),
                views("finite", buf["finite"]),
                views("converged", buf["converged"]),
                *self._guard.stats_args(batch, views, self._stress_computed()),
            ],
            batch.device,
        )

    def _advance(self, batch, increment: bool) -> None:
        """Counters, convergence and transitions on the device; init state of entered stages."""
        b, dev = batch.num_graphs, batch.device
        if b == 0:
            return
        buf = self._buffers(batch)
        views = buf["views"]
        tables = self._stage_tables(dev)
        stage_field = batch["stage"]
        converged = buf["converged"]
        for k, hook in tables["custom"]:
            hit = hook(batch)
            converged.logical_or_(hit if self.num_stages == 1 else (hit & (stage_field == k)))
        self._recorder.ensure_fields(batch)
        self._recorder.before_advance(batch, views, increment)
        self._launch_advance(
            batch.dtype,
            b,
            [
                1 if increment else 0,
                views("converged", converged),
                views("finite", buf["finite"]),
                tables["w_budget"],
                tables["w_criterion"],
                self.num_stages,
                views("stage", stage_field),
                views("status", batch["status"]),
                views("stage_steps", batch["stage_steps"]),
                views("n_steps", batch["n_steps"]),
                views("entered", buf["entered"]),
                views("ptr", batch.ptr),
                views("counter", self._active_atom_steps(dev)),
                views("failure", batch["failure"]),
            ],
            dev,
        )
        entered = buf["entered"]
        self._recorder.after_advance(batch, views, entered)
        for k in range(1, self.num_stages):
            mask = buf["enter"][k - 1]  # persistent buffers: the policy kernel's views stay cached
            torch.eq(stage_field, k, out=mask)
            mask.logical_and_(entered)
            self.stages[k].init_state(batch, mask)
            apply_velocity_policy(self.stages[k], batch, mask, previous=self.stages[k - 1])

    def _reset_loop_fields(self, batch) -> None:
        """Fresh loop fields: every system ACTIVE in stage 0 with zero step counters (new tensors)."""
        b, dev = batch.num_graphs, batch.device
        for name in ("stage", "status", "stage_steps", "n_steps"):
            batch.set_field(name, torch.zeros(b, dtype=torch.int32, device=dev), "system")
        batch.set_field("failure", torch.zeros(b, dtype=torch.int32, device=dev), "system")
        batch.set_field("guard_energy_ref", torch.full((b,), float("nan"), dtype=batch.dtype, device=dev), "system")
        self._recorder.ensure_fields(batch, fresh=True)

    def _owns(self, batch) -> bool:
        """Whether ``batch`` is the one this loop last primed or stepped (its ``status`` tensor is ours)."""
        return batch.has_field("status") and batch["status"] is self._owned_status

    def _claim(self, batch) -> None:
        self._owned_status = batch["status"] if batch.has_field("status") else None

    def prime(self, batch, resume: bool = False):
        """Prepare a batch for stepping: loop fields, stage-0 state, forces, convergence check.

        Called automatically by :meth:`run` and :meth:`step`. By default every system
        starts *fresh* in stage 0: new stage state (FIRE's ``dt``/``a``, MD parameters and
        the velocity policy), zero step counters, ``status`` ACTIVE, whatever loop or state
        fields the batch carries from an earlier run. ``resume=True`` continues a batch
        that already carries loop fields where it stopped (same stage, same counters,
        same stage state), e.g. a batch returned by ``run(n_steps=...)`` of this pipeline.
        """
        self._resuming = bool(resume and batch.has_field("status") and batch.has_field("stage"))
        self._check_admission(batch)  # every system, for every stage it will meet (admission.py)
        if resume and batch.has_field("status"):
            if not batch.has_field("failure"):
                batch.set_field("failure", torch.zeros(batch.num_graphs, dtype=torch.int32, device=batch.device),
                                "system")
            if not batch.has_field("fmax"):
                batch = self._evaluate_safely(batch)
        else:
            self._reset_loop_fields(batch)
            self._init_stage_state(batch)
            batch = self._evaluate_safely(batch, first=True)
            self._advance(batch, increment=False)
        self._claim(batch)
        return batch

    # ----------------------------------------------------------------- one step
    def _call_hooks(self, batch, point: HookStage, replayed: bool = False) -> None:
        """Run the hooks of ``point`` due at this step; ``replayed``: after a replayed CUDA-graph
        chunk, only the ``host_only`` ones, whatever their frequency (see Hook.host_only)."""
        if self._graphs.capturing:  # a captured step runs later, on the device only
            return
        step = self._step_index
        owned = [(k, h) for k, stage in enumerate(self.stages) for h in stage.hooks]
        for stage_index, hook in owned + [(None, h) for h in self.hooks]:
            if hook.stage != point:
                continue
            due = hook.host_only if replayed else step % max(1, getattr(hook, "frequency", 1)) == 0
            if due:
                hook(batch, HookContext(step, stage_index, self.stats))

    def step(self, batch):
        """Advance every active system by one step; returns the batch (a smaller one after an
        out-of-memory error in inflight mode, see :mod:`batchmd.dynamics.oom`).

        The first step of a batch this loop has not primed (or that another loop has
        stepped since) primes it fresh (see :meth:`prime`); later calls continue.
        """
        if not self._owns(batch):
            batch = self.prime(batch)
        if batch.num_graphs == 0:
            return batch
        self._call_hooks(batch, HookStage.BEFORE_STEP)
        for k, stage in enumerate(self.stages):
            stage.pre_force(batch, k)
        self._stepping = True
        try:
            batch = self._evaluate_safely(batch)
        finally:
            self._stepping = False
        self._claim(batch)  # an out-of-memory recovery may have handed back a smaller batch
        self._call_hooks(batch, HookStage.AFTER_FORCES)
        for k, stage in enumerate(self.stages):
            stage.post_force(batch, k)
        if batch.has_field("fix_com"):  # FixCom after an MD step: centre of mass and its velocity back
            md = self._stage_tables(batch.device)["md"]
            apply_com_constraint(batch, md[batch["stage"].long()] & (batch["status"] == 0))
        self._advance(batch, increment=True)
        self._step_index += 1
        self.stats.steps += 1
        self._call_hooks(batch, HookStage.AFTER_STEP)
        return batch

    def _graph_steps(self, batch) -> bool:
        """Whether the next chunk of steps may be replayed as a CUDA graph (see ``cuda_graph``)."""
        return graph_steps_allowed(self, batch)

    def _init_stage_state(self, batch) -> None:
        """Fresh stage-0 state for every system; later stages' fields created (reset on entry)."""
        everyone = torch.ones(batch.num_graphs, dtype=torch.bool, device=batch.device)
        record_com_reference(batch)  # FixCom: where each centre of mass stays during this run
        record_degrees_of_freedom(batch)  # the one per-system count every thermostat and temperature reads
        self.stages[0].init_state(batch, everyone)
        apply_velocity_policy(self.stages[0], batch, everyone, first=True)
        for stage in self.stages[1:]:
            stage.init_state(batch, ~everyone)

    def _to_run_device(self, batch):
        if self.device is not None or self.dtype is not None:
            batch = batch.to(self.device if self.device is not None else batch.device, self.dtype)
        return batch

    # ----------------------------------------------------------------- the run
    def run(self, batch=None, n_steps: int | None = None, resume: bool = False):
        """Run the stages (torch threads on CPU as set by ``cpu_threads``).

        Parameters
        ----------
        batch : Batch or None
            ``None`` (inflight mode, needs a sampler): the live batch is built with
            ``sampler.build_initial_batch()`` and refilled until the dataset is exhausted.
            A Batch without a sampler: those systems are run through the stages.
        n_steps : int, optional
            Total step budget (loop iterations).
        resume : bool
            False (default): every system of ``batch`` starts this run fresh in stage 0
            (new stage state, counters and status; see :meth:`prime`), whatever fields an
            earlier run left in it -- a returned batch runs again. True: continue a batch
            that carries loop fields where it stopped (mid-stage), e.g. one returned by an
            earlier ``run(n_steps=...)`` of this pipeline. See ``docs/workflows.rst``.

        Warns
        -----
        NoProgressWarning
            When the run advanced no system (every system converged at its first
            evaluation, failed, or had no steps to take), naming the counts.

        Returns
        -------
        Batch or None
            Inflight mode: ``None`` when every sample has graduated, otherwise the batch of
            systems still live when the budget ran out. Batch mode: the batch, with
            ``status``, ``converged``, ``n_steps`` and ``stage_steps`` per system.
        """
        device = self.device or (batch.device if batch is not None else torch.device("cpu"))
        threads = self.cpu_threads
        if threads == "auto":
            threads = 1 if not getattr(self.model, "torch_compute", True) else None
        with torch_threads(threads if device.type == "cpu" else None):
            return self._run(batch, n_steps, resume)

    def _run(self, batch, n_steps, resume=False):
        if n_steps is not None and (int(n_steps) != n_steps or n_steps < 0):
            raise ValueError(f"FusedStage.run: n_steps must be a non-negative integer, got {n_steps!r}")
        if n_steps is None:
            for k, stage in enumerate(self.stages):
                if stage.convergence_hook is None and stage.n_steps is None:
                    raise ValueError(
                        f"FusedStage.run: stage {k} ({type(stage).__name__}) has neither a convergence_hook nor "
                        "n_steps, so its systems would never finish; give the stage n_steps or call run(n_steps=...)"
                    )
        if batch is None:
            if self.sampler is None:
                raise ValueError("FusedStage.run(batch=None) needs a sampler (inflight mode)")
            self.stats = RunStats(systems_total=len(self.sampler), max_atoms=self.sampler.max_atoms)
            batch = self._initial_batch()  # systems refused at admission are written as failed here
            if batch is None:  # every served system was refused
                warn_if_idle(self.stats, n_steps)
                return None
        else:
            self.stats = RunStats()
        self._reported = None
        self._complete_next = True
        self._graphs.reset()
        self._step_index = 0
        self._accounted_steps = 0
        self._accounted_in_use = 0
        self._active_atom_steps(batch.device).zero_()
        self._eval_max_atoms = None
        batch = self.prime(batch, resume=resume and self.sampler is None)
        batch = self._lay_out(batch)  # refill_in_place: a padded live batch (slot_layout.py)
        limit = n_steps
        taken = 0
        while True:
            if batch.num_graphs == 0 and (self.sampler is None or self.sampler.exhausted):
                break
            batch = self._refill_point(batch)
            self._claim(batch)
            if batch.num_graphs == 0:
                if self.sampler is None or self.sampler.exhausted:
                    break
                continue
            if self.sampler is None and self._reported is not None and bool(self._reported.all()):
                break
            if limit is not None and taken >= limit:
                break
            chunk = self.refill_frequency if limit is None else min(self.refill_frequency, limit - taken)
            graphs = self._graph_steps(batch)
            between = getattr(self.model, "between_graph_chunks", None) if graphs else None
            eager = bool(between(batch)) if between is not None else False  # e.g. grow an overflowed list
            if graphs and not eager:
                if self._graphs.run(self, batch, chunk):
                    self._call_hooks(batch, HookStage.AFTER_STEP, replayed=True)
            else:
                if eager:  # the model does host work first (its buffers may move): capture anew after
                    self._graphs.reset()
                for _ in range(chunk):
                    batch = self.step(batch)
            taken += chunk
        if self.sampler is None:
            batch = self._refill_point(batch)
            self._claim(batch)
            batch.set_field("converged", self._recorder.converged(batch["status"]).reshape(-1, 1), "system")
            warn_if_idle(self.stats, n_steps)
            return batch
        batch = self._refill_point(batch) if batch.num_graphs else batch
        batch = self._unpad(batch)
        self._claim(batch)
        warn_if_idle(self.stats, n_steps)
        if batch.num_graphs == 0 and self.sampler.exhausted:
            return None
        return batch
