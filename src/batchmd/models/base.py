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

from collections.abc import Iterable

import torch

__all__ = ["Model", "UnsupportedSpeciesError", "species_error_message"]


class UnsupportedSpeciesError(ValueError):
    """A batch holds elements a model has no parameters for (one-line message naming them).

    Attributes
    ----------
    unsupported : tuple of int
        The offending atomic numbers, sorted.
    """

    def __init__(self, message: str, unsupported: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.unsupported = tuple(sorted(int(z) for z in unsupported))


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


def species_error_message(model_name: str, unsupported: Iterable[int], supported: Iterable[int] | None) -> str:
    """One line naming the unsupported elements by symbol and the model's coverage.

    Example
    -------
    >>> species_error_message("SevenNet-0", [54], range(1, 4))
    'batchmd: model SevenNet-0 has no parameters for Xe (it covers 3 elements: H Li)'
    """
    bad = " ".join(_symbol(z) for z in sorted(set(int(z) for z in unsupported)))
    msg = f"batchmd: model {model_name} has no parameters for {bad}"
    if supported is not None:
        cover = sorted(set(int(z) for z in supported))
        shown = " ".join(_symbol(z) for z in cover[:30]) + (" ..." if len(cover) > 30 else "")
        msg += f" (it covers {len(cover)} elements: {shown})"
    return msg


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
        may replay (Lennard-Jones grows an overflowed neighbor list there; a True return
        runs that chunk eagerly and captures again after it, for host work such as new
        neighbor-list bin tables), and ``systems_replaced(batch, systems)``, called after
        in-place refills wrote new systems into those rows (``FusedStage(refill_in_place=True)``):
        a model keeping ``_`` cache fields must refresh them there (Lennard-Jones marks their
        neighbor lists for rebuild).
    supports_empty_systems : bool
        Whether the model skips systems whose ``status`` is EMPTY (never evaluating, listing
        or reading them), so inflight refills may use a padded live batch
        (:mod:`batchmd.dynamics.slot_layout`). Lennard-Jones: True. Default False.
    torch_compute : bool
        Whether the model does its work in torch ops (True, the default: neural networks,
        the torch adapter). Models that compute in Warp kernels set False, which lets the
        dynamics loop run torch single-threaded on CPU (see ``FusedStage(cpu_threads=...)``).
    supported_numbers : frozenset of int or None
        Atomic numbers the model has parameters for; None (the default) means any element.
        Checked by :meth:`check_species` before a run (the dynamics and the CLI call it), so
        an uncovered element is one clear error instead of a silent wrong answer.
    """

    cutoff: float | None = None
    supports_skip_finished: bool = False
    supports_cuda_graph: bool = False
    supports_empty_systems: bool = False
    torch_compute: bool = True
    needs_neighbors: bool = False
    computes_stress: bool = False
    supports_out: bool = False
    supported_numbers: frozenset[int] | None = None

    @property
    def model_name(self) -> str:
        """Short name used in messages and in output metadata (default: the class name)."""
        return getattr(self, "_model_name", None) or type(self).__name__

    def model_info(self) -> dict[str, str]:
        """What identifies this model in output files: at least ``{"model": name}``.

        Adapters loaded from a file add ``"file"`` and ``"sha256"``; parametric models add
        their parameters. Values are strings so they fit any output format.
        """
        return {"model": self.model_name}

    def check_species(self, numbers) -> None:
        """Raise :class:`UnsupportedSpeciesError` if ``numbers`` holds an uncovered element.

        Parameters
        ----------
        numbers : torch.Tensor, numpy array or iterable of int
            Atomic numbers (e.g. ``batch.atomic_numbers``).

        Raises
        ------
        UnsupportedSpeciesError
            One line naming the unsupported elements by symbol, e.g.
            ``batchmd: model SevenNet-0 has no parameters for Og (it covers 89 elements: ...)``.
        """
        supported = self.supported_numbers
        if supported is None:
            return
        if isinstance(numbers, torch.Tensor):
            present = set(torch.unique(numbers.detach()).cpu().tolist())
        else:
            import numpy as np

            present = set(np.unique(np.asarray(list(numbers) if not hasattr(numbers, "shape") else numbers)).tolist())
        bad = sorted(int(z) for z in present if int(z) not in supported)
        if bad:
            raise UnsupportedSpeciesError(species_error_message(self.model_name, bad, supported), bad)

    def forward(self, batch) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch)")
