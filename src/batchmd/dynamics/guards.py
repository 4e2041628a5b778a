"""Runaway guards: non-finite, collapsing and exploding systems are FAILED, with a reason, on the device.

A system whose integration runs away must not finish as ``completed`` with numbers that
belong to nothing, nor take the process (and every other system's result) down with it.
:class:`~batchmd.dynamics.fused.FusedStage` checks every ACTIVE or PENDING system at every
evaluation, with Warp kernels (:mod:`batchmd.kernels.guards`) and no host synchronisation:

Before the model is called (after every stage's ``pre_force``; one launch)
    - the cell (Å) is finite;
    - a system periodic in all three directions has at most ``max_density`` atoms per Å^3
      (a collapsing cell).

    A system failing one of these is FAILED *before* the evaluation: the neighbor list and
    the edge list skip FAILED systems (no rebuild, no edges), so a non-finite cell never
    reaches the bin walk and a collapsed cell never allocates its edges (the memory of a
    run stays that of its healthy systems). The model does not see it; its energy and
    stress are set to NaN.

After the model is called (in the force-statistics kernel's pass over the atoms: no launch)
    - energy and forces finite (always checked, also with ``guards=False``); positions (Å)
      and velocities finite; the stress finite when the loop computes it. The neighbor and
      edge lists keep NaN distances, so a NaN position gives the model NaN pairs and NaN
      outputs, never an isolated atom;
    - MD stages: the displacement of the next step is bounded by ``max_displacement``
      (Å), estimated per atom as ``|v| dt + |f| dt^2 / m`` (a bound of a velocity Verlet
      step; ``dt`` the stage's time step, fs). The system fails at the state it reached,
      whose energy and forces are consistent with its positions, before the step that
      would throw its atoms away;
    - the energy per atom stays above ``min(E_0, 0) / N - max_energy_drop`` (eV/atom), with
      ``E_0`` the system's first finite energy in this run: a relaxation or MD falling into
      an unphysical hole of a model (machine-learned potentials at short range) fails.

Cost: one extra launch per step and a few loads per atom in a pass that exists anyway
(measured on the 32-atom Lennard-Jones step of ``benchmarks/step_overhead.py``: see
``docs/performance.rst``).

A failed system stops moving and graduates at the next refill point, like any finished
one; the other systems of the batch are bitwise unaffected (every check and every model
input is per system). Its failure bits (:class:`~batchmd.dynamics.status.FailureReason`)
become ``info["failure"]`` in result frames, e.g. ``"non-finite cell at step 4"``.

What a failed frame carries
    the geometry of the step it failed at, with the energy, forces and stress of that
    same geometry when they are finite (guards after the evaluation), otherwise none: a
    system failed before its evaluation has NaN energy and its frame no calculator results;
    a frame whose positions, cell or momenta are not finite is written as its input
    structure, without results (:func:`batchmd.ase.results_to_atoms`). An energy is never
    paired with another geometry.

Example
-------
>>> from batchmd.dynamics.guards import Guards
>>> Guards(max_density=2.0).max_displacement
1.0
>>> # FusedStage(stages, guards=Guards(max_energy_drop=None))   # one guard off
>>> # FusedStage(stages, guards=False)                           # all off (energy/forces still checked)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from ase import units

from batchmd.kernels import guards as gk
from batchmd.runtime import CachedLaunch, to_warp

__all__ = ["Guards", "resolve_guards", "GuardRunner"]


@dataclass(frozen=True)
class Guards:
    """Settings of the runaway guards (see the module docstring); ``None`` turns one off.

    Parameters
    ----------
    max_density : float or None
        Atoms per Å^3 above which a fully periodic system fails (``DENSITY``), before its
        neighbor list or edges are built. Default 1.0 (1 Å^3 per atom: denser than any
        known solid; metallic hydrogen near 500 GPa has ~1.3 Å^3 per atom). It bounds the
        neighbors per atom within a list radius ``r`` (Å) by ``max_density * 4/3 pi r^3``
        (905 for SevenNet-0's 5 Å cutoff and 1 Å skin).
    max_displacement : float or None
        Largest displacement (Å) an MD step may make, estimated per atom as
        ``|v| dt + |f| dt^2 / m`` (``DISPLACEMENT``). Default 1.0.
    max_energy_drop : float or None
        Largest fall of the energy per atom (eV/atom) below ``min(E_0, 0) / N``
        (``ENERGY_DROP``; ``E_0`` the system's first finite energy of the run). Default 20
        (twice the largest cohesive energies, ~9 eV/atom).

    Raises
    ------
    ValueError
        A value that is not a positive finite number or None.
    """

    max_density: float | None = 1.0
    max_displacement: float | None = 1.0
    max_energy_drop: float | None = 20.0

    def __post_init__(self) -> None:
        for name in ("max_density", "max_displacement", "max_energy_drop"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"Guards: {name} must be a positive number or None, got {value!r}")


def resolve_guards(guards) -> Guards | None:
    """``True`` -> ``Guards()``, ``False``/``None`` -> None (off), a :class:`Guards` as given.

    Raises
    ------
    TypeError
        Anything else.
    """
    if guards is True:
        return Guards()
    if guards is False or guards is None:
        return None
    if isinstance(guards, Guards):
        return guards
    raise TypeError(f"FusedStage: guards must be True, False or a Guards, got {guards!r}")


def _stage_dt(stage) -> float:
    """The largest time step (fs) of an MD stage (one with a velocity policy), 0 otherwise."""
    if getattr(stage, "velocity_policy", None) is None:
        return 0.0
    dt = getattr(stage, "dt", 0.0)
    if isinstance(dt, torch.Tensor):
        return float(dt.abs().max()) if dt.numel() else 0.0
    return abs(float(dt)) if dt is not None else 0.0


class GuardRunner:
    """The loop's guard launches and kernel arguments (used by :class:`~batchmd.dynamics.fused.FusedStage`)."""

    def __init__(self, guards: Guards | None, stages) -> None:
        self.guards = guards
        self.stages = stages
        self._systems = CachedLaunch(gk.guard_systems_overloads)
        self._dummy = {}
        self._tables = None
        self._args = {}  # name -> (tensors the arguments were built from, arguments): built once per batch structure

    def _cached(self, name: str, tensors: tuple, build) -> list:
        """Arguments built by ``build()``, reused while every tensor in ``tensors`` is the same object."""
        hit = self._args.get(name)
        if hit is not None and len(hit[0]) == len(tensors) and all(a is b for a, b in zip(hit[0], tensors)):
            return hit[1]
        value = build()
        self._args[name] = (tensors, value)
        return value

    @staticmethod
    def _field(batch, name):
        return batch[name] if batch.has_field(name) else None

    def _stage_time(self, device):
        """Per-stage MD time step in ASE time units (0: not MD, or the displacement guard off), a Warp view."""
        if self._tables is None or self._tables[0] != device:
            on = self.guards is not None and self.guards.max_displacement is not None
            values = [_stage_dt(s) * units.fs if on else 0.0 for s in self.stages]  # host values, once per device
            t = torch.tensor(values, dtype=torch.float64, device=device)
            self._tables = (device, t, to_warp(t))
        return self._tables[2]

    def dummy(self, batch, kind: str):
        key = (kind, batch.dtype, batch.device)
        if key not in self._dummy:
            shape = {"vec": (1, 3), "mat": (1, 3, 3), "scalar": (1,)}[kind]
            t = torch.zeros(shape, dtype=batch.dtype, device=batch.device)
            self._dummy[key] = (t, to_warp(t, vector=kind == "vec", matrix=kind == "mat"))
        return self._dummy[key][1]

    @staticmethod
    def ensure_fields(batch) -> None:
        """The system field ``guard_energy_ref`` (NaN: not set yet), created when missing."""
        if not batch.has_field("guard_energy_ref") or batch["guard_energy_ref"].shape != (batch.num_graphs,) \
                or batch["guard_energy_ref"].dtype != batch.dtype:
            batch.set_field("guard_energy_ref", torch.full((batch.num_graphs,), float("nan"), dtype=batch.dtype,
                                                           device=batch.device), "system")

    def before_evaluation(self, batch, views, counter: torch.Tensor, increment: bool) -> None:
        """Non-finite cell and the density bound: FAILED before the model runs (one launch)."""
        if self.guards is None or batch.num_graphs == 0:
            return
        density = self.guards.max_density
        tensors = (batch.cell, batch.pbc, batch.ptr, batch["status"], batch["stage_steps"], batch["n_steps"],
                   batch["failure"], counter)
        args = self._cached("systems", tensors, lambda: [
            views("cell", batch.cell, matrix=True), views("pbc", batch.pbc), views("ptr", batch.ptr),
            float(density) if density is not None else -1.0, views("status", batch["status"]),
            views("stage_steps", batch["stage_steps"]), views("n_steps", batch["n_steps"]),
            views("failure", batch["failure"]), views("counter", counter)])
        self._systems(batch.dtype, batch.num_graphs, [1 if increment else 0, *args], batch.device)

    def atom_args(self, batch, views) -> list:
        """``guard, x, v, has_v, masses`` of the force-statistics kernels (their pass over the atoms)."""
        tensors = (batch.positions, self._field(batch, "velocities"), batch.atomic_masses)
        return self._cached("atoms", tensors, lambda: self._atom_args(batch, views))

    def _atom_args(self, batch, views) -> list:
        if batch.has_field("velocities") and batch["velocities"] is not None \
                and tuple(batch["velocities"].shape) == (batch.num_nodes, 3):
            v, has_v = views("velocities", batch["velocities"], vector=True), 1
        else:
            v, has_v = self.dummy(batch, "vec"), 0
        return [1 if self.guards is not None else 0, views("positions", batch.positions, vector=True), v, has_v,
                views("atomic_masses", batch.atomic_masses)]

    def chunk_args(self, batch, views) -> list:
        """The guard arguments of ``system_force_stats_chunks`` (after ``part_disp``)."""
        atoms = self.atom_args(batch, views)
        return self._cached("chunks", (*atoms, batch["stage"]),
                            lambda: atoms + [views("stage", batch["stage"]), self._stage_time(batch.device)])

    def stats_args(self, batch, views, stress_computed: bool) -> list:
        """The guard arguments of ``system_force_stats`` (after ``force_converged``)."""
        g = self.guards
        on = g is not None
        if on and g.max_energy_drop is not None:
            self.ensure_fields(batch)
        atoms = self.atom_args(batch, views)
        tensors = (*atoms, batch["status"], batch["failure"], self._field(batch, "stress"),
                   self._field(batch, "guard_energy_ref"), stress_computed)
        return self._cached("stats", tensors, lambda: self._stats_args(batch, views, stress_computed, atoms))

    def _stats_args(self, batch, views, stress_computed: bool, atoms: list) -> list:
        g = self.guards
        on = g is not None
        has_stress = on and stress_computed and batch.has_field("stress")
        stress = views("stress", batch["stress"], matrix=True) if has_stress else self.dummy(batch, "mat")
        if on and g.max_energy_drop is not None:
            ref, drop = views("energy_ref", batch["guard_energy_ref"]), float(g.max_energy_drop)
        else:
            ref, drop = self.dummy(batch, "scalar"), -1.0
        max_disp = float(g.max_displacement) if on and g.max_displacement is not None else -1.0
        return ([views("status", batch["status"]), views("failure", batch["failure"])] + atoms
                + [self._stage_time(batch.device), stress, 1 if has_stress else 0, ref, drop, max_disp])
