"""NequIP and Allegro (``nequip``, ``nequip-allegro``) as batched batchmd models.

NequIP (Batzner et al., Nat. Commun. 13, 2453 (2022)) and Allegro (Musaelian et al., Nat.
Commun. 14, 579 (2023)) are E(3)-equivariant potentials of the ``nequip`` framework (>= 0.19).
``load_model("nequip:PATH")`` loads a packaged model (``.nequip.zip``, from ``nequip-package``)
or a training checkpoint (``.ckpt``) with ``nequip.model.saved_models.load_saved_model``
(eager mode); :class:`NequIPModel` also wraps a constructed module, e.g.
``NequIPGNNModel(...)`` / ``AllegroModel(...)``.

Mapping: a nequip model is ``GraphModel(ForceStressOutput(energy network))``; batchmd keeps
the energy network and gives it an ``AtomicDataDict`` built from its edge list: ``edge_index``
= batchmd's ``(i, j)`` (nequip's convention too: ``vec = pos[j] - pos[i] + shift @ cell``),
``edge_cell_shift`` = ``unit_shifts``, ``cell`` [B,3,3], ``batch``, ``num_atoms`` and
``atom_types`` from the model's ``type_names`` (chemical symbols). It returns
``total_energy`` [B,1] (the model's units; nequip's own models are trained in eV and Å, the
units batchmd assumes). Forces and stress come from batchmd's autograd pass, equal to
``NequIPCalculator`` to round-off (tests/test_mlip_nequip.py).

Global state. ``nequip.utils.global_state.set_global_state()`` (called by nequip when it
builds or loads a model) sets torch's *process-wide* default dtype to float64 and seeds every
RNG. batchmd restores the default dtype it found after every nequip call it makes
(:func:`keep_default_dtype`); code that calls nequip itself should do the same.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from batchmd.models.mlip.base import GraphModel, file_sha256, first_line
from batchmd.models.registry import require_package

__all__ = ["NequIPModel", "keep_default_dtype", "random_nequip"]


@contextlib.contextmanager
def keep_default_dtype():
    """Restore ``torch.get_default_dtype()`` on exit (nequip sets float64 process-wide)."""
    previous = torch.get_default_dtype()
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _energy_network(module):
    """The energy network inside a nequip ``GraphModel`` (below its ForceStressOutput/ForceOutput)."""
    inner = getattr(module, "model", module)
    return getattr(inner, "func", inner)


class NequIPModel(GraphModel):
    """A NequIP or Allegro model evaluated on batchmd batches.

    Parameters
    ----------
    module : nequip.nn.graph_model.GraphModel
        The model (``NequIPGNNModel(...)``, ``AllegroModel(...)``, or loaded); its
        ``type_names`` must be chemical symbols.
    **kwargs
        :class:`~batchmd.models.mlip.base.GraphModel` options.

    Raises
    ------
    ValueError
        A type name that is not a chemical symbol, or no ``r_max``.
    """

    def __init__(self, module, name: str = "NequIP", **kwargs) -> None:
        from ase.data import atomic_numbers

        type_names = list(getattr(module, "type_names", []) or [])
        unknown = [t for t in type_names if t not in atomic_numbers]
        if not type_names or unknown:
            raise ValueError(f"batchmd: the nequip model's type_names {type_names} are not chemical symbols "
                             f"({unknown}); batchmd maps atoms to types by element")
        r_max = None
        for sub in module.modules():
            r_max = getattr(sub, "r_max", None) if r_max is None else r_max
        metadata_r_max = getattr(module, "metadata", {}) or {}
        r_max = r_max if r_max is not None else metadata_r_max.get("r_max")
        if r_max is None:
            raise ValueError("batchmd: cannot find the nequip model's cutoff r_max")
        numbers = [atomic_numbers[t] for t in type_names]
        network = _energy_network(module)
        super().__init__(network, cutoff=float(r_max), supported_numbers=numbers, name=name, **kwargs)
        z_to_type = torch.full((119,), -1, dtype=torch.long)
        z_to_type[torch.tensor(numbers)] = torch.arange(len(numbers))
        self.register_buffer("_z_to_type", z_to_type, persistent=False)

    @classmethod
    def from_file(cls, path: str, **kwargs) -> NequIPModel:
        """Load a nequip package (``.nequip.zip``) or checkpoint (``.ckpt``), eager mode.

        Raises
        ------
        MissingExtraError
            ``nequip`` is not installed (``pip install 'batchmd[nequip]'``).
        FileNotFoundError
            No such file.
        ValueError
            nequip cannot load it.
        """
        require_package("nequip", "nequip", "NequIP/Allegro models")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"batchmd: nequip model file {path!r} not found")
        with keep_default_dtype(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                from nequip.model.saved_models.load_utils import load_saved_model

                module = load_saved_model(path)
            except Exception as err:
                raise ValueError(f"batchmd: {path!r} is not a nequip package or checkpoint (nequip could not load "
                                 f"it: {first_line(err)})") from err
        if isinstance(module, torch.nn.ModuleDict):
            module = next(iter(module.values()))
        model = cls(module, name=f"NequIP({os.path.basename(path)})", **kwargs)
        model._info = {"file": os.path.abspath(path), "sha256": file_sha256(path)}
        return model

    def compute_energy(self, graph) -> torch.Tensor:
        """Per-system energies [B] from the nequip energy network on ``graph``."""
        dtype = graph.positions.dtype
        data = {
            "pos": graph.positions,
            "edge_index": graph.edge_index,
            "edge_cell_shift": graph.unit_shifts.to(dtype),
            "cell": graph.cell,
            "pbc": graph.pbc,
            "batch": graph.batch,
            "num_atoms": graph.ptr[1:] - graph.ptr[:-1],
            "atom_types": self._z_to_type.to(graph.atomic_numbers.device)[graph.atomic_numbers],
        }
        with keep_default_dtype():
            out = self.module(data)
        return out["total_energy"].reshape(-1)


def random_nequip(kind: str = "nequip", type_names=("H", "O", "Na", "Si", "Cl", "Cu"), r_max: float = 4.0,
                  seed: int = 0, model_dtype: str = "float64"):
    """A small NequIP (``kind="nequip"``) or Allegro (``kind="allegro"``) model with random weights
    (tests and benchmarks; not a physical model). torch's default dtype is restored afterwards."""
    require_package("nequip", "nequip", "NequIP/Allegro models")
    with keep_default_dtype(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nequip.utils.global_state import set_global_state

        set_global_state()
        common = dict(seed=seed, model_dtype=model_dtype, r_max=r_max, type_names=list(type_names),
                      avg_num_neighbors=10.0)
        if kind == "nequip":
            from nequip.model import NequIPGNNModel

            module = NequIPGNNModel(num_layers=2, l_max=1, num_features=8, **common)
        elif kind == "allegro":
            require_package("allegro", "nequip", "Allegro models")
            from allegro.model import AllegroModel

            module = AllegroModel(l_max=1, num_layers=1, num_scalar_features=8, num_tensor_features=4,
                                  allegro_mlp_hidden_layers_depth=1, allegro_mlp_hidden_layers_width=16,
                                  radial_chemical_embed=dict(_target_="allegro.nn.TwoBodyBesselScalarEmbed",
                                                             num_bessels=4),
                                  radial_chemical_embed_dim=8, scalar_embed_mlp_hidden_layers_depth=1,
                                  scalar_embed_mlp_hidden_layers_width=16, **common)
        else:
            raise ValueError(f"batchmd: random_nequip kind must be 'nequip' or 'allegro', got {kind!r}")
    return module.eval()
