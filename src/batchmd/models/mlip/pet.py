"""PET models (PET-MAD, PET-OMat, ... from ``upet``) as batched batchmd models, through metatomic.

PET (Pozdnyakov and Ceriotti, NeurIPS 2023, arXiv:2305.19302) is a point-edge transformer; the
universal PET models (PET-MAD, Mazitov et al., Nat. Commun. (2025), doi:10.1038/s41467-025-65662-7,
and the other ``upet`` families) are distributed as metatrain checkpoints (``.ckpt``) that ``upet``
exports to metatomic ``AtomisticModel`` files (``.pt``). batchmd evaluates the exported model with
:class:`~batchmd.models.mlip.metatomic.MetatomicModel` (its neighbor lists from batchmd's edge
list), so a PET runs as any metatomic model; this module adds:

- ``load_model("pet:PATH")``: an exported ``.pt`` file, or a metatrain ``.ckpt`` checkpoint
  exported on the fly (``upet.get_upet(checkpoint_path=...)``, local, no download);
- ``load_model("upet:NAME")`` (e.g. ``upet:pet-mad-s``): the newest checkpoint of that name
  already in the Hugging Face cache (where ``upet`` keeps what it downloaded). batchmd never
  downloads weights: a name that is not cached is a one-line ``FileNotFoundError`` saying how to
  fetch it;
- ``dtype``: PET checkpoints are float32; ``PETModel(..., model_dtype=torch.float64)`` (or
  ``load_model(spec, dtype=torch.float64)``) runs the network in float64 (what
  ``UPETCalculator(dtype=...)`` does), otherwise the network runs in its declared dtype and
  results are converted to the batch's;
- ``non_conservative=True``: forces and stress read from the model's ``non_conservative_force``
  and ``non_conservative_stress`` heads (PET-MAD >= 1.1, PET-OMat, ...) instead of the
  gradient of the energy: one forward pass, no backward (faster, not energy-conserving; the net
  force of each system is removed, as ``MetatomicCalculator(non_conservative=True)`` does).

Energies, forces and stress equal ``metatomic_ase.MetatomicCalculator`` (which
``upet.calculator.UPETCalculator`` wraps) to round-off (tests/test_mlip_pet.py).

Example
-------
>>> from batchmd.models import load_model
>>> model = load_model("pet:/models/pet-mad-s-v1.6.0.pt")   # doctest: +SKIP
"""

from __future__ import annotations

import glob
import os
import re
import warnings

import torch

from batchmd.models.mlip.base import Graph, file_sha256, first_line
from batchmd.models.mlip.metatomic import MetatomicModel, _import
from batchmd.models.registry import require_package

__all__ = ["PETModel", "random_pet"]

_DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32"}


def _load_exported(path: str, what: str):
    _, mta = _import()
    if path.endswith(".ckpt"):
        require_package("upet", "pet", f"{what} (a metatrain checkpoint)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import upet

                return upet.get_upet(checkpoint_path=path)
        except Exception as err:
            raise ValueError(f"batchmd: {path!r} is not a PET checkpoint (upet could not export it: "
                             f"{first_line(err)})") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mta.load_atomistic_model(path)
    except Exception as err:
        raise ValueError(f"batchmd: {path!r} is not an exported metatomic model (metatomic could not load it: "
                         f"{first_line(err)})") from err


def cached_upet_checkpoint(name: str) -> str:
    """Path of the newest ``NAME-vX.Y.Z.ckpt`` of ``lab-cosmo/upet`` in the local Hugging Face cache.

    Raises
    ------
    FileNotFoundError
        Not in the cache (batchmd never downloads; the message says how to fetch it).
    """
    from huggingface_hub.constants import HF_HUB_CACHE

    pattern = os.path.join(HF_HUB_CACHE, "models--lab-cosmo--upet", "snapshots", "*", "models", f"{name}-v*.ckpt")
    found = []
    for path in glob.glob(pattern):
        match = re.search(r"-v(\d+)\.(\d+)\.(\d+)\.ckpt$", path)
        if match:
            found.append((tuple(int(x) for x in match.groups()), path))
    if not found:
        model, _, size = name.rpartition("-")
        raise FileNotFoundError(
            f"batchmd: UPET model {name!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}); batchmd never "
            f"downloads weights: fetch it once with python -c \"import upet; upet.save_upet(model='{model}', "
            f"size='{size}')\" and load the .pt file with pet:PATH")
    return max(found)[1]


class PETModel(MetatomicModel):
    """A PET model (exported to metatomic) evaluated on batchmd batches.

    Parameters
    ----------
    module : metatomic.torch.AtomisticModel
        The exported model.
    model_dtype : torch.dtype, optional
        Run the network in this dtype (PET checkpoints are float32); default: its declared dtype.
    non_conservative : bool
        Forces and stress from the model's non-conservative heads (one forward, no backward).
    energy_key : str
        The energy output (``"energy"``, or a variant such as ``"energy/r2scan"``).
    **kwargs
        :class:`~batchmd.models.mlip.base.GraphModel` options (``skin``, ``compute_stress``,
        ``chunk_atoms``, ``device``).

    Raises
    ------
    ValueError
        ``non_conservative=True`` for a model without those heads.
    """

    def __init__(self, module, model_dtype: torch.dtype | None = None, non_conservative: bool = False,
                 energy_key: str = "energy", name: str = "PET", **kwargs) -> None:
        if model_dtype is not None:
            if model_dtype not in _DTYPE_NAMES:
                raise ValueError(f"batchmd: PET model_dtype must be float32 or float64, got {model_dtype}")
            module._capabilities.dtype = _DTYPE_NAMES[model_dtype]  # as upet's UPETCalculator(dtype=...)
            module = module.to(dtype=model_dtype)
        kwargs.pop("dtype", None)
        super().__init__(module, energy_key=energy_key, name=name, **kwargs)
        self.non_conservative = bool(non_conservative)
        if self.non_conservative:
            outputs = module.capabilities().outputs
            variant = energy_key.partition("/")[2]
            suffix = f"/{variant}" if variant else ""
            force = next((k + suffix for k in ("non_conservative_force", "non_conservative_forces")
                          if k + suffix in outputs), None)
            stress = f"non_conservative_stress{suffix}"
            if force is None or stress not in outputs:
                raise ValueError(f"batchmd: model {name} has no non-conservative force and stress outputs "
                                 f"(it has {sorted(k for k in outputs if not k.startswith('mtt::'))})")
            self._nc_keys = (force, stress)

    @classmethod
    def from_spec(cls, argument: str, upet_name: bool = False, dtype=None, device=None, **kwargs) -> PETModel:
        """Load ``pet:PATH`` (``.pt`` or ``.ckpt``) or ``upet:NAME`` (a cached checkpoint).

        Raises
        ------
        MissingExtraError
            ``metatomic-torch`` (or ``upet`` for checkpoints) is not installed (``batchmd[pet]``).
        FileNotFoundError
            No such file, or a name not in the local cache.
        ValueError
            Not a PET/metatomic model.
        """
        require_package("metatomic", "pet", "PET models")
        path = cached_upet_checkpoint(argument) if upet_name else argument
        if not os.path.isfile(path):
            raise FileNotFoundError(f"batchmd: PET model file {path!r} not found")
        module = _load_exported(path, f"model 'pet:{argument}'")
        label = argument if upet_name else os.path.basename(path)
        model = cls(module, model_dtype=dtype, name=f"PET({label})", device=device, **kwargs)
        model._info = {"file": os.path.abspath(path), "sha256": file_sha256(path)}
        return model

    def _evaluate(self, positions, cell, pbc, numbers, batch_idx, ptr, edges, fields=None):
        if not self.non_conservative:
            return super()._evaluate(positions, cell, pbc, numbers, batch_idx, ptr, edges, fields)
        mta = self._mta
        b, out_dtype = cell.shape[0], positions.dtype
        batch_idx = batch_idx.long()
        with self._phase("graph"):
            graph = Graph(positions=positions, cell=cell, pbc=pbc, atomic_numbers=numbers.long(), batch=batch_idx,
                          ptr=ptr.long(), edge_index=edges.edge_index, unit_shifts=edges.unit_shifts,
                          shifts=edges.shifts(cell, batch_idx), num_graphs=b)
            systems = self.systems(graph)
        force_key, stress_key = self._nc_keys
        outputs = {self.energy_key: mta.ModelOutput(quantity="energy", unit="eV", per_atom=False),
                   force_key: mta.ModelOutput(unit="eV/Angstrom", per_atom=True)}
        if self.computes_stress:
            outputs[stress_key] = mta.ModelOutput(unit="eV/Angstrom^3", per_atom=False)
        options = mta.ModelEvaluationOptions(length_unit="angstrom", outputs=outputs)
        with self._phase("forward"), torch.no_grad():
            result = self.module(systems, options, check_consistency=False)
        block = result[self.energy_key].block()
        energy = torch.zeros(b, dtype=out_dtype, device=positions.device).index_add(
            0, block.samples.column("system").long(), block.values.reshape(-1).to(out_dtype))
        block = result[force_key].block()
        rows = ptr.long()[block.samples.column("system").long()] + block.samples.column("atom").long()
        forces = torch.zeros_like(positions).index_copy(0, rows, block.values.reshape(-1, 3).to(out_dtype))
        count = (ptr[1:] - ptr[:-1]).to(out_dtype)
        mean = torch.zeros((b, 3), dtype=out_dtype, device=positions.device).index_add(0, batch_idx, forces) / count[:, None]
        out = {"energy": energy.reshape(b, 1), "forces": forces - mean[batch_idx]}  # no net force, as metatomic_ase
        if self.computes_stress:
            block = result[stress_key].block()
            stress = torch.zeros((b, 3, 3), dtype=out_dtype, device=positions.device).index_copy(
                0, block.samples.column("system").long(), block.values.reshape(-1, 3, 3).to(out_dtype))
            periodic = torch.linalg.det(cell).abs() > 0
            out["stress"] = torch.where(periodic[:, None, None], stress, torch.zeros_like(stress))
        return out


def random_pet(path: str, atomic_types=(1, 8, 11, 14, 17, 29), cutoff: float = 4.5, width: int = 16,
               non_conservative: bool = True, seed: int = 0, dtype: torch.dtype = torch.float64) -> str:
    """Export a small PET with random weights to ``path`` (tests, benchmarks; not a physical model).

    The architecture is metatrain's PET (the one of the ``upet`` models, default hyperparameters
    but ``width`` for every feature size), with an energy head and, when ``non_conservative``,
    PET-MAD's ``non_conservative_force`` and ``non_conservative_stress`` heads. Needs
    ``metatrain`` (installed with ``upet``).

    Returns
    -------
    str
        ``path``: an exported metatomic model, or a metatrain checkpoint when ``path`` ends with
        ``.ckpt``; either loads with ``load_model("pet:PATH")``.
    """
    require_package("metatrain", "pet", "random_pet")
    import copy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from metatomic.torch import ModelMetadata
        from metatrain.utils.architectures import get_default_hypers, import_architecture
        from metatrain.utils.data import DatasetInfo
        from metatrain.utils.data.target_info import get_energy_target_info, get_generic_target_info

        hypers = copy.deepcopy(get_default_hypers("pet")["model"])
        hypers.update(cutoff=float(cutoff), d_pet=width, d_head=width, d_node=width, d_feedforward=width,
                      num_heads=2, num_attention_layers=1, num_gnn_layers=2)
        targets = {"energy": get_energy_target_info("energy", {"quantity": "energy", "unit": "eV"})}
        if non_conservative:
            targets["non_conservative_force"] = get_generic_target_info("non_conservative_force", {
                "quantity": "force", "unit": "eV/A", "type": {"cartesian": {"rank": 1}}, "num_subtargets": 1,
                "sample_kind": "atom"})
            targets["non_conservative_stress"] = get_generic_target_info("non_conservative_stress", {
                "quantity": "pressure", "unit": "eV/A^3", "type": {"cartesian": {"rank": 2}}, "num_subtargets": 1,
                "sample_kind": "system"})
        info = DatasetInfo(length_unit="Angstrom", atomic_types=sorted(int(z) for z in atomic_types), targets=targets)
        torch.manual_seed(seed)
        model = import_architecture("pet").__model__(hypers, info).to(dtype)
        if str(path).endswith(".ckpt"):  # a metatrain checkpoint, as upet publishes its models
            torch.save(model.get_checkpoint(), str(path))
        else:
            model.export(metadata=ModelMetadata(name="random PET (batchmd tests)")).save(str(path))
    return str(path)
