"""Models exported to metatomic (``metatomic-torch``) as batched batchmd models.

metatomic is the model-exchange format that LAMMPS, i-PI, ASE and other engines read
(https://docs.metatensor.org/metatomic): a model *declares* its capabilities (atomic types,
interaction range, units, dtype, outputs) and the neighbor lists it needs (cutoff, full or
half); the engine builds the lists and hands over one ``System`` per structure. batchmd is
such an engine: ``load_model("metatomic:PATH")`` evaluates any exported model on a batch.

What batchmd provides: for every requested list, the pairs with ``|r_ij| < cutoff``
(always strict) from its batched edge list, full or half as requested, with samples
``(first_atom, second_atom, cell_shift_a, cell_shift_b, cell_shift_c)`` and the pair vectors
``x_j - x_i + n @ cell`` as values, built from the strained positions so that forces and stress
come out of :class:`~batchmd.models.mlip.base.GraphModel`'s autograd pass (as
``metatomic_ase.MetatomicCalculator`` does). Inputs are converted to the model's declared
dtype and results back to the batch's. Models that request additional inputs (masses,
velocities, charges) are refused with a one-line error.

Example
-------
>>> from batchmd.models import load_model
>>> model = load_model("metatomic:exported-model.pt")     # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

from batchmd.models.mlip.base import GraphModel, file_sha256, first_line
from batchmd.models.registry import require_package

__all__ = ["MetatomicModel"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _import():
    require_package("metatomic", "metatomic", "metatomic models")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import metatensor.torch as mts
            import metatomic.torch as mta
    except RuntimeError as err:  # TorchScript compilation of metatensor's operations
        if "torch_geometric" in sys.modules:
            raise ImportError("batchmd: metatensor-torch cannot be imported after torch_geometric (imported by "
                              "matgl): load metatomic/PET models, or import metatensor.torch, before matgl") from err
        raise
    return mts, mta


def _lex_positive(shifts: torch.Tensor) -> torch.Tensor:
    a, b, c = shifts.unbind(1)
    return (a > 0) | ((a == 0) & ((b > 0) | ((b == 0) & (c > 0))))


class MetatomicModel(GraphModel):
    """An exported metatomic ``AtomisticModel`` evaluated on batchmd batches.

    Parameters
    ----------
    module : metatomic.torch.AtomisticModel
        The loaded model (``metatomic.torch.load_atomistic_model``).
    energy_key : str
        The energy output to use (default ``"energy"``; variants such as ``"energy/pbe"``
        when the model has them).
    **kwargs
        :class:`~batchmd.models.mlip.base.GraphModel` options.

    Use :meth:`from_file` (or ``load_model("metatomic:PATH")``).
    """

    def __init__(self, module, energy_key: str = "energy", name: str = "metatomic", **kwargs) -> None:
        mts, mta = _import()
        self._mts, self._mta = mts, mta
        caps = module.capabilities()
        if energy_key not in caps.outputs:
            raise ValueError(f"batchmd: the metatomic model has no {energy_key!r} output "
                             f"(it has {sorted(caps.outputs)})")
        try:
            requested_inputs = module.requested_inputs(use_new_names=True)
        except TypeError:  # older metatomic-torch
            requested_inputs = module.requested_inputs()
        if len(requested_inputs) > 0:
            raise ValueError(f"batchmd: the metatomic model requests inputs {sorted(requested_inputs)}, "
                             "which batchmd does not provide")
        self._requests = list(module.requested_neighbor_lists())
        cutoffs = [float(o.engine_cutoff("angstrom")) for o in self._requests]
        interaction_range = float(caps.interaction_range) * mta.unit_conversion_factor(caps.length_unit, "angstrom")
        cutoff = max(cutoffs) if cutoffs else (interaction_range if interaction_range < float("inf") else 1.0)
        self.model_dtype = _DTYPES.get(caps.dtype)
        if self.model_dtype is None:
            raise ValueError(f"batchmd: unsupported metatomic model dtype {caps.dtype!r}")
        super().__init__(module, cutoff=cutoff, supported_numbers=[int(t) for t in caps.atomic_types], name=name,
                         **kwargs)
        self.energy_key = energy_key
        self._cutoffs = cutoffs

    @classmethod
    def from_file(cls, path: str, extensions_directory: str | None = None, **kwargs) -> MetatomicModel:
        """Load an exported metatomic model (``.pt``).

        Raises
        ------
        MissingExtraError
            ``metatomic-torch`` is not installed (``pip install 'batchmd[metatomic]'``).
        FileNotFoundError
            No such file.
        ValueError
            The file is not an exported metatomic model.
        """
        _, mta = _import()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"batchmd: metatomic model file {path!r} not found")
        try:
            module = mta.load_atomistic_model(path, extensions_directory=extensions_directory)
        except Exception as err:  # not an exported TorchScript model, missing extensions, ...
            raise ValueError(f"batchmd: {path!r} is not an exported metatomic model (metatomic could not load it: "
                             f"{first_line(err)})") from err
        model = cls(module, name=f"metatomic({os.path.basename(path)})", **kwargs)
        model._info = {"file": os.path.abspath(path), "sha256": file_sha256(path)}
        return model

    def _place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Only the device follows the batch: a metatomic model runs in its declared dtype."""
        if self._placed != (device, None):
            self.module.to(device=device)
            self._placed = (device, None)

    def systems(self, graph) -> list:
        """One metatomic ``System`` per structure of ``graph``, in the model's dtype, with the requested lists."""
        mts, mta = self._mts, self._mta
        dtype = self.model_dtype
        device = graph.positions.device
        positions = graph.positions.to(dtype)
        cell = graph.cell.to(dtype) * graph.pbc.to(dtype)[:, :, None]  # metatomic: zero vectors where not periodic
        vectors = graph.edge_vectors.to(dtype)
        lengths = torch.linalg.vector_norm(vectors, dim=1)
        i, j = graph.edge_index
        shifts = graph.unit_shifts.to(torch.int32)
        edge_system = graph.batch[i]
        ptr = graph.ptr.tolist()
        types = graph.atomic_numbers.to(torch.int32)
        xyz = mts.Labels("xyz", torch.tensor([[0], [1], [2]], device=device))
        distance = mts.Labels("distance", torch.tensor([[0]], device=device))
        b = graph.num_graphs
        per_list = []  # for each requested list: (samples, vectors) split by system (edges are grouped by system)
        for options, rc in zip(self._requests, self._cutoffs):
            keep = lengths < rc
            if not options.full_list:
                keep = keep & ((i < j) | ((i == j) & _lex_positive(graph.unit_shifts)))
            sel = torch.nonzero(keep).reshape(-1)
            first = graph.ptr[edge_system[sel]]
            samples = torch.cat([(i[sel] - first).to(torch.int32)[:, None], (j[sel] - first).to(torch.int32)[:, None],
                                 shifts[sel]], dim=1)
            counts = torch.bincount(edge_system[sel], minlength=b).tolist()
            per_list.append((samples.split(counts), vectors[sel].reshape(-1, 3, 1).split(counts)))
        systems = []
        for s in range(b):
            system = mta.System(types=types[ptr[s]:ptr[s + 1]], positions=positions[ptr[s]:ptr[s + 1]],
                                cell=cell[s], pbc=graph.pbc[s])
            for options, (samples, values) in zip(self._requests, per_list):
                block = mts.TensorBlock(
                    values=values[s],
                    samples=mts.Labels(["first_atom", "second_atom", "cell_shift_a", "cell_shift_b", "cell_shift_c"],
                                       samples[s], assume_unique=True),
                    components=[xyz], properties=distance)
                system.add_neighbor_list(options, block)
            systems.append(system)
        return systems

    def compute_energy(self, graph) -> torch.Tensor:
        """Per-system energies [B] (eV): one metatomic ``System`` per structure with the requested lists."""
        mta = self._mta
        options = mta.ModelEvaluationOptions(
            length_unit="angstrom",
            outputs={self.energy_key: mta.ModelOutput(quantity="energy", unit="eV", per_atom=False)})
        with self._phase("adapter"):  # timed apart from the network (benchmarks/mlip_step_split.py)
            systems = self.systems(graph)
        result = self.module(systems, options, check_consistency=False)[self.energy_key].block()
        order = result.samples.column("system").to(torch.long)
        energy = torch.zeros(graph.num_graphs, dtype=self.model_dtype, device=graph.positions.device)
        return energy.index_add(0, order, result.values.reshape(-1)).to(graph.positions.dtype)
