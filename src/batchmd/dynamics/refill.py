"""Refill points of :class:`~batchmd.dynamics.fused.FusedStage`: graduation, sinks, refills.

At a refill point the loop reads the per-system status once (with the throughput
counters): finished systems graduate (their graduation hooks and sinks fire, each sink
once per system), and in inflight mode the sampler's next samples that fit the freed
atoms, edges and slots enter the live batch in one pass
(:meth:`~batchmd.data.Batch.select_and_append`) as PENDING systems, primed by the next
step's evaluation. With ``refill_in_place`` a graduated slot first takes a sample of
exactly its atom count, written into the slot's rows
(:meth:`~batchmd.data.Batch.overwrite_systems`): the batch keeps its tensors.

Admission (:mod:`batchmd.dynamics.admission`): every sample the sampler serves -- for the
first live batch, an in-place refill, an appended batch or a compaction -- is checked on
the host against every stage it will meet (elements, periodicity, constraints) before it
enters; one that fails never enters: it is written to the sinks as FAILED with its
:class:`~batchmd.dynamics.status.FailureReason` bit, an ``AdmissionWarning`` names its
``system_id``, and the sampler's next sample takes its place. A batch handed to the loop
(``run(batch)``, ``step(batch)``, resumes) is known up front and refused with a
``ValueError`` naming the system instead.

Example
-------
Used through :class:`~batchmd.dynamics.fused.FusedStage`; see ``examples/inflight_batching.py``.
"""

from __future__ import annotations

import time

import torch

from batchmd.dynamics.admission import Admission, batch_problems, system_label, warn_refused
from batchmd.dynamics.hooks import HookContext, HookStage
from batchmd.dynamics.status import FailureReason, SystemStatus

__all__ = ["RefillPoints"]


class RefillPoints:
    """Graduation and refill methods of :class:`~batchmd.dynamics.fused.FusedStage` (a mixin).

    Uses the loop's ``stages``, ``hooks``, ``sinks``, ``sampler``, ``stats``, ``model`` and its
    ``_reset_loop_fields`` / ``_init_stage_state`` / ``_to_run_device`` / ``_claim`` methods;
    keeps the padded layout (``_layout``, :mod:`batchmd.dynamics.slot_layout`).
    """

    def _graduate(self, batch, indices: torch.Tensor) -> None:
        """Fire graduation hooks and sinks for systems ``indices`` (each sink once per system)."""
        if indices.numel() == 0:
            return
        # Caches (neighbor lists, ...) and stages' transient buffers (``transient_fields``, e.g. the
        # series of batchmd.dynamics.equilibration) stay behind: results carry physics and bookkeeping only.
        transient = tuple(name for stage in self.stages for name in getattr(stage, "transient_fields", ())
                          if batch.has_field(name))
        graduated = batch.without_fields(("guard_energy_ref", *transient), prefix="_").index_select(
            indices.to(batch.device))
        graduated = graduated.to("cpu")
        graduated = self._recorder.expand(graduated)
        status = graduated["status"]
        graduated.set_field("converged", self._recorder.converged(status).reshape(-1, 1), "system")
        if graduated.has_field("failure"):  # FAILED without a reason: a hook set the status
            unexplained = (status == int(SystemStatus.FAILED)) & (graduated["failure"] == 0)
            graduated.set_field("failure", torch.where(unexplained, int(FailureReason.HOOK), graduated["failure"]),
                                "system")
        self.stats.count_graduated(graduated, self._recorder)
        written: set[int] = set()
        last_stage = graduated["stage"]
        for stage_index, stage in enumerate(self.stages):
            hooks = [h for h in stage.hooks if h.stage == HookStage.ON_GRADUATION]
            if not hooks:
                continue
            mine = torch.nonzero(last_stage == stage_index).reshape(-1)
            if mine.numel() == 0:
                continue
            subset = graduated if mine.numel() == graduated.num_graphs else graduated.index_select(mine)
            for hook in hooks:
                hook(subset, HookContext(self._step_index, stage_index, self.stats))
                if hasattr(hook, "sink"):
                    written.add(id(hook.sink))
        for hook in self.hooks:
            if hook.stage == HookStage.ON_GRADUATION:
                hook(graduated, HookContext(self._step_index, None, self.stats))
                if hasattr(hook, "sink"):
                    written.add(id(hook.sink))
        for sink in self.sinks:
            if id(sink) not in written:
                sink.write(graduated)
                written.add(id(sink))

    def _new_systems(self, free_atoms: int, free_edges: int | None, free_slots: int):
        """Ask the sampler for samples that fit; returns a Batch with fresh loop and stage-0 state, or None.

        Forces are not evaluated here: the newcomers are PENDING, so the next step's single
        model evaluation gives them forces at their initial positions while they stay put,
        and its convergence check runs as a priming check (no step counted).
        """
        from batchmd.data import Batch

        samples = self._admitted(self.sampler.take(free_atoms, free_edges, free_slots))
        if not samples:
            return None
        self._remember_newcomers(samples)
        return self._prepare_new(Batch.from_data_list(samples))

    def _remember_newcomers(self, samples) -> None:
        """Keep the samples served at this refill point until they move (out-of-memory recovery, oom.py)."""
        for data in samples:
            self._newcomers[int(data.system_id.reshape(-1)[0])] = data

    def _initial_batch(self):
        """The sampler's first live batch, on the run's device (its samples remembered as newcomers).

        Samples refused at admission are written as failed (:meth:`_admitted`) and more are
        taken until the budget is full or the sampler has nothing that fits; None when every
        sample was refused.
        """
        from batchmd.data import Batch

        self._newcomers = {}
        initial = getattr(self.sampler, "initial_samples", None)
        if initial is None:  # a sampler without it: no give-back of the initial systems
            return self._admitted_batch(self._to_run_device(self.sampler.build_initial_batch()))
        sampler = self.sampler
        refused = self.stats.systems_refused
        samples = self._admitted(initial())
        while self.stats.systems_refused > refused:  # refused samples left room: take more
            refused = self.stats.systems_refused
            free_atoms = sampler.max_atoms - sum(d.num_nodes for d in samples)
            free_slots = sampler.max_batch_size - len(samples)
            free_edges = None
            if sampler.max_edges is not None:
                free_edges = sampler.max_edges - sum(int(d.sample_num_edges.reshape(-1)[0]) for d in samples)
            if free_slots <= 0 or free_atoms <= 0 or sampler.exhausted:
                break
            more = sampler.take(free_atoms, free_edges, free_slots)
            if not more:
                break
            samples += self._admitted(more)
        if not samples:
            return None
        self._remember_newcomers(samples)
        return self._to_run_device(Batch.from_data_list(samples))

    # ----------------------------------------------------------------- admission
    def _check_admission(self, batch) -> None:
        """Refuse a batch handed to the loop (known up front) whose systems may not run their stages.

        Raises ``UnsupportedSpeciesError`` (elements) or ``ValueError`` naming the first
        system (``system_id``, else its index in the batch) and the rule, before anything
        moves. Each system is checked from its ``stage`` on when resuming, else from stage 0.
        """
        self._check_species(batch)
        problems = batch_problems(batch, self.stages, model=self.model, everyone=not self._resuming)
        if problems:
            s, _, phrase = problems[0]
            more = f" (and {len(problems) - 1} more systems)" if len(problems) > 1 else ""
            raise ValueError(f"FusedStage: {system_label(batch, s)} {phrase}{more}")

    def _admission_rules(self) -> Admission:
        """The stages' and the model's rules, prepared once (rebuilt if the stages or model change)."""
        key = (tuple(id(stage) for stage in self.stages), id(self.model))
        cached = getattr(self, "_admission", None)
        if cached is None or cached[0] != key:
            cached = (key, Admission(self.stages, self.model))
            self._admission = cached
        return cached[1]

    def _admitted(self, samples) -> list:
        """The served ``samples`` that pass admission (:mod:`batchmd.dynamics.admission`) for every stage.

        A refused sample never enters the live batch: it is written to the sinks at once as
        FAILED with its :class:`FailureReason` bit, and an ``AdmissionWarning`` names its
        ``system_id`` and the rule. Host-side, on the newcomers of a refill point only.
        """
        from batchmd.data import Batch

        kept, refused, codes = [], [], []
        rules = self._admission_rules()
        for data in samples:
            found = rules.data_problem(data)
            if found is None:
                kept.append(data)
            else:
                refused.append(data)
                codes.append(found)
        if refused:
            self._refuse(Batch.from_data_list(refused), codes)
        return kept

    def _admitted_batch(self, batch):
        """The systems of a served batch that pass admission; the others are refused (see :meth:`_admitted`)."""
        problems = batch_problems(batch, self.stages, model=self.model, everyone=True)
        if not problems:
            return batch
        bad = [s for s, _, _ in problems]
        self._refuse(batch.without_fields(prefix="_").index_select(torch.tensor(bad, device=batch.device)),
                     [(bits, phrase) for _, bits, phrase in problems])
        keep = torch.ones(batch.num_graphs, dtype=torch.bool)
        keep[bad] = False
        return batch.index_select(keep.to(batch.device)) if bool(keep.any()) else None

    def _refuse(self, batch, codes) -> None:
        """Write the refused systems of ``batch`` to the sinks as FAILED (they never ran); ``codes``:
        ``[(FailureReason bits, phrase)]`` per system."""
        batch = self._to_run_device(batch)
        warn_refused([(system_label(batch, i), phrase) for i, (_, phrase) in enumerate(codes)])
        self._reset_loop_fields(batch)
        b, dev, dtype = batch.num_graphs, batch.device, batch.dtype
        batch["status"].fill_(int(SystemStatus.FAILED))
        batch.set_field("failure", torch.tensor([bits for bits, _ in codes], dtype=torch.int32, device=dev), "system")
        nan = float("nan")
        batch.set_field("energies", torch.full((b, 1), nan, dtype=dtype, device=dev), "system")
        batch.set_field("forces", torch.full_like(batch.positions, nan), "atom")
        batch.set_field("fmax", torch.full((b,), nan, dtype=dtype, device=dev), "system")
        batch.set_field("stress", torch.full((b, 3, 3), nan, dtype=dtype, device=dev), "system")
        self.stats.systems_refused += b
        self._graduate(batch, torch.arange(b))

    def _check_species(self, batch) -> None:
        """Refuse systems with elements the model has no parameters for, before they move.

        Calls the model's :meth:`~batchmd.models.Model.check_species` when it declares
        ``supported_numbers`` (Lennard-Jones presets, MLIPs): one line naming the elements
        and the ``system_id`` of the first system holding one. Runs at a run's start and on
        the host-side newcomers of each refill point (no device work in steady steps).

        Raises
        ------
        batchmd.models.base.UnsupportedSpeciesError
        """
        supported = getattr(self.model, "supported_numbers", None)
        if supported is None or not hasattr(self.model, "check_species"):
            return
        numbers = batch.atomic_numbers
        try:
            self.model.check_species(numbers)
        except ValueError as error:
            bad = torch.tensor(getattr(error, "unsupported", ()), dtype=numbers.dtype, device=numbers.device)
            if bad.numel() and batch.has_field("system_id"):
                system = int(batch.batch_idx[torch.isin(numbers, bad)][0])
                error.args = (f"{error.args[0]} (system_id {int(batch['system_id'].reshape(-1)[system])})",
                              *error.args[1:])
            raise

    def _request_admitted(self, request, num_atoms: int):
        """The sampler's next sample from ``request(num_atoms)`` that passes admission, or None."""
        while True:
            data = request(num_atoms)
            if data is None or self._admitted([data]):
                return data

    def _prepare_new(self, new):
        """Newcomers (admitted: see :meth:`_admitted`) on the run's device with loop fields, PENDING status and
        stage-0 state."""
        new = self._to_run_device(new)
        self._reset_loop_fields(new)  # a sample carrying loop fields from an earlier run starts fresh
        new["status"].fill_(int(SystemStatus.PENDING))
        self._init_stage_state(new)
        return new


    def _refill_point(self, batch):
        """Graduate finished systems and (inflight) refill; returns the new live batch.

        Host time spent here after the status read (which waits for queued device work) is
        added to ``stats.refill_seconds``; ``stats.refill_points`` counts the calls. A stage
        with an ``at_refill_point(batch, k)`` method (:class:`~batchmd.dynamics.equilibration.Equilibrate`)
        is called first, on the live batch: host work that may set systems' status on the device.
        """
        # Stages with host work at refill points (``at_refill_point(batch, k)``, e.g. the equilibration
        # test of batchmd.dynamics.equilibration) run first: they may end systems (status) before the read.
        for k, stage in enumerate(self.stages):
            at_refill = getattr(stage, "at_refill_point", None)
            if at_refill is not None:
                at_refill(batch, k)
        # The host synchronisations of a refill point: status, sizes, throughput counter.
        status = batch["status"].cpu()
        started = time.perf_counter()
        try:
            batch = self._refill_after_status(batch, status)
            layout = getattr(self, "_layout", None)
            self.stats.live_atoms = layout.live_atoms if layout is not None else batch.num_nodes
            return batch
        finally:
            self.stats.refill_seconds += time.perf_counter() - started
            self.stats.refill_points += 1

    def _refill_after_status(self, batch, status: torch.Tensor):
        self._account(batch)
        self._newcomers = {}  # every system served at the last refill point has moved since
        done = torch.nonzero((status != int(SystemStatus.ACTIVE)) & (status != int(SystemStatus.PENDING))
                             & (status != int(SystemStatus.EMPTY))).reshape(-1)
        if getattr(self, "_layout", None) is not None:
            return self._refill_padded(batch, done)
        if self.sampler is None:
            if self._reported is None or self._reported.numel() != batch.num_graphs:
                self._reported = torch.zeros(batch.num_graphs, dtype=torch.bool)
            fresh = done[~self._reported[done]]
            self._graduate(batch, fresh)
            self._reported[fresh] = True
            return batch
        self._graduate(batch, done)
        sizes = (batch.ptr[1:] - batch.ptr[:-1]).cpu()
        if self.refill_in_place:
            done = self._refill_in_place(batch, done, sizes)
        keep = torch.ones(batch.num_graphs, dtype=torch.bool)
        keep[done] = False
        free_atoms = self.sampler.max_atoms - int(sizes[keep].sum())
        free_slots = self.sampler.max_batch_size - int(keep.sum())
        free_edges = None
        if self.sampler.max_edges is not None:
            edges = batch["sample_num_edges"].reshape(-1).cpu()
            free_edges = self.sampler.max_edges - int(edges[keep].sum())
        new = self._new_systems(free_atoms, free_edges, free_slots)
        return self._insert(batch, keep, new)

    def _refill_in_place(self, batch, done: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Refill graduated slots with same-size samples, written in place; returns the slots left empty.

        Each graduated slot takes the earliest remaining sample of exactly its atom count
        (:meth:`SizeAwareSampler.request_same_size`), ahead of its turn in serving order.
        The batch keeps its tensors (no new layout, no new Warp views or launches); the
        model refreshes its caches for those systems (``systems_replaced``). Skipped when
        the batch has edges, the sampler an edge budget, or the model keeps ``_`` caches
        without ``systems_replaced``.
        """
        from batchmd.data import Batch

        notify = getattr(self.model, "systems_replaced", None)
        if (done.numel() == 0 or self.sampler.max_edges is not None or batch.num_edges
                or (notify is None and any(name.startswith("_") for name in batch.fields))):
            return done
        slots, samples, left = [], [], []
        for s in done.tolist():
            data = self._request_admitted(self.sampler.request_same_size, int(sizes[s]))
            if data is None:
                left.append(s)
            else:
                slots.append(s)
                samples.append(data)
        if samples:
            self._remember_newcomers(samples)
            new = self._prepare_new(Batch.from_data_list(samples))
            batch.overwrite_systems(slots, new)
            if notify is not None:
                notify(batch, torch.tensor(slots, dtype=torch.long, device=batch.device))
            self.stats.refills_in_place += len(slots)
        return torch.tensor(left, dtype=torch.long)

    def _lay_out(self, batch):
        """A padded live batch for in-place refills of any size, when the run allows it (else ``batch``)."""
        from batchmd.dynamics.slot_layout import SlotLayout, supports_padding

        self._layout = None
        if not (self.refill_in_place and batch.num_graphs and supports_padding(self.model, batch, self.sampler)):
            return batch
        sampler = self.sampler
        smallest = min(int(batch.num_atoms_per_system.min()), sampler.smallest_remaining() or sampler.max_atoms)
        slots = max(batch.num_graphs, min(sampler.max_batch_size, sampler.max_atoms // max(smallest, 1)))
        self._layout, padded = SlotLayout.lay_out(batch, slots, sampler.max_atoms)
        self._claim(padded)
        return padded

    def _unpad(self, batch):
        """The live systems of a padded batch, compact (the batch as it is when not padded)."""
        layout, self._layout = getattr(self, "_layout", None), None
        return batch if layout is None or batch.num_graphs != 2 * layout.num_slots else layout.unpad(batch)

    def _refill_padded(self, batch, done: torch.Tensor):
        """Refill a padded live batch in place (:mod:`batchmd.dynamics.slot_layout`); compact when fragmented."""
        from batchmd.data import Batch

        layout = self._layout
        self._graduate(batch, done)
        freed = done.tolist()
        layout.free(freed)
        samples = []

        def request(max_atoms: int):
            data = self._request_admitted(self.sampler.request_replacement, max_atoms)
            if data is not None:
                samples.append(data)
            return data

        placed = layout.plan(request)
        new = None
        if samples:
            self._remember_newcomers(samples)
            new = self._prepare_new(Batch.from_data_list(samples))
        rows = layout.write(batch, placed, new, freed)
        if placed:
            notify = getattr(self.model, "systems_replaced", None)
            if notify is not None:
                notify(batch, rows)
            self.stats.refills_in_place += len(placed)
        if layout.needs_compaction(self.sampler):
            return self._compact(batch)
        if self.sampler.exhausted and not layout.live.any():
            self._layout = None
            return layout.unpad(batch)  # no system left: the run ends
        return batch

    def _compact(self, batch):
        """Gather the live systems, append the sampler's next samples in serving order, lay out again."""
        from batchmd.dynamics.slot_layout import SlotLayout

        layout = self._layout
        compact = layout.unpad(batch)
        free_atoms = self.sampler.max_atoms - compact.num_nodes
        free_slots = self.sampler.max_batch_size - compact.num_graphs
        new = self._new_systems(free_atoms, None, free_slots)
        if new is not None:
            compact = compact.append(new)
        self._layout, padded = SlotLayout.lay_out(compact, layout.num_slots, layout.num_atoms)
        self._layout.compactions = layout.compactions + 1
        self.stats.compactions += 1
        return padded

    @staticmethod
    def _insert(batch, keep: torch.Tensor, new):
        """The systems ``keep`` (bool mask) stay, graduated ones leave, ``new`` systems enter at the end (one pass)."""
        if new is None:
            return batch if bool(keep.all()) else batch.index_select(keep.to(batch.device))
        return batch.select_and_append(keep.to(batch.device), new)

    def _active_atom_steps(self, device) -> torch.Tensor:
        """[2] int64 device counters: atom-steps taken, atoms in use (accumulated by advance_status)."""
        counter = getattr(self, "_atom_step_counter", None)
        if counter is None or counter.device != torch.device(device):
            counter = torch.zeros(2, dtype=torch.int64, device=device)
            self._atom_step_counter = counter
        return counter

    def _account(self, batch) -> None:
        """Update throughput counters at a refill point from the device-side counters (one read)."""
        counter = self._active_atom_steps(batch.device)
        total, in_use = counter.tolist()
        new_in_use = in_use - getattr(self, "_accounted_in_use", 0)
        self._accounted_in_use = in_use
        steps = self.stats.steps - getattr(self, "_accounted_steps", 0)
        self._accounted_steps = self.stats.steps
        self.stats.atom_steps = total
        if self.stats.max_atoms and steps > 0:
            self.stats.occupancy_sum += new_in_use / self.stats.max_atoms

