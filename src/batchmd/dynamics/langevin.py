"""Langevin NVT molecular dynamics (BAOAB), batched and batch-invariant.

Example
-------
>>> from batchmd.dynamics import NVTLangevin
>>> md = NVTLangevin(model, dt=2.0, temperature=300.0, friction=0.01,
...                  random_seed=7, n_steps=1000)                     # doctest: +SKIP
>>> batch = md.run(batch)                                              # doctest: +SKIP

``tests/test_langevin.py`` drives the stage protocol by hand (statistics, batch invariance).
"""

from __future__ import annotations

import ase.units
import torch

from batchmd.dynamics.base import Dynamics, check_parameter, set_system_param, system_target
from batchmd.dynamics.constraints import fixed_mask
from batchmd.dynamics.ranges import check_md_ranges
from batchmd.dynamics.velocities import check_policy, ensure_rng_counter
from batchmd.runtime import CachedLaunch, WarpViewCache
from batchmd.kernels.langevin import langevin_post_force_kernel_overloads, langevin_pre_force_kernel_overloads

__all__ = ["NVTLangevin"]


class NVTLangevin(Dynamics):
    """Canonical-ensemble MD with the BAOAB Langevin integrator.

    Parameters
    ----------
    model : callable
        ``model(batch) -> {"energy", "forces", ...}``; called by the loop, not here.
    dt : float or torch.Tensor
        Time step, fs. Default 1.0.
    temperature : float or torch.Tensor
        Target temperature, K. Default 300.
    friction : float or torch.Tensor
        Friction coefficient gamma, 1/fs (``1/friction`` is the velocity relaxation
        time; e.g. 0.01/fs = 100 fs). Internally ``gamma * dt`` is dimensionless;
        ``friction / ase.units.fs`` would be the value in 1/ASE time. Default 0.01.
    random_seed : int, optional
        Seed of the noise (any 64-bit integer). ``None`` draws one from torch's global
        generator once, at construction.
    n_steps : int, optional
        Steps to run in this stage.
    hooks : list, optional
        Hooks run by the loop.
    convergence_hook : object, optional
        Passed to :class:`~batchmd.dynamics.base.Dynamics`.
    velocities : str
        Velocity policy at stage entry: ``"auto"`` (default: Maxwell-Boltzmann at
        ``temperature`` after an optimiser or for systems without velocities; kept
        after MD or when the input carries momenta), ``"maxwell_boltzmann"``, ``"zero"``,
        ``"keep"``. See :mod:`batchmd.dynamics.velocities`.

    Raises
    ------
    ValueError
        In one line, for a ``dt`` that is not a finite number > 0, or a ``temperature`` or
        ``friction`` that is not a finite number >= 0 (e.g. a string), or a tensor that is
        not 1-D.

    Notes
    -----
    **Where the step runs.** BAOAB with one force evaluation per step:
    :meth:`pre_force` does B (half kick with the forces at the current positions),
    A (half drift), O (exact Ornstein-Uhlenbeck velocity update), A (half drift) in a
    single per-atom kernel; the loop evaluates the model at the new positions;
    :meth:`post_force` does the closing B half kick and advances the per-system step
    counter ``nvt_step``. One kernel launch each.

    **Per-system parameters.** ``dt``, ``temperature`` and ``friction`` may be floats
    or 1-D tensors of length ``batch.num_graphs`` (indexed by slot when
    :meth:`init_state` runs). They are stored in the system fields ``nvt_dt`` (fs),
    ``nvt_temperature`` (K) and ``nvt_friction`` (1/fs) and travel with the system.
    A system carrying its own ``target_temperature`` (K; ``atoms.info["temperature_K"]`` or
    ``run_frames(temperature=...)``) runs at that instead (:func:`~batchmd.dynamics.base.system_target`):
    per-structure temperatures in inflight runs, where a slot holds many structures.

    **Random numbers and batch invariance.** The noise of atom ``j`` (index local to
    its system) at step ``n`` of a system depends only on ``(random_seed, system_id,
    n, j, component)`` (see :mod:`batchmd.kernels.langevin`), where ``n`` is the
    system's random-stream position ``rng_counter`` (int32 [B]; created as 0, advanced
    by every Langevin step and by every Maxwell-Boltzmann draw, and *never* reset by a
    new run, so running the same batch again draws new noise) and ``system_id`` is
    ``batch["system_id"]`` (inflight runs: the sample's dataset index). The stage's own
    step counter ``nvt_step`` is reset by :meth:`init_state`. A system's trajectory therefore does not
    depend on its slot, on the batch size or on the other systems: running it alone or
    in any mixed batch gives the same trajectory bitwise. Without a ``system_id`` field
    the system's slot index is used instead, which is reproducible for a fixed batch
    but not batch-invariant: set ``system_id`` for that guarantee.

    Velocities are ``batch.velocities`` (Å / ASE time unit), set at stage entry by the
    velocity policy. Fixed atoms (``fixed``) get no kick, drift or noise.
    """

    name = "nvt_langevin"
    method = "nvt"

    def __init__(
        self,
        model,
        dt=1.0,
        temperature=300.0,
        friction=0.01,
        random_seed=None,
        n_steps=None,
        hooks=None,
        convergence_hook=None,
        velocities: str = "auto",
    ):
        super().__init__(model, n_steps=n_steps, convergence_hook=convergence_hook, hooks=hooks)
        self.velocity_policy = check_policy("NVTLangevin", velocities)
        check_md_ranges("NVTLangevin", dt=dt, temperature=temperature)  # unit slips, with units (skips strings)
        self.dt = check_parameter("NVTLangevin", "dt", dt)
        self.temperature = check_parameter("NVTLangevin", "temperature", temperature, allow_zero=True)
        self.friction = check_parameter("NVTLangevin", "friction", friction, allow_zero=True)
        if random_seed is None:
            random_seed = int(torch.randint(0, 2**62, (1,)).item())
        self.random_seed = int(random_seed)
        self._views = WarpViewCache()
        self._launch_pre = CachedLaunch(langevin_pre_force_kernel_overloads)
        self._launch_post = CachedLaunch(langevin_post_force_kernel_overloads)
        self._slot_ids = None
        self._no_fixed_cache = {}

    def init_state(self, batch, mask: torch.Tensor) -> None:
        """Set ``nvt_dt``, ``nvt_temperature``, ``nvt_friction``, reset ``nvt_step`` where ``mask`` [B] is True."""
        dtype = batch.positions.dtype
        set_system_param(batch, "nvt_dt", self.dt, mask, dtype)
        set_system_param(batch, "nvt_temperature", system_target(batch, "target_temperature", self.temperature, dtype),
                         mask, dtype)
        set_system_param(batch, "nvt_friction", self.friction, mask, dtype)
        set_system_param(batch, "nvt_step", 0, mask, torch.int32)
        ensure_rng_counter(batch)
        if not batch.has_field("velocities") or batch.velocities is None:
            batch.set_field("velocities", torch.zeros_like(batch.positions), "atom")

    def velocity_temperature(self, batch):
        """``nvt_temperature`` (K): the temperature of the velocity policy's Maxwell-Boltzmann draws."""
        return batch["nvt_temperature"]

    def _system_ids(self, batch) -> torch.Tensor:
        if batch.has_field("system_id") and batch.system_id is not None:
            return batch.system_id.reshape(-1)
        num = batch.num_graphs
        if self._slot_ids is None or self._slot_ids.shape[0] != num or self._slot_ids.device != batch.device:
            self._slot_ids = torch.arange(num, dtype=torch.int64, device=batch.device)
        return self._slot_ids

    def pre_force(self, batch, stage_index: int) -> None:
        """B A O A for the active systems of stage ``stage_index`` (forces at the current positions)."""
        view = self._views
        inputs = [
            view("batch_idx", batch.batch_idx),
            view("ptr", batch.ptr),
            view("stage", batch["stage"]),
            view("status", batch["status"]),
            int(stage_index),
            ase.units.fs,
            ase.units.kB,
            self.random_seed,
            view("system_id", self._system_ids(batch)),
            view("rng_counter", batch["rng_counter"]),
            view("nvt_dt", batch["nvt_dt"]),
            view("nvt_temperature", batch["nvt_temperature"]),
            view("nvt_friction", batch["nvt_friction"]),
            view("atomic_masses", batch.atomic_masses),
            view("forces", batch.forces, vector=True),
            view("velocities", batch.velocities, vector=True),
            view("positions", batch.positions, vector=True),
            view("fixed", fixed_mask(batch, self._no_fixed_cache)),
        ]
        positions = batch.positions
        self._launch_pre(positions.dtype, positions.shape[0], inputs, positions.device)

    def post_force(self, batch, stage_index: int) -> None:
        """Closing B half kick with the new forces; ``nvt_step += 1`` for the active systems."""
        view = self._views
        inputs = [
            view("batch_idx", batch.batch_idx),
            view("ptr", batch.ptr),
            view("stage", batch["stage"]),
            view("status", batch["status"]),
            int(stage_index),
            ase.units.fs,
            view("nvt_dt", batch["nvt_dt"]),
            view("atomic_masses", batch.atomic_masses),
            view("forces", batch.forces, vector=True),
            view("velocities", batch.velocities, vector=True),
            view("nvt_step", batch["nvt_step"]),
            view("rng_counter", batch["rng_counter"]),
        ]
        positions = batch.positions
        self._launch_post(positions.dtype, positions.shape[0], inputs, positions.device)
