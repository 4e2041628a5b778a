"""Any TorchSim model as a batchmd model: a bridge to ``torch_sim.models.interface.ModelInterface``.

Model packages ship TorchSim adapters themselves (mace's ``MaceTorchSimModel``, sevenn >= 0.11's
``sevenn.torchsim.SevenNetModel``, orb-models 0.7, mattersim 1.2.5, fairchem, nequip,
metatomic-torchsim; TorchSim's own Lennard-Jones, Morse, soft-sphere). :class:`TorchSimModel`
wraps any of them so it runs batchmd's dynamics, inflight batching, hooks and budgets:

- the live :class:`~batchmd.data.Batch` becomes a ``torch_sim.SimState`` (positions, masses,
  atomic numbers, system index; the cell **transposed**, TorchSim storing lattice vectors as
  columns where batchmd, like ASE, stores rows; ``pbc`` per state, so systems are grouped by
  their ``pbc`` pattern, one model call per pattern present, usually one);
- the state is built once per batch layout and reused: later calls assign new positions and
  cells to it (no validation pass, no copy when the model's dtype and device are the batch's);
- the model's ``energy`` [B] (eV), ``forces`` [N, 3] (eV/Å) and ``stress`` [B, 3, 3] (eV/Å^3,
  TorchSim's sign is ASE's: positive in tension, ``-dE/d(strain)/V`` with the sign of
  ``atoms.get_stress()``) come back in the batch's dtype on the batch's device; systems
  with a zero-volume cell get zero stress, as batchmd's own adapters give;
- systems that are not systems or need no evaluation are left out of the state: EMPTY rows
  (padding of a padded live batch), FAILED systems (their positions may be non-finite; a
  model's own neighbor list would fail on them) and systems with no atoms; with
  ``skip_finished=True`` (the dynamics loop asks for it) also CONVERGED / OUT_OF_STEPS
  systems waiting for a refill point, whose outputs in ``out`` are kept. Left-out systems get
  zero energy, forces and stress (or keep ``out``'s values under ``skip_finished``);
- ``memory_scales_with`` ("n_atoms", "n_atoms_x_density", "n_edges") is the model's:
  "n_atoms" gives batchmd's budgets (:mod:`batchmd.dynamics.budget`) no edge term; the
  others count edges within :attr:`TorchSimModel.cutoff` (the model's ``cutoff`` or
  ``r_max``, or the ``cutoff`` given to the bridge).

Host synchronisation: one read of a [B] int32 code per call (which systems are evaluated
and their ``pbc`` pattern); none else in the bridge. A model that builds its own neighbor
list on the host syncs on its own (MACE's adapter and TorchSim's pair potentials do).

TorchSim itself is imported only when a model is wrapped: batchmd does not depend on it
(``pip install 'batchmd[torchsim]'``; torch-sim-atomistic 0.6 needs Python >= 3.12).

Source of the interface: TorchSim (Cohen et al., *TorchSim: An efficient atomistic simulation
engine in PyTorch*, AI for Science 1, 025003 (2025); github.com/TorchSim/torch-sim),
``torch_sim/models/interface.py`` and ``torch_sim/state.py`` of release 0.6.2.

Example
-------
>>> from torch_sim.models.lennard_jones import LennardJonesModel          # doctest: +SKIP
>>> from batchmd.models.torchsim import TorchSimModel
>>> lj = LennardJonesModel(sigma=3.405, epsilon=0.0104, cutoff=8.5125, dtype=torch.float64,
...                        compute_stress=True)                           # doctest: +SKIP
>>> model = TorchSimModel(lj)                                              # doctest: +SKIP
>>> model(batch)   # {"energy": [B,1], "forces": [N,3], "stress": [B,3,3]}  # doctest: +SKIP

Or by name: ``load_model("torchsim:torch_sim.models.lennard_jones:LennardJonesModel")``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import warnings
from dataclasses import dataclass

import torch

from batchmd.models.base import Model
from batchmd.models.registry import require_package

__all__ = ["TorchSimModel", "load_torchsim_factory", "import_torch_sim"]

#: ``SystemStatus`` values (batchmd.dynamics.status; literal here: models do not import dynamics).
_ACTIVE, _FAILED, _PENDING, _EMPTY = 0, 3, 4, 5
#: Attributes under which TorchSim adapters keep their cutoff (Å), in order of preference.
_CUTOFF_ATTRIBUTES = ("cutoff", "r_max", "cutoff_radius", "r_cut")


def import_torch_sim():
    """Import ``torch_sim`` or raise :class:`~batchmd.models.registry.MissingExtraError` (one line)."""
    require_package("torch_sim", "torchsim", "a TorchSim model (torch-sim-atomistic >= 0.6, Python >= 3.12)")
    import torch_sim

    return torch_sim


def _model_cutoff(ts_model) -> float | None:
    for name in _CUTOFF_ATTRIBUTES:
        value = getattr(ts_model, name, None)
        if value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
        if value > 0:
            return value
    return None


def _model_elements(ts_model):
    """Atomic numbers a TorchSim adapter declares: MACE's ``z_table.zs``, SevenNet's ``type_map`` keys; else None."""
    zs = getattr(getattr(ts_model, "z_table", None), "zs", None)
    if zs is not None:
        return zs
    type_map = getattr(ts_model, "type_map", None)
    if isinstance(type_map, dict) and type_map:
        return type_map.keys()
    return None


@dataclass
class _Group:
    """Systems evaluated together: one ``pbc`` pattern; a reusable SimState."""

    pbc: tuple[bool, bool, bool]
    systems: torch.Tensor | None  # [b] long (None: every system of the batch, in order)
    atoms: torch.Tensor | None    # [n] long (None: every atom)
    state: object = None


class TorchSimModel(Model):
    """A TorchSim ``ModelInterface`` evaluated on batchmd batches (see the module docstring).

    Parameters
    ----------
    ts_model : torch_sim.models.interface.ModelInterface
        The model; it must compute forces (``compute_forces``). Its ``dtype`` and ``device``
        are fixed by TorchSim's interface: the state is built in them (a copy when they
        differ from the batch's) and the outputs are cast back to the batch's.
    cutoff : float, optional
        Interaction range (Å) for batchmd's edge budgets; default: the model's ``cutoff`` /
        ``r_max`` attribute, if any.
    supported_numbers : iterable of int, optional
        Elements the model covers (checked before a run); default: the model's
        ``z_table.zs`` (MACE) or ``type_map`` keys (SevenNet) if present, else any element.
    name : str, optional
        Name in messages and output metadata (default ``TorchSim(<class name>)``).

    Raises
    ------
    MissingExtraError
        ``torch_sim`` is not installed.
    TypeError
        ``ts_model`` is not a TorchSim ``ModelInterface``.
    ValueError
        The model does not compute forces.
    """

    supports_out = True
    supports_skip_finished = True
    supports_empty_systems = True
    needs_neighbors = False  # the TorchSim model builds its own neighbor list
    torch_compute = True

    def __init__(self, ts_model, *, cutoff: float | None = None, supported_numbers=None,
                 name: str | None = None) -> None:
        ts = import_torch_sim()
        from torch_sim.models.interface import ModelInterface

        if not isinstance(ts_model, ModelInterface):
            raise TypeError(f"batchmd: TorchSimModel wraps a torch_sim ModelInterface, got {type(ts_model).__name__}")
        if not bool(ts_model.compute_forces):
            raise ValueError(f"batchmd: the TorchSim model {type(ts_model).__name__} does not compute forces "
                             "(build it with compute_forces=True)")
        super().__init__()
        self._ts = ts
        self.ts_model = ts_model
        self.computes_stress = bool(ts_model.compute_stress)
        self.memory_scales_with = str(getattr(ts_model, "memory_scales_with", "n_atoms_x_density"))
        self.cutoff = float(cutoff) if cutoff is not None else _model_cutoff(ts_model)
        if supported_numbers is None:
            supported_numbers = _model_elements(ts_model)
        self.supported_numbers = None if supported_numbers is None else frozenset(int(z) for z in supported_numbers)
        self._model_name = name or f"TorchSim({type(ts_model).__name__})"
        self._plan_key = None
        self._groups: list[_Group] = []
        # Optional phase timer (benchmarks/torchsim_bridge_overhead.py): ``timer(phase)`` returns a
        # context manager; phases "convert" (batch -> SimState), "model", "outputs".
        self.timer = None

    # ---------------------------------------------------------------- metadata
    def model_info(self) -> dict[str, str]:
        """``{"model": name, "model_torchsim_class": ..., "model_memory_scales_with": ...}``."""
        info = {"model": self.model_name, "model_torchsim_class": f"{type(self.ts_model).__module__}."
                f"{type(self.ts_model).__qualname__}", "model_memory_scales_with": self.memory_scales_with}
        if self.cutoff is not None:
            info["model_cutoff"] = f"{self.cutoff:g}"
        return info

    def systems_replaced(self, batch, systems: torch.Tensor) -> None:
        """In-place refills wrote new systems: rebuild the states (and re-check species)."""
        self._plan_key = None

    def _phase(self, name: str):
        return self.timer(name) if self.timer is not None else contextlib.nullcontext()

    # ---------------------------------------------------------------- plan
    def _plan(self, batch, skip_finished: bool) -> list[_Group]:
        """Groups of systems to evaluate (one host read of a [B] code), cached per layout."""
        b = batch.num_graphs
        pbc = batch.pbc.to(torch.int32)
        code = pbc[:, 0] + 2 * pbc[:, 1] + 4 * pbc[:, 2]
        live = batch.num_atoms_per_system > 0
        if batch.has_field("status"):
            status = batch["status"]
            if skip_finished:
                live = live & ((status == _ACTIVE) | (status == _PENDING))
            else:
                live = live & (status != _EMPTY) & (status != _FAILED)
        code = torch.where(live, code, torch.full_like(code, -1))
        host = code.cpu()  # the one host read of a call
        key = (host.numpy().tobytes(), batch.ptr, batch.atomic_numbers, batch.atomic_masses, batch.pbc)
        if self._plan_key is not None and len(key) == len(self._plan_key) and key[0] == self._plan_key[0] \
                and all(a is c for a, c in zip(key[1:], self._plan_key[1:])):
            return self._groups
        values = host.tolist()
        groups = []
        for pattern in sorted(set(values) - {-1}):
            chosen = [s for s in range(b) if values[s] == pattern]
            flags = (bool(pattern & 1), bool(pattern & 2), bool(pattern & 4))
            if len(chosen) == b:
                groups.append(_Group(flags, None, None))
                continue
            systems = torch.tensor(chosen, dtype=torch.long, device=batch.device)
            counts = batch.num_atoms_per_system.long().index_select(0, systems)
            starts = batch.ptr.long().index_select(0, systems)
            offsets = torch.repeat_interleave(starts - torch.cumsum(counts, 0) + counts, counts)
            atoms = torch.arange(int(counts.sum()), device=batch.device) + offsets
            groups.append(_Group(flags, systems, atoms))
        self._plan_key, self._groups = key, groups
        return groups

    def _state(self, group: _Group, batch):
        """The group's SimState in the model's dtype/device: built once, then positions and cell assigned."""
        dtype, device = self.ts_model.dtype, self.ts_model.device
        if (batch.dtype == torch.float64 and dtype != torch.float64 and dtype.is_floating_point
                and not getattr(self, "_warned_precision", False)):
            self._warned_precision = True  # once per model: never a silent loss of precision
            warnings.warn(f"TorchSimModel: the batch is float64 but {type(self.ts_model).__name__} computes in "
                          f"{dtype}; energies, forces and stress have {dtype}'s precision (build the model in "
                          "float64 if it supports it, or run batchmd in float32)", UserWarning, stacklevel=3)
        pos, cell = batch.positions.detach(), batch.cell.detach()
        if group.systems is not None:
            pos, cell = pos.index_select(0, group.atoms), cell.index_select(0, group.systems)
        pos = pos.to(device=device, dtype=dtype)
        cell = cell.to(device=device, dtype=dtype).transpose(1, 2)  # TorchSim: lattice vectors as columns
        if group.state is not None:
            group.state.positions = pos
            group.state.cell = cell
            return group.state
        numbers, masses = batch.atomic_numbers, batch.atomic_masses
        system_idx = batch.batch_idx.long()
        if group.systems is not None:
            numbers, masses = numbers.index_select(0, group.atoms), masses.index_select(0, group.atoms)
            local = torch.empty(batch.num_graphs, dtype=torch.long, device=batch.device)
            local[group.systems] = torch.arange(group.systems.shape[0], device=batch.device)
            system_idx = local.index_select(0, system_idx.index_select(0, group.atoms))
        self.check_species(numbers)  # the evaluated atoms only (padding rows carry no element)
        group.state = self._ts.SimState(
            positions=pos, masses=masses.to(device=device, dtype=dtype), cell=cell,
            pbc=torch.tensor(group.pbc, dtype=torch.bool, device=device),
            atomic_numbers=numbers.to(device=device, dtype=torch.long), system_idx=system_idx.to(device))
        return group.state

    # ---------------------------------------------------------------- forward
    def forward(self, batch, out: dict | None = None, skip_finished: bool = False) -> dict[str, torch.Tensor]:
        """Energies [B,1] (eV), forces [N,3] (eV/Å) and, if the model computes it, stress [B,3,3] (eV/Å^3).

        Parameters
        ----------
        batch : batchmd.data.Batch
        out : dict, optional
            Preallocated ``"energy"`` [B,1], ``"forces"`` [N,3], ``"stress"`` [B,3,3] written in place.
        skip_finished : bool
            Evaluate only ACTIVE and PENDING systems; the others keep their values in ``out``.

        Raises
        ------
        UnsupportedSpeciesError
            An evaluated system holds an element the model does not cover (when its coverage is
            known; checked whenever the batch's layout changes).
        ValueError
            ``skip_finished`` without ``out``; the model returned outputs of the wrong shape.
        """
        if skip_finished and out is None:
            raise ValueError("batchmd: TorchSimModel(skip_finished=True) needs out= (the outputs kept for finished systems)")
        b, n, dtype, device = batch.num_graphs, batch.num_nodes, batch.dtype, batch.device
        with self._phase("convert"):
            groups = self._plan(batch, skip_finished)
        if out is None:
            out = {"energy": torch.zeros((b, 1), dtype=dtype, device=device),
                   "forces": torch.zeros((n, 3), dtype=dtype, device=device)}
            if self.computes_stress:
                out["stress"] = torch.zeros((b, 3, 3), dtype=dtype, device=device)
            whole = True
        else:
            whole = False
            if not skip_finished:  # systems left out (EMPTY, FAILED) get zeros
                if not (len(groups) == 1 and groups[0].systems is None):
                    for key in ("energy", "forces", "stress"):
                        if out.get(key) is not None:
                            out[key].zero_()
        for group in groups:
            with self._phase("convert"):
                state = self._state(group, batch)
            with self._phase("model"):
                result = self.ts_model(state)
            with self._phase("outputs"):
                self._scatter(result, group, state, out, batch, whole)
        return out

    def _scatter(self, result: dict, group: _Group, state, out: dict, batch, whole: bool) -> None:
        b_g = batch.num_graphs if group.systems is None else group.systems.shape[0]
        n_g = batch.num_nodes if group.atoms is None else group.atoms.shape[0]
        dtype, device = batch.dtype, batch.device
        energy = result.get("energy")
        forces = result.get("forces")
        if energy is None or forces is None or energy.numel() != b_g or tuple(forces.shape) != (n_g, 3):
            raise ValueError(f"batchmd: {self.model_name} returned energy {None if energy is None else tuple(energy.shape)}"
                             f" and forces {None if forces is None else tuple(forces.shape)} for {b_g} systems of "
                             f"{n_g} atoms (expected [{b_g}] and [{n_g}, 3])")
        values = {"energy": energy.detach().reshape(b_g, 1), "forces": forces.detach()}
        if self.computes_stress and out.get("stress") is not None:
            stress = result.get("stress")
            if stress is None or stress.numel() != 9 * b_g:
                raise ValueError(f"batchmd: {self.model_name} declares compute_stress but returned no [{b_g}, 3, 3] stress")
            stress = stress.detach().reshape(b_g, 3, 3)
            volume = torch.linalg.det(state.cell).abs()
            values["stress"] = torch.where((volume > 0)[:, None, None], stress, torch.zeros_like(stress))
        for key, value in values.items():
            value = value.to(device=device, dtype=dtype)
            target = out[key]
            if group.systems is None:
                if whole:
                    out[key] = value
                else:
                    target.copy_(value)
            else:
                target.index_copy_(0, group.atoms if key == "forces" else group.systems, value)


def load_torchsim_factory(argument: str, *, device=None, dtype=None) -> TorchSimModel:
    """Build a TorchSim model from ``"package.module:factory"`` and wrap it (the registry's ``torchsim:``).

    ``factory`` is any callable attribute of the module (a ``ModelInterface`` subclass or a
    function) returning a ``ModelInterface``; it is called with ``device=`` and ``dtype=``
    when given and when it accepts them (TorchSim's models do). The module may also be a
    Python file, ``"/path/to/models.py:factory"`` (a few lines building e.g.
    ``MaceTorchSimModel("mace.model", device=device, dtype=dtype)``).

    Raises
    ------
    MissingExtraError
        ``torch_sim`` is not installed.
    FileNotFoundError
        A ``.py`` file that does not exist.
    ValueError
        Malformed argument, a module that cannot be imported, a missing attribute, or a
        factory that does not return a ModelInterface (one line each).
    """
    import_torch_sim()
    text = (argument or "").strip()
    module_name, sep, attr = text.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"batchmd: torchsim:{text} should be torchsim:package.module:factory "
                         "(e.g. torchsim:torch_sim.models.lennard_jones:LennardJonesModel)")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise FileNotFoundError(f"batchmd: torchsim:{text}: file {module_name!r} not found")
            spec = importlib.util.spec_from_file_location(f"batchmd_torchsim_{abs(hash(module_name))}", module_name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"batchmd: torchsim:{text}: cannot import {module_name!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ValueError(f"batchmd: torchsim:{text}: {module_name} has no callable {attr!r}")
    kwargs = {}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if device is not None and ("device" in params or takes_any):
        kwargs["device"] = torch.device(device)
    if dtype is not None and ("dtype" in params or takes_any):
        kwargs["dtype"] = dtype
    ts_model = factory(**kwargs)
    if isinstance(ts_model, TorchSimModel):
        return ts_model
    from torch_sim.models.interface import ModelInterface

    if not isinstance(ts_model, ModelInterface):
        raise ValueError(f"batchmd: torchsim:{text} returned a {type(ts_model).__name__}, not a TorchSim ModelInterface")
    return TorchSimModel(ts_model, name=f"torchsim:{text}")
