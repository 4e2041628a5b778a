"""The velocity policy: how an MD stage sets velocities when a system enters it.

Optimiser state is not physics: FIRE keeps its fictitious velocities in its own field
(``fire_velocities``), never in ``velocities`` (which become ``momenta`` in every output).
An MD stage (NVE, NVTLangevin, and any later integrator that sets ``velocity_policy``)
applies its policy to each system entering it:

``"auto"`` (default)
    - entering after an optimiser stage: Maxwell-Boltzmann at the stage temperature
      (zero velocities for an NVE stage without ``temperature``);
    - entering after another MD stage: the velocities are kept (they are physical);
    - the run's first stage: velocities the system carries (from a file's momenta, or a
      previous MD run) are kept; a system without velocities (none, or all zero) gets
      the Maxwell-Boltzmann draw (zeros for NVE without ``temperature``).
``"maxwell_boltzmann"``
    always draw at the stage temperature.
``"zero"``
    always start from rest.
``"keep"``
    always keep the velocities as given (zeros where the batch has none).

The Maxwell-Boltzmann draw is ASE's ``MaxwellBoltzmannDistribution`` + ``Stationary``
(zero total momentum, kinetic energy of the draw preserved; with FixCom the
centre-of-mass-free draw is kept as it is, canonical over the ``3 N_free - 3`` degrees of
freedom left, as ASE does for atoms carrying ``FixCom``: see :mod:`batchmd.kernels.velocities`), from a per-system random
stream keyed on ``(stage seed, system_id, rng_counter)`` (see
:mod:`batchmd.kernels.velocities`): the same for a system alone, in any batch, in any
serving order. Fixed atoms (``fixed``) always get zero velocity. A system with fewer than two
free atoms keeps its draw as it is: removing the momentum of a single atom would leave it at
rest (ASE's ``Stationary`` rescales by the ratio of kinetic energies there, which gives NaN).

Example
-------
>>> from batchmd.dynamics import FIRE, NVE, ConvergenceHook      # doctest: +SKIP
>>> relax_then_md = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.01)) + \\
...     NVE(model, dt=2.0, n_steps=100)     # starts from rest, like ASE after FIRE  # doctest: +SKIP
>>> warm = NVE(model, dt=2.0, temperature=300.0, random_seed=1, n_steps=100)  # 300 K draw  # doctest: +SKIP
"""

from __future__ import annotations

import ase.units
import torch

from batchmd.dynamics.constraints import fixed_mask, remove_com_velocity, system_dof
from batchmd.runtime import CachedLaunch, WarpViewCache

__all__ = ["VELOCITY_POLICIES", "ensure_rng_counter", "check_policy", "apply_velocity_policy"]

VELOCITY_POLICIES = ("auto", "maxwell_boltzmann", "zero", "keep")


def check_policy(owner: str, policy: str) -> str:
    """Validate a ``velocities`` argument; returns it."""
    if policy not in VELOCITY_POLICIES:
        raise ValueError(f"{owner}: velocities must be one of {VELOCITY_POLICIES}, got {policy!r}")
    return policy


def ensure_rng_counter(batch) -> None:
    """Create the int32 system field ``rng_counter`` (each system's random-stream position) if missing.

    It is never reset: a new run on the same batch continues each system's stream.
    """
    if not batch.has_field("rng_counter"):
        batch.set_field("rng_counter", torch.zeros(batch.num_graphs, dtype=torch.int32, device=batch.device),
                        "system")


def _tagged(seed: int) -> int:
    from batchmd.kernels.velocities import MB_TAG

    value = (int(seed) ^ MB_TAG) & 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= (1 << 63) else value


class _Launcher:
    launch = None


def apply_velocity_policy(stage, batch, enter: torch.Tensor, previous=None, first: bool = False) -> None:
    """Apply ``stage.velocity_policy`` to the systems ``enter`` (bool ``[B]``) entering ``stage``.

    Parameters
    ----------
    stage : Dynamics
        An MD stage: ``velocity_policy``, ``random_seed`` and ``velocity_temperature(batch)``
        (``[B]`` K tensor or None for "no temperature": zeros).
    batch : Batch
        Its ``velocities`` are updated in place (created as zeros if missing).
    enter : torch.Tensor
        bool ``[B]`` on the batch device (no host synchronisation).
    previous : Dynamics, optional
        The stage the systems come from (None at the run's first stage).
    first : bool
        The run's first stage (systems arrive from the input).
    """
    from batchmd.kernels.velocities import AUTO, DRAW, KEEP, velocity_policy_kernel_overloads

    policy = stage.velocity_policy
    if policy is None or batch.num_graphs == 0:
        return
    if not batch.has_field("velocities") or batch.velocities is None:
        batch.set_field("velocities", torch.zeros_like(batch.positions), "atom")
    ensure_rng_counter(batch)
    temperature = stage.velocity_temperature(batch)
    if policy == "keep":
        mode = KEEP
    elif policy in ("zero", "maxwell_boltzmann"):
        mode = DRAW
    elif first or previous is None:
        mode = AUTO
    elif getattr(previous, "is_optimizer", False):
        mode = DRAW
    else:
        mode = KEEP
    if policy == "zero" or temperature is None:
        temperature = torch.zeros(batch.num_graphs, dtype=batch.dtype, device=batch.device)
    if _Launcher.launch is None:
        _Launcher.launch = CachedLaunch(velocity_policy_kernel_overloads)
    ids = batch.system_id.reshape(-1) if batch.has_field("system_id") else torch.arange(
        batch.num_graphs, dtype=torch.int64, device=batch.device)
    cache = getattr(stage, "_policy_cache", None)
    if cache is None:
        cache = {"views": WarpViewCache()}
        stage._policy_cache = cache
    view = cache["views"]
    inputs = [
        view("ptr", batch.ptr),
        view("enter", enter.contiguous()),
        int(mode),
        ase.units.kB,
        _tagged(stage.random_seed),
        view("ids", ids.contiguous()),
        view("rng_counter", batch["rng_counter"]),
        view("temperature", temperature.to(batch.dtype).contiguous()),
        view("masses", batch.atomic_masses),
        view("fixed", fixed_mask(batch, cache)),
        view("dof", system_dof(batch)),
        view("velocities", batch.velocities, vector=True),
    ]
    _Launcher.launch(batch.dtype, batch.num_graphs, inputs, batch.device)
    remove_com_velocity(batch, enter)  # FixCom systems: zero centre-of-mass velocity (kept ones too)
