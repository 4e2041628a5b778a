"""The model contract: ``model(batch) -> {"energy", "forces"[, "stress"]}``.

Every potential in batchmd is a :class:`Model`: a ``torch.nn.Module`` that maps a
:class:`~batchmd.data.Batch` to per-system energies and per-atom forces (and, where it
can, per-system stress). A model that needs neighbors maintains them itself from the
batch (see :mod:`batchmd.models.neighbors`), so callers never wire a neighbor list.

Example
-------
>>> import torch
>>> class Harmonic(Model):
...     cutoff, needs_neighbors, computes_stress = None, False, False
...     def forward(self, batch):
...         x = batch.positions
...         e = torch.zeros(batch.num_graphs, 1, dtype=x.dtype).index_add_(
...             0, batch.batch_idx.long(), 0.5 * (x * x).sum(1, keepdim=True))
...         return {"energy": e, "forces": -x}
"""

from __future__ import annotations

import torch

__all__ = ["Model"]


class Model(torch.nn.Module):
    """Base class of batchmd potentials.

    Subclasses implement ``forward(batch)`` returning a dict with

    - ``"energy"``: [num_graphs, 1] eV
    - ``"forces"``: [num_nodes, 3] eV/Å
    - ``"stress"``: [num_graphs, 3, 3] eV/Å^3, only when :attr:`computes_stress`; ASE's
      sign convention, i.e. what ``atoms.get_stress(voigt=False)`` reports.

    All tensors are on ``batch.device`` with dtype ``batch.dtype``.

    Attributes
    ----------
    cutoff : float or None
        Interaction range (Å); None for models without one.
    needs_neighbors : bool
        Whether the model uses a neighbor list (which it maintains itself).
    computes_stress : bool
        Whether ``"stress"`` is returned.
    supports_out : bool
        Whether ``forward(batch, out=...)`` accepts preallocated output tensors
        (``"energy"``, ``"forces"``, ``"stress"``) and writes into them. The dynamics loop
        then passes the batch's own fields, so the steady-state step allocates nothing.
    supports_skip_finished : bool
        Whether ``forward(batch, out=..., skip_finished=True)`` leaves the outputs of
        finished systems (``status`` neither ACTIVE nor PENDING) untouched instead of
        recomputing them; the dynamics loop then pays only for the systems still moving.
    supports_cuda_graph : bool
        Whether ``forward`` can be captured in a CUDA graph: no host synchronisation, no
        allocation, no host-side decision that changes between steps of an unchanged batch
        (Lennard-Jones: True). The dynamics loop then replays its steady steps on GPUs
        (``FusedStage(cuda_graph="auto")``). A model may also define
        ``between_graph_chunks(batch)``, which the loop calls before each chunk of steps it
        may replay (Lennard-Jones grows an overflowed neighbor list there), and
        ``systems_replaced(batch, systems)``, called after in-place refills wrote new systems
        into those slots (``FusedStage(refill_in_place=True)``): a model keeping ``_`` cache
        fields must refresh them there (Lennard-Jones marks their neighbor lists for rebuild).
    torch_compute : bool
        Whether the model does its work in torch ops (True, the default: neural networks,
        the torch adapter). Models that compute in Warp kernels set False, which lets the
        dynamics loop run torch single-threaded on CPU (see ``FusedStage(cpu_threads=...)``).
    """

    cutoff: float | None = None
    supports_skip_finished: bool = False
    supports_cuda_graph: bool = False
    torch_compute: bool = True
    needs_neighbors: bool = False
    computes_stress: bool = False
    supports_out: bool = False

    def forward(self, batch) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch)")
