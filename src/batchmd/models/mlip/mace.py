"""MACE (``mace-torch``) as a batched batchmd model, from any ``.model`` file.

MACE (Batatia et al., NeurIPS 2022; foundation models MACE-MP-0, arXiv:2401.00096) is a
higher-order equivariant message-passing potential. ``load_model("mace:PATH")`` loads any
MACE model saved with ``torch.save`` (the format of MACE's training scripts and of the
foundation models, e.g. a MACE-MP-0 file downloaded elsewhere; batchmd never downloads).

Mapping to MACE's inputs (its ``mace.data`` conventions): ``edge_index`` = (sender,
receiver) = batchmd's ``(i, j)`` with ``vector = x[receiver] - x[sender] + shifts``;
``shifts`` [E,3] Å, float ``unit_shifts``; ``node_attrs`` the one-hot of each atom's element
over ``model.atomic_numbers``; ``cell`` [3B, 3]. The network returns per-system energies
(``compute_force=False``); forces and stress come from
:class:`~batchmd.models.mlip.base.GraphModel`'s autograd pass, equal to ``MACECalculator``
to round-off (tests/test_mlip_mace.py).

``mace`` must be imported before ``e3nn`` (it sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``,
without which e3nn 0.4 cannot load its constants under torch >= 2.6): :func:`import_mace`
does that; import batchmd's MLIP modules rather than e3nn first.

Example
-------
>>> from batchmd.models import load_model
>>> model = load_model("mace:/data/mace-mp-0-medium.model", dtype=torch.float64)   # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

from batchmd.models.mlip.base import GraphModel, file_sha256, first_line
from batchmd.models.registry import require_package

__all__ = ["MACEModel", "import_mace", "random_mace"]


def import_mace():
    """Import ``mace`` (before e3nn, see the module docstring); raises MissingExtraError if absent."""
    require_package("mace", "mace", "MACE models")
    if "e3nn" in sys.modules and "mace" not in sys.modules:
        os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
        torch.serialization.add_safe_globals([slice])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mace.modules  # noqa: F401
    return sys.modules["mace"]


class MACEModel(GraphModel):
    """A MACE network evaluated on batchmd batches.

    Parameters
    ----------
    module : mace.modules.MACE (or ScaleShiftMACE)
        The network.
    head : str or int, optional
        Head of a multi-head model (name or index; default: the first head).
    **kwargs
        :class:`~batchmd.models.mlip.base.GraphModel` options (``skin``, ``compute_stress``,
        ``chunk_atoms``, ``device``, ``dtype``).

    Use :meth:`from_file` (or ``load_model("mace:PATH")``) to load a saved model.
    """

    def __init__(self, module, head: str | int | None = None, name: str = "MACE", **kwargs) -> None:
        import_mace()
        numbers = [int(z) for z in module.atomic_numbers.tolist()]
        heads = list(getattr(module, "heads", None) or ["Default"])
        if head is None:
            head_index = 0
        elif isinstance(head, int):
            head_index = head
        elif head in heads:
            head_index = heads.index(head)
        else:
            raise ValueError(f"batchmd: MACE head {head!r} not in the model's heads {heads}")
        if not 0 <= head_index < len(heads):
            raise ValueError(f"batchmd: MACE head index {head_index} out of range for heads {heads}")
        super().__init__(module, cutoff=float(module.r_max), supported_numbers=numbers, name=name, **kwargs)
        z_to_index = torch.full((119,), -1, dtype=torch.long)
        z_to_index[torch.tensor(numbers)] = torch.arange(len(numbers))
        self.register_buffer("_z_to_index", z_to_index, persistent=False)
        self.num_elements = len(numbers)
        self.head_index = head_index

    @classmethod
    def from_file(cls, path: str, **kwargs) -> MACEModel:
        """Load a MACE model saved with ``torch.save`` (a ``.model`` file).

        Raises
        ------
        MissingExtraError
            ``mace-torch`` is not installed (``pip install 'batchmd[mace]'``).
        FileNotFoundError
            No such file.
        ValueError
            The file does not hold a MACE model (or cannot be read by ``torch.load``).
        """
        import_mace()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"batchmd: MACE model file {path!r} not found")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # not a torch file, a truncated one, a pickle of missing classes, ...
            raise ValueError(f"batchmd: {path!r} is not a MACE model file (torch.load failed: "
                             f"{first_line(err)})") from err
        if not (isinstance(module, torch.nn.Module) and hasattr(module, "atomic_numbers") and hasattr(module, "r_max")):
            raise ValueError(f"batchmd: {path!r} does not hold a MACE model (got {type(module).__name__})")
        model = cls(module, name=f"MACE({os.path.basename(path)})", **kwargs)
        model._info = {"file": os.path.abspath(path), "sha256": file_sha256(path)}
        return model

    def compute_energy(self, graph) -> torch.Tensor:
        """Per-system energies [B] (eV) from the MACE network on ``graph``."""
        dtype = graph.positions.dtype
        index = self._z_to_index.to(graph.atomic_numbers.device)[graph.atomic_numbers]
        node_attrs = torch.nn.functional.one_hot(index, self.num_elements).to(dtype)
        b = graph.num_graphs
        data = {
            "positions": graph.positions,
            "node_attrs": node_attrs,
            "edge_index": graph.edge_index,
            "shifts": graph.shifts,
            "unit_shifts": graph.unit_shifts.to(dtype),
            "cell": graph.cell.reshape(3 * b, 3),
            "batch": graph.batch,
            "ptr": graph.ptr,
            "head": torch.full((b,), self.head_index, dtype=torch.long, device=graph.batch.device),
            "weight": torch.ones(b, dtype=dtype, device=graph.batch.device),
        }
        out = self.module(data, training=False, compute_force=False, compute_virials=False, compute_stress=False)
        energy = out["energy"]
        return energy.reshape(-1)


def random_mace(atomic_numbers=(1, 6, 8, 11, 14, 17, 29), r_max: float = 4.0, hidden: str = "8x0e + 8x1o",
                num_interactions: int = 2, correlation: int = 2, max_ell: int = 2, seed: int = 0,
                dtype: torch.dtype = torch.float64):
    """A small MACE network with random weights (tests, benchmarks and examples; not a physical model).

    Parameters mean what they mean in ``mace.modules.ScaleShiftMACE`` (``r_max`` in Å). The
    atomic reference energies are random too, so energies are arbitrary but smooth.

    Returns
    -------
    mace.modules.ScaleShiftMACE
        Save it with ``torch.save(model, "small.model")`` and load it with
        ``load_model("mace:small.model")``, as a real MACE file.
    """
    import_mace()
    from e3nn import o3
    from mace import modules

    generator = torch.Generator().manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(seed)
        numbers = sorted(int(z) for z in atomic_numbers)
        model = modules.ScaleShiftMACE(
            r_max=r_max, num_bessel=6, num_polynomial_cutoff=5, max_ell=max_ell,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=num_interactions, num_elements=len(numbers), hidden_irreps=o3.Irreps(hidden),
            MLP_irreps=o3.Irreps("8x0e"), gate=torch.nn.functional.silu,
            atomic_energies=(-1.0 - 4.0 * torch.rand(len(numbers), generator=generator, dtype=torch.float64)).numpy(),
            avg_num_neighbors=8.0, atomic_numbers=numbers, correlation=correlation,
            atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        )
    finally:
        torch.set_default_dtype(previous)
    return model
