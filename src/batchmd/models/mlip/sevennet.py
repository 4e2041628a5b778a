"""SevenNet (``sevenn``) as a batched batchmd model; SevenNet-0 ships inside the package.

SevenNet (Park et al., J. Chem. Theory Comput. 20, 4857 (2024)) is an equivariant
message-passing potential. Its universal pretrained model SevenNet-0 (``7net-0``, 89
elements, cutoff 5 Å, trained on MPtrj) is stored inside the ``sevenn`` pip package, so
``load_model("sevennet-0")`` works offline. batchmd never copies those weights: the
checkpoint is read from the installed package at run time (its licence may differ from the
package's; see ``docs/mlip.rst``).

The adapter keeps SevenNet's network and replaces its force/stress head: the network gets
batchmd's edge list (``edge_index`` ``(i, j)`` with ``edge_vec = x_j - x_i + shift``,
SevenNet's own convention) and returns per-system energies; forces and stress come from
:class:`~batchmd.models.mlip.base.GraphModel`'s autograd pass, which equals SevenNet's
``SevenNetCalculator`` to floating-point round-off (tests/test_mlip_sevennet.py).

Example
-------
>>> from batchmd.models import load_model
>>> model = load_model("sevennet-0")                      # doctest: +SKIP
>>> out = model(batch)   # {"energy": [B,1], "forces": [N,3], "stress": [B,3,3]}   # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings

import torch

from batchmd.models.mlip.base import GraphModel, file_sha256, first_line
from batchmd.models.registry import require_package

__all__ = ["SevenNetModel", "import_sevenn", "follow_dtype"]


class _OneHotInDtype(torch.nn.Module):
    """SevenNet's one-hot embedding, cast to the positions' dtype.

    ``sevenn.nn.node_embedding.OnehotEmbedding`` returns float32 (``.float()``), which makes a
    float64 network fail; this wrapper keeps the module and casts its outputs.
    """

    def __init__(self, inner: torch.nn.Module, pos_key: str) -> None:
        super().__init__()
        self.inner = inner
        self.pos_key = pos_key

    def forward(self, data):
        data = self.inner(data)
        dtype = data[self.pos_key].dtype
        for key in (self.inner.key_x, getattr(self.inner, "key_additional_output", None)):
            if key is not None and key in data and data[key].is_floating_point():
                data[key] = data[key].to(dtype)
        return data


def follow_dtype(module) -> None:
    """Make a SevenNet ``AtomGraphSequential`` run in its parameters' dtype (float64 too), in place."""
    keys, _ = import_sevenn()
    from sevenn.nn.node_embedding import OnehotEmbedding

    for name, sub in list(module._modules.items()):
        if isinstance(sub, OnehotEmbedding):
            module._modules[name] = _OneHotInDtype(sub, keys.POS)


def import_sevenn():
    """Import ``sevenn`` (and e3nn) so that they load under torch >= 2.6.

    e3nn 0.4.x loads its constants with ``torch.load`` under the default ``weights_only=True``
    and fails on a pickled ``slice``; allow-listing exactly that builtin is enough (narrower
    than ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``). Imports mace first when it is installed:
    mace must be imported before e3nn (it configures e3nn's loading itself).
    """
    require_package("sevenn", "sevennet", "SevenNet models")
    torch.serialization.add_safe_globals([slice])
    if "e3nn" not in __import__("sys").modules:
        import importlib.util

        if importlib.util.find_spec("mace") is not None:
            import mace  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sevenn._keys as keys
        import sevenn.util as util
    return keys, util


class SevenNetModel(GraphModel):
    """A SevenNet network (e.g. SevenNet-0) evaluated on batchmd batches.

    Parameters
    ----------
    module : sevenn.nn.sequential.AtomGraphSequential
        The network, as returned by ``sevenn.util.model_from_checkpoint``.
    cutoff : float
        Its cutoff (Å).
    type_map : dict of int -> int
        Atomic number -> SevenNet species index (its keys are the covered elements).
    **kwargs
        :class:`~batchmd.models.mlip.base.GraphModel` options (``skin``, ``compute_stress``,
        ``chunk_atoms``, ``device``, ``dtype``).

    Use :meth:`from_checkpoint` (or ``load_model("sevennet-0")``) rather than the constructor.
    """

    def __init__(self, module, cutoff: float, type_map: dict, name: str = "SevenNet", **kwargs) -> None:
        keys, _ = import_sevenn()
        self._keys = keys
        module.delete_module_by_key("force_output")  # batchmd's autograd pass replaces it
        module.key_grad = None
        module.set_is_batch_data(True)
        follow_dtype(module)
        super().__init__(module, cutoff=cutoff, supported_numbers=type_map.keys(), name=name, **kwargs)

    @classmethod
    def from_checkpoint(cls, checkpoint: str = "7net-0", **kwargs) -> SevenNetModel:
        """Load a SevenNet checkpoint: a file path, or a pretrained name known to ``sevenn`` (``"7net-0"``).

        Raises
        ------
        MissingExtraError
            ``sevenn`` is not installed (``pip install 'batchmd[sevennet]'``).
        FileNotFoundError
            Neither a file nor a pretrained name.
        ValueError
            The file is not a SevenNet checkpoint.
        """
        _, util = import_sevenn()
        if os.path.isfile(checkpoint):
            path, name = checkpoint, f"SevenNet({os.path.basename(checkpoint)})"
        else:
            try:
                path = util.pretrained_name_to_path(checkpoint)
            except Exception as err:  # sevenn raises ValueError/NotImplementedError for unknown names
                raise FileNotFoundError(
                    f"batchmd: SevenNet checkpoint {checkpoint!r} is neither a file nor a pretrained name "
                    f"known to sevenn ({err})") from None
            name = "SevenNet-0" if checkpoint.lower() in ("7net-0", "sevennet-0", "7net-0_11july2024") else checkpoint
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module, config = util.model_from_checkpoint(path)
        except Exception as err:  # not a torch file, a MACE model, a truncated checkpoint, ...
            raise ValueError(f"batchmd: {str(path)!r} is not a SevenNet checkpoint (sevenn could not load it: "
                             f"{first_line(err)})") from err
        model = cls(module, cutoff=float(module.cutoff), type_map=dict(module.type_map), name=name, **kwargs)
        model._info = {"file": str(path), "sha256": file_sha256(path)}
        return model

    def compute_energy(self, graph) -> torch.Tensor:
        """Per-system energies [B] (eV) from SevenNet's network on ``graph``."""
        k = self._keys
        data = {
            k.NODE_FEATURE: graph.atomic_numbers,
            k.ATOMIC_NUMBERS: graph.atomic_numbers,
            k.POS: graph.positions,
            k.EDGE_IDX: graph.edge_index,
            k.EDGE_VEC: graph.edge_vectors,
            k.BATCH: graph.batch,
            k.NUM_ATOMS: graph.ptr[1:] - graph.ptr[:-1],
        }
        out = self.module(data)
        return out[k.PRED_TOTAL_ENERGY].reshape(-1)
