"""Replaying a run's steady steps as one CUDA graph (GPU only).

On a GPU a dynamics step of a small or medium batch is bound by launch overhead, not by
arithmetic: ~25 Warp and torch launches from Python cost ~0.4-1 ms per step on an H100
(measured, ``benchmarks/gpu/step_overhead.md``) whatever the batch size. Between two
refill points the steady step launches the same kernels on the same tensors (no host
synchronisation, no allocation: ``tests/test_hot_path.py``), so ``refill_frequency`` steps
can be captured once with ``torch.cuda.CUDAGraph`` and replayed with a single launch.

:class:`StepGraph` keeps one graph per run and reuses it while the batch's tensors stay in the same
memory (address, shape, strides, dtype) and the chunk has the same number of steps; anything else
(another structure after a refill, a grown neighbor list) runs the chunk eagerly and
captures it anew. The first chunk of a run is always eager: it primes the run (complete
first evaluation, neighbor-list setup, recorded launches).

What a replay does not do: per-step host work. The loop therefore uses graphs only when no
hook runs inside the step (``BEFORE_STEP``, ``AFTER_FORCES``, ``AFTER_STEP``; hooks that
declare ``host_only``, such as the progress line, run once after each replayed chunk), the model
declares ``supports_cuda_graph`` (Lennard-Jones does) and there is no sampler (inflight
refills usually change the batch every few steps, so a capture would rarely be replayed;
with ``refill_in_place`` and ``cuda_graph=True`` the batch keeps its tensors and graphs are
used there too). A neighbor-list row that overflows during replays stays exact (its atom
walks the bins), and the loop lets the model grow the list between chunks
(``between_graph_chunks``).

Example
-------
Used by :class:`~batchmd.dynamics.FusedStage` (``cuda_graph="auto"``, the default)::

    fire = FIRE(LennardJones(3.405, 0.0104, 8.5125), convergence_hook=ConvergenceHook.from_forces(0.01))
    out = fire.run(batch.to("cuda"))          # replays chunks of 10 steps on a GPU
"""

from __future__ import annotations

import torch

__all__ = ["StepGraph", "graph_steps_allowed"]


def _batch_key(batch) -> tuple:
    """Where every tensor a step can touch lives: the fields and the layout (ptr, batch_idx).

    Compared by memory (address, shape, strides, dtype), not by object: some fields are
    handed out as fresh views of the same storage. A graph replayed on an equal key reads
    and writes exactly the memory the captured kernels were given.
    """
    tensors = (batch.ptr, batch.batch_idx, *(batch[name] for name in batch.fields))
    return tuple((t.data_ptr(), tuple(t.shape), t.stride(), t.dtype) for t in tensors)


class StepGraph:
    """One captured chunk of steps, replayed while the batch's tensors stay the same.

    Example
    -------
    >>> graphs = StepGraph()
    >>> graphs.run(loop, batch, 10)   # doctest: +SKIP  (eager + capture, then replays)
    """

    def __init__(self) -> None:
        self._key = None
        self._graph = None
        self.replays = 0
        self.captures = 0
        self.capturing = False  # the loop skips host-side hooks while a step is being captured

    def reset(self) -> None:
        """Forget the captured graph (a new run starts)."""
        self._key = None
        self._graph = None

    def run(self, loop, batch, count: int) -> bool:
        """Advance ``batch`` by ``count`` steps of ``loop`` (a FusedStage): replay, or eager then capture.

        Returns True when the chunk was a replay (no per-step host code ran).
        """
        if self._graph is not None and self._key == (count, _batch_key(batch)):
            self._graph.replay()
            loop._step_index += count
            loop.stats.steps += count
            self.replays += 1
            return True
        self.reset()
        for _ in range(count):
            loop.step(batch)
        key = (count, _batch_key(batch))  # after the eager steps, which may have created fields
        device = batch.device
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        steps, index = loop.stats.steps, loop._step_index
        with torch.cuda.stream(stream):
            graph.capture_begin()
            self.capturing = True
            try:
                for _ in range(count):
                    loop.step(batch)
            finally:
                self.capturing = False
                graph.capture_end()
        torch.cuda.current_stream(device).wait_stream(stream)
        loop.stats.steps, loop._step_index = steps, index  # captured, not executed
        if (count, _batch_key(batch)) == key:  # capturing changed nothing: the graph is reusable
            self._key = key
            self._graph = graph
            self.captures += 1
        return False


def graph_steps_allowed(loop, batch) -> bool:
    """Whether ``loop`` (a FusedStage) may replay its next chunk of steps as a CUDA graph.

    On a CUDA batch, unless ``cuda_graph=False``: with a sampler only when asked for
    (``cuda_graph=True``) with ``refill_in_place`` (refills keep the tensors); with "auto" only
    for models declaring ``supports_cuda_graph``; never with a hook that runs inside the step
    (except ``host_only`` AFTER_STEP hooks, run after each replayed chunk).
    """
    from batchmd.dynamics.hooks import HookStage

    if loop.cuda_graph is False or batch.device.type != "cuda":
        return False
    if loop.sampler is not None and not (loop.cuda_graph is True and loop.refill_in_place):
        return False
    if loop.cuda_graph == "auto" and not getattr(loop.model, "supports_cuda_graph", False):
        return False
    in_step = (HookStage.BEFORE_STEP, HookStage.AFTER_FORCES, HookStage.AFTER_STEP)
    hooks = list(loop.hooks) + [h for stage in loop.stages for h in stage.hooks]
    return not any(h.stage in in_step and not (h.stage == HookStage.AFTER_STEP and h.host_only) for h in hooks)
