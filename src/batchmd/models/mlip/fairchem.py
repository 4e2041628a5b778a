"""fairchem (``fairchem-core``) models, UMA and eSEN, as batched batchmd models.

UMA (Wood et al., "UMA: A Family of Universal Models for Atoms", arXiv:2506.23971) and eSEN
(Fu et al., arXiv:2502.12147) are eSCN-MD networks from Meta's fairchem. A checkpoint is an
inference checkpoint file (``MLIPInferenceCheckpoint``, e.g. ``uma-s-1p1.pt`` fetched
yourself; batchmd never downloads). ``load_model("fairchem:PATH")`` loads it with
``fairchem.core.units.mlip_unit.load_predict_unit`` and keeps its network (a ``HydraModel``:
backbone plus heads), its tasks' normalizers and element references.

Task, charge, spin
------------------
A UMA checkpoint serves several *tasks* (its datasets: ``omat``, ``omol``, ``oc20``,
``odac``, ``omc``...); pick one with ``fairchem:PATH?task=omol`` or
``FAIRChemModel.from_file(path, task="omol")`` (required when the checkpoint has more than
one, as ``FAIRChemCalculator(task_name=...)``). The total charge and the spin multiplicity
are read per system from the batch's system fields ``charge`` and ``spin``, which
``Batch.from_ase`` takes from ``atoms.info["charge"]`` / ``atoms.info["spin"]`` as
fairchem's calculator does; a system without them gets fairchem's defaults (charge 0; spin 1
for ``omol``, 0 otherwise). Non-integer values are refused (one line).

Graph
-----
The network runs with ``otf_graph=False`` (fairchem's ``external_graph_gen``): it gets
batchmd's edge list, ``edge_index = (j, i)`` (fairchem's (source, target) with
``vec = x[source] - x[target] + cell_offsets @ cell``) and ``cell_offsets`` = batchmd's
``unit_shifts``. batchmd's list holds every pair within the cutoff; fairchem's own graph keeps
at most ``max_neighbors`` (300 for UMA/eSEN) nearest neighbours per atom, so the two agree
whenever no atom has more than that many neighbours within the cutoff (true for any
condensed matter at 6 Å). Energies are ``denorm(head output)`` plus the element references,
as ``MLIPPredictUnit.predict``; forces and stress come from batchmd's autograd pass
(:class:`~batchmd.models.mlip.base.GraphModel`), equal to ``FAIRChemCalculator`` to
round-off (tests/test_mlip_fairchem.py). The MOLE experts stay unmerged (fairchem's ``traineval``/``batch``
modes), so systems of any composition share one call. Isolated single atoms: fairchem's
calculator returns tabulated atomic energies for them; batchmd evaluates the network.

Example
-------
>>> model = load_model("fairchem:/models/uma-s-1p1.pt?task=omat")   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import os
import warnings

import torch

from batchmd.models.mlip.base import GraphModel, file_sha256, first_line
from batchmd.models.registry import require_package

__all__ = ["FAIRChemModel", "parse_fairchem_spec", "random_fairchem_checkpoint"]

#: fairchem's defaults for systems without ``atoms.info`` charge / spin
#: (``fairchem.core.units.mlip_unit.api.inference``: DEFAULT_CHARGE, DEFAULT_SPIN_OMOL, DEFAULT_SPIN).
DEFAULT_CHARGE, DEFAULT_SPIN_OMOL, DEFAULT_SPIN = 0, 1, 0


def parse_fairchem_spec(argument: str) -> tuple[str, dict[str, str]]:
    """Split ``"PATH?task=omol"`` into ``("PATH", {"task": "omol"})``.

    Raises
    ------
    ValueError
        An option other than ``task``, or one without ``=``.
    """
    path, _, query = argument.partition("?")
    options = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("task",):
            raise ValueError(f"batchmd: fairchem spec option {item!r} not understood (use PATH?task=NAME)")
        options[key] = value
    return path, options


def _settings():
    """fairchem inference settings for batchmd: unmerged MOLE, no compile, external graph, float64 buffers."""
    from fairchem.core.units.mlip_unit.api.inference import NAME_TO_INFERENCE_SETTING

    settings = copy.deepcopy(NAME_TO_INFERENCE_SETTING["traineval"])
    settings.external_graph_gen = True
    settings.activation_checkpointing = False
    settings.merge_mole = False
    settings.compile = False
    settings.tf32 = False
    # fairchem builds the non-persistent buffers (SO3 grid matrices, radial offsets, ...) in this
    # dtype; built in float64 they are exact, and the network then follows the batch's dtype.
    # (Built in float32 and cast to float64 they are off by 1e-7, which shows in energies.)
    settings.base_precision_dtype = torch.float64
    return settings


class FAIRChemModel(GraphModel):
    """A fairchem (UMA / eSEN) network evaluated on batchmd batches.

    Parameters
    ----------
    predict_unit : fairchem.core.units.mlip_unit.MLIPPredictUnit
        Loaded with external graph generation (see :meth:`from_file`); batchmd takes its
        network and switches off its own force/stress autograd.
    task : str, optional
        Task (dataset) name; required when the checkpoint has several.
    **kwargs
        :class:`~batchmd.models.mlip.base.GraphModel` options.

    Raises
    ------
    ValueError
        Unknown task, or none given for a multi-task checkpoint.
    """

    system_inputs = ("charge", "spin")

    def __init__(self, predict_unit, task: str | None = None, name: str = "fairchem", **kwargs) -> None:
        tasks = predict_unit.dataset_to_tasks
        if task is None:
            if len(tasks) != 1:
                raise ValueError(f"batchmd: this fairchem checkpoint has tasks {sorted(tasks)}; choose one "
                                 f"(fairchem:PATH?task=NAME or task=...)")
            task = next(iter(tasks))
        if task not in tasks:
            raise ValueError(f"batchmd: fairchem task {task!r} not in the checkpoint's tasks {sorted(tasks)}")
        energy_tasks = [t for t in tasks[task] if t.property == "energy"]
        if not energy_tasks:
            raise ValueError(f"batchmd: fairchem task {task!r} predicts no energy")
        hydra = predict_unit.model.module
        backbone = hydra.backbone
        if backbone.regress_config.direct_forces:
            raise ValueError("batchmd: direct-force fairchem models are not conservative; batchmd takes forces "
                             "as -dE/dx and supports only gradient-force models")
        if getattr(backbone, "otf_graph", False):
            raise ValueError("batchmd: the fairchem network builds its own graph (otf_graph=True); load it with "
                             "FAIRChemModel.from_file, which feeds batchmd's edge list")
        if not getattr(predict_unit, "lazy_model_intialized", True):
            # what MLIPPredictUnit does before its first prediction (the backend's inference
            # preparation; MOLE stays unmerged, so no data is needed)
            hydra.prepare_for_inference(None, predict_unit.inference_settings)
            predict_unit.lazy_model_intialized = True
        # batchmd's GraphModel takes forces and stress by autograd: the heads only return energies.
        backbone.regress_config.forces = False
        backbone.regress_config.stress = False
        backbone.regress_config.hessian = False
        self.task = task
        self._energy_task = energy_tasks[0]
        self._predict_unit = predict_unit
        cutoff = float(backbone.cutoff)
        numbers = range(1, int(getattr(backbone, "max_num_elements", 100)))
        super().__init__(hydra, cutoff=cutoff, supported_numbers=numbers, name=name, **kwargs)
        self._default_spin = DEFAULT_SPIN_OMOL if task == "omol" else DEFAULT_SPIN

    def _place(self, device, dtype) -> None:
        """Move the network, and the task's normalizer and element references, to ``device``/``dtype``."""
        if self._placed != (device, dtype):
            for module in (self._energy_task.normalizer, self._energy_task.element_references):
                if module is not None:
                    module.to(device=device, dtype=dtype)
        super()._place(device, dtype)

    @classmethod
    def from_file(cls, path: str, task: str | None = None, **kwargs) -> FAIRChemModel:
        """Load a fairchem inference checkpoint (``.pt``) with batchmd's edge list feeding it.

        Raises
        ------
        MissingExtraError
            ``fairchem-core`` is not installed (``pip install 'batchmd[fairchem]'``).
        FileNotFoundError
            No such file.
        ValueError
            Not a fairchem inference checkpoint, unknown task.
        """
        require_package("fairchem", "fairchem", "fairchem models")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"batchmd: fairchem checkpoint {path!r} not found")
        from fairchem.core.units.mlip_unit import load_predict_unit

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                level = logging.getLogger().level
                logging.getLogger().setLevel(logging.ERROR)  # fairchem logs through the root logger
                try:
                    unit = load_predict_unit(path, inference_settings=_settings(), device="cpu")
                finally:
                    logging.getLogger().setLevel(level)
        except Exception as err:
            raise ValueError(f"batchmd: {path!r} is not a fairchem inference checkpoint (fairchem could not load "
                             f"it: {first_line(err)})") from err
        model = cls(unit, task=task, name=f"fairchem({os.path.basename(path)}, {task or 'default'})", **kwargs)
        model._info = {"file": os.path.abspath(path), "sha256": file_sha256(path), "task": model.task}
        return model

    def _per_system(self, graph, name: str, default: int) -> torch.Tensor:
        value = graph.system_fields.get(name)
        device = graph.positions.device
        if value is None:
            return torch.full((graph.num_graphs,), default, dtype=torch.long, device=device)
        value = value.reshape(-1).to(device)
        if value.is_floating_point():
            value = torch.where(torch.isnan(value), torch.full_like(value, default), value)
            if not torch.equal(value, value.round()):
                raise ValueError(f"batchmd: fairchem needs an integer {name} per system (atoms.info[{name!r}]), "
                                 f"got {value.tolist()}")
        return value.long()

    def compute_energy(self, graph) -> torch.Tensor:
        """Per-system energies [B] (eV) of ``graph`` for the model's task."""
        from fairchem.core.datasets.atomic_data import AtomicData

        b, n = graph.num_graphs, graph.positions.shape[0]
        dtype, device = graph.positions.dtype, graph.positions.device
        i, j = graph.edge_index
        edge_system = graph.batch[i]
        data = AtomicData(
            pos=graph.positions, atomic_numbers=graph.atomic_numbers, cell=graph.cell, pbc=graph.pbc,
            natoms=graph.ptr[1:] - graph.ptr[:-1], edge_index=torch.stack((j, i)),
            cell_offsets=graph.unit_shifts.to(dtype),
            nedges=torch.bincount(edge_system, minlength=b),
            charge=self._per_system(graph, "charge", DEFAULT_CHARGE),
            spin=self._per_system(graph, "spin", self._default_spin),
            fixed=torch.zeros(n, dtype=torch.long, device=device), tags=torch.zeros(n, dtype=torch.long, device=device),
            batch=graph.batch, sid=[""] * b, dataset=[self.task] * b)
        out = self.module(data)[self._energy_task.name]
        energy = out[self._energy_task.property] if isinstance(out, dict) else out
        energy = self._energy_task.normalizer.denorm(energy.reshape(-1))
        if self._energy_task.element_references is not None:
            energy = self._energy_task.element_references.undo_refs(data, energy)
        return energy.reshape(-1)


def random_fairchem_checkpoint(path: str, tasks=("omat", "omol"), cutoff: float = 5.0, channels: int = 16,
                               num_layers: int = 2, lmax: int = 2, seed: int = 0) -> str:
    """Write a small eSCN-MD (UMA-like: dataset embedding, charge/spin embedding, one head per task)
    inference checkpoint with random weights to ``path`` (tests and benchmarks; not a physical model).

    Load it with ``load_model(f"fairchem:{path}?task=omat")`` or fairchem's
    ``load_predict_unit(path, inference_settings="traineval")``.
    """
    require_package("fairchem", "fairchem", "fairchem models")
    import hydra
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    tasks = list(tasks)
    backbone = dict(model="fairchem.core.models.uma.escn_md.eSCNMDBackbone", max_num_elements=100,
                    sphere_channels=channels, lmax=lmax, mmax=2, otf_graph=True, max_neighbors=300, cutoff=cutoff,
                    edge_channels=channels, num_distance_basis=32, direct_forces=False, regress_forces=True,
                    regress_stress=True, num_layers=num_layers, hidden_channels=channels,
                    dataset_mapping={t: t for t in tasks}, use_dataset_embedding=True, always_use_pbc=False)
    heads = {"efs": {"module": "fairchem.core.models.uma.escn_moe.DatasetSpecificSingleHeadWrapper",
                     "dataset_names": tasks, "head_cls": "fairchem.core.models.uma.escn_md.MLP_EFS_Head",
                     "head_kwargs": {"wrap_property": False}}}
    model_config = {"_target_": "fairchem.core.models.base.HydraModel", "backbone": backbone, "heads": heads,
                    "otf_graph": True, "pass_through_head_outputs": True}

    def task(name, prop, level, dim, dataset):
        return {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task", "name": name, "level": level,
                "property": prop, "datasets": [dataset],
                "out_spec": {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec", "dim": dim,
                             "dtype": "float32"},
                "normalizer": {"_target_": "fairchem.core.modules.normalization.normalizer.Normalizer",
                               "mean": 0.0, "rmsd": 1.0}}

    tasks_config = []
    for t in tasks:
        tasks_config += [task(f"{t}_energy", "energy", "system", [1], t), task(f"{t}_forces", "forces", "atom", [3], t),
                         task(f"{t}_stress", "stress", "system", [1, 9], t)]
    torch.manual_seed(seed)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        model = hydra.utils.instantiate(model_config)
    finally:
        logging.getLogger().setLevel(level)
    ema = torch.optim.swa_utils.AveragedModel(model).state_dict()
    torch.save(MLIPInferenceCheckpoint(model_config=model_config, model_state_dict=model.state_dict(),
                                       ema_state_dict=ema, tasks_config=tasks_config), path)
    return path
