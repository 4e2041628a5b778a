"""matgl's TensorNet and M3GNet potentials as batched batchmd models.

matgl (Materials Graph Library, https://github.com/materialyzeai/matgl) ships TensorNet (Simeon
and De Fabritiis, NeurIPS 2023, arXiv:2306.06482) and M3GNet (Chen and Ong, Nat. Comput. Sci. 2,
718 (2022)) as PyTorch-Geometric graph networks wrapped in a ``matgl.apps.pes.Potential`` (the
network, a linear rescaling ``data_std * E + data_mean`` and per-element reference energies).
``load_model("matgl:DIR")`` loads any saved ``Potential`` (a directory holding ``model.json``,
``model.pt`` and ``state.pt``, the format of ``Potential.save`` and of matgl's pretrained models);
``tensornet:DIR`` and ``m3gnet:DIR`` do the same and check the architecture. A pretrained name
(``matgl:TensorNet-MatPES-PBE-v2025.1-PES``) loads only when matgl has already downloaded it into
its cache (``~/.cache/matgl``): batchmd never downloads weights.

Mapping to matgl's inputs (``matgl.graph._compute.compute_pair_vector_and_distance``):
``edge_index`` = (src, dst) = batchmd's ``(i, j)``, ``pbc_offshift`` = batchmd's ``shifts``
(``unit_shifts @ cell``, so the bond vector is ``x_j + shift - x_i``), ``node_type`` the index of
each atom's element in the model's ``element_types``, ``batch``/``num_graphs`` as in PyG.
M3GNet's three-body line graph is built from batchmd's edge list in torch
(``matgl.graph._compute.create_line_graph_torch``: bond pairs sharing their first atom, both
within ``threebody_cutoff``; batchmd's edges are sorted by ``i`` as it requires), instead of
matgl's default per-atom numpy loop. The network returns per-system energies; forces and stress
come from :class:`~batchmd.models.mlip.base.GraphModel`'s autograd pass (matgl's ``Potential``
does the same with the strain ``lattice @ (1 + eps)``), equal to ``matgl.ext.ase.PESCalculator``
to round-off (tests/test_mlip_matgl.py).

Differences from matgl's own ASE calculator, by design:

- stress in eV/Å^3 (ASE's unit). ``PESCalculator``'s default ``stress_unit`` is **GPa**; compare
  with ``PESCalculator(potential, stress_unit="eV/A3")``.
- partially periodic cells (slabs): batchmd keeps the periodic images along the periodic axes.
  ``PESCalculator`` 4.1.2 treats any cell that is not periodic in all three directions as a
  molecule (no images), so its slab energies differ.
- float64: the calculator builds its graph in float32 (``matgl.float_th``); batchmd follows the
  batch's dtype (``model(batch)`` with a float64 batch runs the network in float64).

Not supported (refused with one line at load): potentials with a ZBL repulsion
(``calc_repuls``; matgl 4.1.2's own ``Potential`` cannot evaluate it on a PyG graph either),
charge-predicting potentials (``calc_charge``), global state features (``include_state``),
multi-state reference energies, and architectures other than TensorNet and M3GNet (matgl's CHGNet,
SO3Net, QET, MEGNet).

Example
-------
>>> from batchmd.models import load_model
>>> model = load_model("matgl:/models/TensorNet-MatPES-PBE-v2025.1-PES")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings

import torch

from batchmd.models.mlip.base import GraphModel, file_sha256, first_line
from batchmd.models.registry import require_package

__all__ = ["MatGLModel", "import_matgl", "random_matgl"]

_FILES = ("model.json", "model.pt", "state.pt")
_ARCHITECTURES = ("TensorNet", "M3GNet")


def import_matgl():
    """Import ``matgl`` quietly (it logs and warns at import); raises MissingExtraError if absent.

    Imports ``metatensor.torch`` first when it is installed: once ``torch_geometric`` (which matgl
    imports) is loaded, metatensor-torch 0.10's TorchScript operations no longer compile
    (``RuntimeError: Arguments for call are not valid ... index_select``), which would break the
    metatomic and PET models of the same process; in the other order both work.
    """
    require_package("matgl", "matgl", "matgl models (TensorNet, M3GNet)")
    import importlib.util
    import sys

    if "torch_geometric" not in sys.modules and importlib.util.find_spec("metatensor") is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import metatensor.torch  # noqa: F401
            except ImportError:  # metatensor-core without metatensor-torch
                pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import matgl
        import matgl.apps.pes  # noqa: F401
        import matgl.graph._compute  # noqa: F401
        import matgl.models  # noqa: F401
    return matgl


class _Graph:
    """The attributes matgl's networks read from a PyG ``Data`` (``getattr`` access only)."""

    __slots__ = ("node_type", "pos", "edge_index", "pbc_offshift", "batch", "num_graphs", "num_nodes")

    def __init__(self, node_type, pos, edge_index, pbc_offshift, batch, num_graphs):
        self.node_type, self.pos, self.edge_index = node_type, pos, edge_index
        self.pbc_offshift, self.batch, self.num_graphs = pbc_offshift, batch, num_graphs
        self.num_nodes = pos.shape[0]


def _network(potential):
    net = potential.model
    return getattr(net, "_orig_mod", net)  # a Potential(compile_model=True) holds a torch.compile wrapper


class MatGLModel(GraphModel):
    """A matgl ``Potential`` (TensorNet or M3GNet) evaluated on batchmd batches.

    Parameters
    ----------
    potential : matgl.apps.pes.Potential
        The potential (a bare ``TensorNet``/``M3GNet`` network is wrapped in a default
        ``Potential``: no rescaling, no reference energies).
    **kwargs
        :class:`~batchmd.models.mlip.base.GraphModel` options (``skin``, ``compute_stress``,
        ``chunk_atoms``, ``device``, ``dtype``).

    Raises
    ------
    ValueError
        An architecture or option batchmd does not evaluate (see the module docstring).

    Use :meth:`from_path` (or ``load_model("matgl:DIR")``) to load a saved potential.
    """

    def __init__(self, potential, name: str | None = None, **kwargs) -> None:
        matgl = import_matgl()
        from ase.data import atomic_numbers

        if not isinstance(potential, matgl.apps.pes.Potential):
            if type(potential).__name__ not in _ARCHITECTURES:
                raise ValueError(f"batchmd: a matgl model must be a Potential or a TensorNet/M3GNet network, "
                                 f"got {type(potential).__name__}")
            potential = matgl.apps.pes.Potential(potential)
        net = _network(potential)
        arch = type(net).__name__
        if arch not in _ARCHITECTURES:
            raise ValueError(f"batchmd: matgl architecture {arch} is not supported (TensorNet and M3GNet are)")
        for flag, what in (("calc_repuls", "a ZBL repulsion (calc_repuls)"),
                           ("calc_charge", "charges (calc_charge)")):
            if getattr(potential, flag, False):
                raise ValueError(f"batchmd: matgl potentials with {what} are not supported")
        if getattr(net, "include_state", False):
            raise ValueError("batchmd: matgl models with global state features (include_state=True) are not supported")
        refs = potential.element_refs
        if refs is not None and refs.property_offset.ndim != 1:
            raise ValueError("batchmd: matgl potentials with multi-state reference energies are not supported")
        symbols = tuple(net.element_types)
        unknown = [s for s in symbols if s not in atomic_numbers]
        if unknown:
            raise ValueError(f"batchmd: matgl model has unknown element types {unknown}")
        numbers = [atomic_numbers[s] for s in symbols]
        super().__init__(potential, cutoff=float(net.cutoff), supported_numbers=numbers,
                         name=name or f"matgl-{arch}", **kwargs)
        z_to_index = torch.full((119,), -1, dtype=torch.long)
        z_to_index[torch.tensor(numbers)] = torch.arange(len(numbers))
        self.register_buffer("_z_to_index", z_to_index, persistent=False)
        self.architecture = arch
        self.threebody_cutoff = float(net.threebody_cutoff) if arch == "M3GNet" else None
        self._compute = matgl.graph._compute

    @classmethod
    def from_path(cls, path: str, architecture: str | None = None, **kwargs) -> MatGLModel:
        """Load a saved matgl potential: a directory, or a pretrained name already in matgl's cache.

        Parameters
        ----------
        path : str
            A directory with ``model.json``, ``model.pt`` and ``state.pt`` (``Potential.save``),
            or the name of a matgl pretrained model that matgl has downloaded before.
        architecture : {"TensorNet", "M3GNet"}, optional
            Require this architecture.

        Raises
        ------
        MissingExtraError
            ``matgl`` is not installed (``pip install 'batchmd[matgl]'``).
        FileNotFoundError
            Neither a model directory nor a cached pretrained name (batchmd never downloads).
        ValueError
            Not a matgl model, or an architecture or option batchmd does not evaluate.
        """
        matgl = import_matgl()
        directory = _local_directory(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = matgl.load_model(directory)  # a local directory: matgl reads it, nothing else
        except Exception as err:  # a corrupt directory, another package's files, a matgl version mismatch
            raise ValueError(f"batchmd: {path!r} is not a matgl model (matgl could not load it: "
                             f"{first_line(err.__cause__ or err)})") from err
        model = cls(loaded, name=None, **kwargs)
        if architecture is not None and model.architecture != architecture:
            raise ValueError(f"batchmd: {path!r} is a matgl {model.architecture}, not a {architecture}")
        model._model_name = f"matgl-{model.architecture}({os.path.basename(os.path.normpath(path))})"
        model._info = {"file": os.path.abspath(directory), "sha256": file_sha256(os.path.join(directory, "state.pt"))}
        return model

    def compute_energy(self, graph) -> torch.Tensor:
        """Per-system energies [B] (eV): ``data_std * net(g) + data_mean + sum of element references``."""
        potential = self.module
        net = _network(potential)
        node_type = self._z_to_index.to(graph.atomic_numbers.device)[graph.atomic_numbers]
        b = graph.num_graphs
        g = _Graph(node_type, graph.positions, graph.edge_index, graph.shifts, graph.batch, b)
        line_graph = None
        if self.threebody_cutoff is not None:
            with torch.no_grad(), self._phase("adapter"):  # timed apart (benchmarks/mlip_step_split.py)
                vec, dist = self._compute.compute_pair_vector_and_distance(graph.positions, graph.edge_index,
                                                                            graph.shifts)
                line_graph = self._compute.create_line_graph_torch(graph.edge_index, dist, vec,
                                                                   graph.positions.shape[0], self.threebody_cutoff)
        energy = net(g=g, state_attr=None, l_g=line_graph).reshape(-1)
        net.feature_dict = {}  # matgl keeps every layer's features (and their autograd graph) until the next call
        energy = potential.data_std * energy + potential.data_mean
        if potential.element_refs is not None:
            offset = potential.element_refs.property_offset.to(energy.dtype)[node_type]
            energy = energy + torch.zeros(b, dtype=energy.dtype, device=energy.device).index_add(0, graph.batch, offset)
        return energy


def _local_directory(path: str) -> str:
    """The directory holding ``model.json``, ``model.pt`` and ``state.pt``: ``path``, or its copy in matgl's cache."""
    if os.path.isdir(path):
        missing = [f for f in _FILES if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise FileNotFoundError(f"batchmd: {path!r} is not a matgl model directory (missing {', '.join(missing)})")
        return path
    if os.path.exists(path):
        raise FileNotFoundError(f"batchmd: {path!r} is a file; a matgl model is a directory with "
                                f"{', '.join(_FILES)}")
    try:  # a pretrained name matgl has downloaded before (its cache; never the network)
        from huggingface_hub import hf_hub_download
        from matgl.config import MATGL_CACHE
        from matgl.utils.io import HF_MATGL_ORG

        repo = path if "/" in path else f"{HF_MATGL_ORG}/{path}"
        found = {os.path.dirname(hf_hub_download(repo_id=repo, filename=f, cache_dir=str(MATGL_CACHE),
                                                 local_files_only=True)) for f in _FILES}
        if len(found) != 1:
            raise FileNotFoundError(path)
        return found.pop()
    except Exception:
        raise FileNotFoundError(
            f"batchmd: matgl model {path!r} is neither a directory with {', '.join(_FILES)} nor a pretrained model "
            f"in matgl's cache; batchmd never downloads weights: fetch it once with "
            f"python -c \"import matgl; matgl.load_model('{path}')\", or pass a local directory") from None


def random_matgl(architecture: str = "TensorNet", element_types=("H", "O", "Na", "Si", "Cl", "Cu"),
                 cutoff: float = 5.0, units: int = 16, nblocks: int = 2, energy_scale: float = 300.0,
                 seed: int = 0, dtype: torch.dtype = torch.float64):
    """A small matgl ``Potential`` with random weights (tests, benchmarks; not a physical model).

    Parameters
    ----------
    architecture : {"TensorNet", "M3GNet"}
    element_types : tuple of str
        Elements the model covers (its ``node_type`` order).
    cutoff : float
        Cutoff (Å); M3GNet's three-body cutoff is ``cutoff - 1``.
    units, nblocks : int
        Width and number of interaction blocks.
    energy_scale : float
        The potential's ``data_std`` (eV): a freshly initialised network varies little with the
        geometry (forces ~1e-4 eV/Å at scale 1); the default gives forces of ~0.01-0.1 eV/Å.
    seed : int
        Seeds the weights and the random element reference energies (-1 to -5 eV).
    dtype : torch.dtype

    Returns
    -------
    matgl.apps.pes.Potential
        Extensive energies; save it with ``potential.save(DIR)`` and load it with
        ``load_model("matgl:DIR")``, as a real matgl model.
    """
    matgl = import_matgl()
    from matgl.models import M3GNet, TensorNet

    torch.manual_seed(seed)
    if architecture == "TensorNet":
        net = TensorNet(element_types=tuple(element_types), units=units, nblocks=nblocks, cutoff=cutoff,
                        is_intensive=False)
    elif architecture == "M3GNet":
        net = M3GNet(element_types=tuple(element_types), units=units, dim_node_embedding=units,
                     dim_edge_embedding=units, nblocks=nblocks, cutoff=cutoff, threebody_cutoff=cutoff - 1.0,
                     is_intensive=False)
    else:
        raise ValueError(f"batchmd: random_matgl architecture must be TensorNet or M3GNet, got {architecture!r}")
    generator = torch.Generator().manual_seed(seed)
    refs = -1.0 - 4.0 * torch.rand(len(element_types), generator=generator, dtype=torch.float64)
    potential = matgl.apps.pes.Potential(net, element_refs=refs.float(), data_std=energy_scale,
                                         data_mean=0.1)
    return potential.to(dtype).eval()
