"""Device side of trajectory and thermo recording: snapshots without host syncs in the step.

A :class:`SnapshotCapture` decides, on the device, which systems are *due* at a step and
packs their rows into staging buffers; nothing in the step reads a value on the host.

Schedule (per system, independent of the batch it runs in): a system is recorded at the
end of every step after which its ``stage_steps`` is a multiple of ``every`` and at which it
was live (ACTIVE or PENDING at the start of the step), and once at the start of the run for
the systems of the initial batch. Systems that finish at their priming evaluation (never
moved) get no frame. So a system's frames are at its own stage steps
0, every, 2 every, ... of each stage, whether it started in the initial batch or came in
through an inflight refill, and whatever slot or neighbours it had: an interrupted run
resumed later (where systems rerun in other batches) records the same frames.

Which steps can have a due system is planned on the host once per refill point (one small
read of the live systems' status and stage steps, right after the loop's own sync, see
:meth:`SnapshotCapture._plan`): on the other steps the recorder does nothing. On a planned
step (device work only, ~10 small torch ops): a ``[B]`` due mask, its
cumulative sum (destination rows), and one ``index_copy_`` per packed field into the
staging buffers; a device counter advances. Every ``flush_every`` steps (the refill
points, where the loop synchronises anyway), at graduations and at :meth:`close`, the
counters are read (the one host sync), the staged rows are copied to host memory
(``non_blocking`` into pinned buffers on CUDA, with an event the writer thread waits
on) and handed to a :class:`~batchmd.trajectory.writer.BackgroundWriter` through a bounded
queue (when it is full, the loop waits: back-pressure, bounded memory).

Staging holds at most ``flush_every // every + 2`` rows per live system and atom, so it
never overflows between flushes (checked at each flush).

Hook stages (all run-level hooks of one :class:`~batchmd.dynamics.FusedStage`, see
:meth:`SnapshotCapture.loop_hooks`): ``BEFORE_STEP`` (who is live; the initial frames at
step 0), ``AFTER_STEP`` (record, flush every ``flush_every`` steps), ``ON_GRADUATION``
(flush, then mark the graduated systems complete in the store).
"""

from __future__ import annotations

import torch

from batchmd.dynamics.hooks import Hook, HookStage
from batchmd.dynamics.status import SystemStatus

__all__ = ["SnapshotCapture", "FileRecorder", "HostSnapshot"]

_ACTIVE, _PENDING, _EMPTY = int(SystemStatus.ACTIVE), int(SystemStatus.PENDING), int(SystemStatus.EMPTY)
_UNPLANNED = object()


class HostSnapshot:
    """Staged rows copied to the host: ``sys_float [S, m]``, ``sys_int [S, j]``, ``atom_float [A, k]``, ``atom_int [A]``.

    ``wait()`` blocks until the device-to-host copies are done (CUDA event; no-op on CPU).
    """

    def __init__(self, tensors: dict, event=None) -> None:
        self.tensors, self.event = tensors, event

    def wait(self) -> dict:
        if self.event is not None:
            self.event.synchronize()
        return {name: t.numpy() for name, t in self.tensors.items()}


class _Part(Hook):
    """One hook stage of a :class:`SnapshotCapture`."""

    frequency = 1

    def __init__(self, owner, stage, method) -> None:
        self.stage, self._method, self.owner = stage, method, owner

    def __call__(self, batch, context) -> None:
        self._method(batch, context)


class SnapshotCapture:
    """Record due systems' rows on the device; flush them to a writer at sync points.

    Subclasses define what a row holds: :meth:`system_float` ``[B, m]`` (batch dtype),
    :meth:`system_int` ``[B, j]`` (int64), and optionally :meth:`atom_float` ``[A, k]`` and
    :meth:`atom_int` ``[A]`` (int64); and :meth:`emit` (host side, in the writer thread).

    Parameters
    ----------
    every : int
        Record a system every ``every`` of its own steps (in each stage), >= 1.
    writer : BackgroundWriter
        Takes :class:`HostSnapshot` items and graduation marks.
    flush_every : int
        Steps between flushes (use the loop's refill frequency: its sync points).
    """

    has_atoms = False

    def __init__(self, every: int, writer, flush_every: int = 10) -> None:
        self.check_intervals(every, flush_every)
        self.every, self.flush_every, self.writer = int(every), int(flush_every), writer
        self._shape = None
        self._staging = None
        self._was_live = None
        self._closed = False
        self._dirty = False  # rows staged since the last flush
        self._armed = True  # this step is checked on the device
        self._plan_refills, self._phases = -1, _UNPLANNED
        #: Stages of the run (set by subclasses given ``stages``): lets steps with no due system skip all work.
        self.n_stages = getattr(self, "n_stages", None)

    @classmethod
    def check_intervals(cls, every, flush_every) -> None:
        """``ValueError`` unless both are integers >= 1 (subclasses call it before opening anything)."""
        for name, value in (("every", every), ("flush_every", flush_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{cls.__name__}: {name} must be an integer >= 1, got {value!r}")

    # ----------------------------------------------------------------- what a row holds
    def system_float(self, batch) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def system_int(self, batch) -> torch.Tensor:
        """``[B, 5]`` int64: system_id, n_steps, stage, stage_steps, atoms of the system."""
        b = batch.num_graphs
        return torch.stack([batch.system_id.reshape(b).long(), batch["n_steps"].long(), batch["stage"].long(),
                            batch["stage_steps"].long(), (batch.ptr[1:] - batch.ptr[:-1]).long()], dim=1)

    def atom_float(self, batch):
        return None

    def atom_int(self, batch):
        return None

    # ----------------------------------------------------------------- hooks
    def loop_hooks(self) -> list:
        """The run-level hooks to give a FusedStage (``hooks=[*capture.loop_hooks()]``)."""
        return [_Part(self, HookStage.BEFORE_STEP, self._before), _Part(self, HookStage.AFTER_STEP, self._after),
                _Part(self, HookStage.ON_GRADUATION, self._graduated)]

    def _plan(self, batch, context) -> None:
        """Which coming steps can have a due system: one read of the live systems per refill point.

        Between refill points every system in the last stage advances its ``stage_steps`` by
        one per step (or finishes, which ends its frames), and newcomers (PENDING) reach stage
        step 0 after the first step; so a system is due on steps ``t`` of one residue modulo
        ``every``. Steps of no live system's residue do no device work at all. Systems in an
        earlier stage may change stage on any step (an optimizer converging): then every
        step is checked on the device, as without ``stages``.
        """
        self._plan_refills = context.stats.refill_points
        self._phases = None
        if self.n_stages is None or batch.num_graphs == 0:
            return
        rows = torch.stack([batch["status"], batch["stage"], batch["stage_steps"]], dim=1).cpu().numpy()
        status, stage, steps = rows[:, 0], rows[:, 1], rows[:, 2]
        active, pending = status == _ACTIVE, status == _PENDING
        if ((active | pending) & (stage != self.n_stages - 1)).any():
            return
        t = context.step + 1  # the step about to be taken (AFTER_STEP's context.step)
        phases = set(((t - steps[active] - 1) % self.every).tolist())
        if pending.any():
            phases.add(t % self.every)
        self._phases = phases

    def _before(self, batch, context) -> None:
        self._ensure(batch)
        if context.stats.refill_points != self._plan_refills or self._phases is _UNPLANNED:
            self._plan(batch, context)
        status = batch["status"]
        if context.step == 0:  # the initial batch, primed: its stage-step-0 frames
            due = (status == _ACTIVE) & (batch["stage_steps"] % self.every == 0)
            self._capture(batch, due)
        t = context.step + 1
        self._armed = self._phases is None or t % self.every in self._phases
        if self._armed:
            live = self._was_live
            torch.eq(status, _ACTIVE, out=live)
            live.logical_or_(status == _PENDING)

    def _after(self, batch, context) -> None:
        if self._was_live is None or self._was_live.shape[0] != batch.num_graphs:  # out-of-memory shrink mid-step
            self._ensure(batch)
            return
        if not self._armed:
            if context.step % self.flush_every == 0:
                self.flush()
            return
        due = self._was_live & (batch["stage_steps"] % self.every == 0)
        # A system finished at its priming evaluation (never moved) has no frame: in the initial
        # batch it graduates before step 0, so a refilled one must not get one either.
        due &= (batch["status"] == _ACTIVE) | (batch["n_steps"] != 0)
        self._capture(batch, due)
        if context.step % self.flush_every == 0:
            self.flush()

    def _graduated(self, graduated, context) -> None:
        self.flush()
        self.writer.mark_done(graduated.system_id.reshape(-1).tolist())

    # ----------------------------------------------------------------- staging
    def _ensure(self, batch) -> None:
        shape = (batch.num_graphs, batch.num_nodes, batch.device, batch.dtype)
        if shape == self._shape:
            return
        self.flush()
        b, a, dev = batch.num_graphs, batch.num_nodes, batch.device
        per = self.flush_every // self.every + 2
        probe = {"sys_float": self.system_float(batch), "sys_int": self.system_int(batch)}
        if self.has_atoms:
            probe["atom_float"] = self.atom_float(batch)
            probe["atom_int"] = self.atom_int(batch)
        staging = {}
        for name, t in probe.items():
            rows = (b if name.startswith("sys") else a) * per
            staging[name] = torch.zeros((rows + 1, *t.shape[1:]), dtype=t.dtype, device=dev)  # + a trash row
        self._staging = staging
        self._cap = (b * per, a * per)
        self._count = torch.zeros(2, dtype=torch.int64, device=dev)
        self._was_live = torch.zeros(b, dtype=torch.bool, device=dev)
        self._shape = shape

    def _capture(self, batch, due: torch.Tensor) -> None:
        """Pack the rows of the ``due`` systems after those already staged (device only)."""
        st = self._staging
        cap_s, cap_a = self._cap
        csum = torch.cumsum(due.to(torch.int64), 0)
        dest = torch.where(due, csum - 1 + self._count[0], cap_s).clamp_(max=cap_s)
        st["sys_float"].index_copy_(0, dest, self.system_float(batch))
        st["sys_int"].index_copy_(0, dest, self.system_int(batch))
        added = [csum[-1:]]
        if self.has_atoms:
            atom_due = due[batch.batch_idx.long()]
            acsum = torch.cumsum(atom_due.to(torch.int64), 0)
            adest = torch.where(atom_due, acsum - 1 + self._count[1], cap_a).clamp_(max=cap_a)
            st["atom_float"].index_copy_(0, adest, self.atom_float(batch))
            st["atom_int"].index_copy_(0, adest, self.atom_int(batch))
            added.append(acsum[-1:])
        else:
            added.append(torch.zeros(1, dtype=torch.int64, device=due.device))
        if due.numel():
            self._count += torch.cat(added)
            self._dirty = True

    def flush(self) -> None:
        """Hand the staged rows to the writer (one host sync: the row counts)."""
        if self._staging is None or not self._dirty:
            return
        self._dirty = False
        n_sys, n_atoms = self._count.tolist()
        if n_sys == 0:
            return
        cap_s, cap_a = self._cap
        if n_sys > cap_s or n_atoms > cap_a:  # pragma: no cover - the bound above makes this impossible
            raise RuntimeError(f"{type(self).__name__}: staging overflow ({n_sys} rows for {cap_s}); frames lost")
        cuda = self._count.device.type == "cuda"
        out = {}
        for name, t in self._staging.items():
            part = t[: (n_sys if name.startswith("sys") else n_atoms)]
            if cuda:
                host = torch.empty(part.shape, dtype=part.dtype, pin_memory=True)
                host.copy_(part, non_blocking=True)
            else:
                host = part.clone()
            out[name] = host
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        self._count.zero_()  # ordered after the copies on the stream
        self.writer.put(HostSnapshot(out, event))

    def close(self) -> None:
        """Flush what is staged and close the writer (commits the last segment; idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.writer.error is None:
                self.flush()
        finally:
            self.writer.close()


class FileRecorder(SnapshotCapture):
    """A :class:`SnapshotCapture` writing a file at ``self.path`` (the trajectory store, the thermo log).

    Its rows carry the system's periodic flags after :meth:`SnapshotCapture.system_int`'s
    columns (``[B, 8]``); :meth:`finalize` merges the committed parts into ``self.path``, and
    ``with Recorder(...) as r:`` closes it after the block and finalizes it unless the block
    raised (then the committed parts stay, readable and resumable).
    """

    @staticmethod
    def open_path(path, label: str, kind: str, overwrite: bool, resume: bool):
        """Make ``path`` ready to record into; returns it as a Path.

        An existing store or log (the file or its parts folder) is a ``ValueError`` unless
        ``overwrite`` (removed) or ``resume`` (continued: a merged file is reopened as parts);
        the parts folder exists from here on. ``label`` names it in the error ("thermo log"),
        ``kind`` is the parts' suffix ("h5", "parquet").
        """
        from pathlib import Path

        from batchmd.trajectory.segments import parts_dir, remove_store, reopen_merged, store_exists

        path = Path(path)
        if store_exists(path) and not resume:
            if not overwrite:
                raise ValueError(f"{label} {path} exists: pass overwrite=True (--overwrite) to replace it, "
                                 "or resume=True (--resume) to continue its run")
            remove_store(path)
        reopen_merged(path, kind)  # resume=True on a merged file: continue it
        parts_dir(path).mkdir(parents=True, exist_ok=True)  # the store exists (empty) from the start
        return path

    def system_int(self, batch) -> torch.Tensor:
        return torch.cat([super().system_int(batch), batch.pbc.reshape(batch.num_graphs, 3).long()], dim=1)

    def finalize(self):  # pragma: no cover - interface
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.close()
        if kind is None:
            self.finalize()
