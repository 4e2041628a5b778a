"""Constraints in the batch: the per-atom ``fixed`` mask (ASE's ``FixAtoms``) and ``fix_com`` (``FixCom``).

A system carries ASE's ``FixAtoms`` as the bool atom field ``fixed`` (``True``: the atom
never moves). :meth:`batchmd.data.AtomicData.from_ase` creates it from ``atoms.constraints``
and refuses every other ASE constraint by name (``ignore_constraints=True`` drops them
instead, knowingly); :meth:`~batchmd.data.AtomicData.to_ase` turns it back into
``FixAtoms``, so result frames and files (extended XYZ ``move_mask``) keep it. Like any
atom field it travels with its system through slot operations and refills; systems
without it get ``False`` (free).

How the mask is honoured -- the contract for every integrator
-------------------------------------------------------------
1. **Forces.** After every model evaluation the loop (:class:`FusedStage`) zeroes the
   forces of fixed atoms (:func:`apply_force_constraints`), as ASE's
   ``atoms.get_forces()`` does with ``FixAtoms``. So ``fmax``, FIRE's sums and every force
   an integrator reads are already constrained; returned forces are the constrained ones.
2. **Velocities.** At MD stage entry the velocity policy gives fixed atoms zero velocity
   (:mod:`batchmd.dynamics.velocities`); an optimiser keeps its own velocity field and
   starts it at zero. A step that only does ``v += dt f/m`` and ``x += dt v`` then never
   moves a fixed atom; a step that adds anything else to ``v`` or ``x`` (thermostat noise,
   a barostat's scaling, a line search direction that is not built from forces) must skip
   atoms with ``fixed[i]`` -- pass :func:`fixed_mask` to the kernel (as NVTLangevin does).
3. **Degrees of freedom.** Temperatures use :func:`degrees_of_freedom` ``3 N - 3 N_fixed``
   (``- 3`` with ``fix_com``; ASE's ``get_number_of_degrees_of_freedom``), e.g. :func:`system_temperature`.
4. **FixCom** (bool system field ``fix_com``): the loop projects the forces
   (:func:`apply_force_constraints`, ASE's formula), so optimisers keep the centre of mass;
   after every MD step it puts the centre of mass back at ``com_reference`` (recorded at
   the run's start) and removes the centre-of-mass velocity (:func:`apply_com_constraint`),
   and the velocity policy removes it at stage entry. A new MD integrator needs nothing
   more; its temperature counts 3 fewer degrees of freedom.
5. **Cell filters** (variable-cell relaxation, NPT) scale positions with the cell: fixed
   atoms then follow the affine deformation only if the method says so; ASE keeps them
   at fixed *Cartesian* positions (``FixAtoms.adjust_positions``), so such a method must
   restore them after scaling, or refuse systems with fixed atoms.

Example
-------
>>> from ase.build import fcc100
>>> from ase.constraints import FixAtoms
>>> from batchmd.data import AtomicData
>>> slab = fcc100("Ar", (2, 2, 2), a=5.3, vacuum=5.0)
>>> slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
>>> AtomicData.from_ase(slab)["fixed"].tolist()
[True, True, True, True, False, False, False, False]
"""

from __future__ import annotations

import torch

__all__ = ["fixed_mask", "apply_force_constraints", "degrees_of_freedom", "system_temperature", "centre_of_mass",
           "record_com_reference", "remove_com_velocity", "apply_com_constraint"]


def fixed_mask(batch, cache: dict) -> torch.Tensor:
    """bool ``[N]``: the batch's ``fixed`` field, or a cached all-False tensor when it has none.

    ``cache`` is a dict owned by the caller (reused across steps: no per-step allocation).
    """
    if batch.has_field("fixed"):
        return batch["fixed"]
    n, device = batch.num_nodes, batch.device
    free = cache.get("free")
    if free is None or free.shape[0] != n or free.device != device:
        free = torch.zeros(n, dtype=torch.bool, device=device)
        cache["free"] = free
    return free


def _system_sum(batch, values: torch.Tensor) -> torch.Tensor:
    """Per-system sums of per-atom ``values`` ``[N, ...]`` -> ``[B, ...]`` (device side)."""
    out = torch.zeros((batch.num_graphs, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, batch.batch_idx.long(), values)


def apply_force_constraints(batch) -> None:
    """Constrain the forces in place, as ASE's ``get_forces()`` does. No host sync.

    ``fixed`` atoms get zero force. Systems with ``fix_com`` get ASE's ``FixCom`` projection
    ``f_i -= m_i (sum_j m_j f_j) / (sum_j m_j^2)`` (Eqs. 3 and 7 of Kästner & Sherwood,
    doi:10.1021/jp9722824, as ``ase.constraints.FixCom.adjust_forces``): the mass-weighted
    net force vanishes, so an optimiser never moves the centre of mass.
    """
    if batch.forces is None:
        return
    if batch.has_field("fixed"):
        batch.forces.masked_fill_(batch["fixed"].unsqueeze(-1), 0.0)
    if batch.has_field("fix_com"):
        m = batch.atomic_masses.unsqueeze(-1)
        lam = _system_sum(batch, m * batch.forces) / _system_sum(batch, m * m)
        on = batch["fix_com"].reshape(-1, 1).to(batch.dtype)
        batch.forces.sub_(m * (lam * on)[batch.batch_idx.long()])


def centre_of_mass(batch) -> torch.Tensor:
    """``[B, 3]`` centre of mass of every system, Å (positions as stored, not wrapped)."""
    m = batch.atomic_masses.unsqueeze(-1)
    return _system_sum(batch, m * batch.positions) / _system_sum(batch, m)


def record_com_reference(batch) -> None:
    """Store every ``fix_com`` system's centre of mass (``com_reference`` [B, 3], Å) at a run's start."""
    if batch.has_field("fix_com"):
        batch.set_field("com_reference", centre_of_mass(batch), "system")


def remove_com_velocity(batch, mask: torch.Tensor) -> None:
    """Zero the centre-of-mass velocity of ``fix_com`` systems where ``mask`` [B] (ASE's ``adjust_momenta``)."""
    if not batch.has_field("fix_com") or batch.velocities is None:
        return
    m = batch.atomic_masses.unsqueeze(-1)
    v_com = _system_sum(batch, m * batch.velocities) / _system_sum(batch, m)
    on = (batch["fix_com"] & mask).reshape(-1, 1).to(batch.dtype)
    batch.velocities.sub_((v_com * on)[batch.batch_idx.long()])


def apply_com_constraint(batch, moving: torch.Tensor) -> None:
    """After a step: ``fix_com`` systems where ``moving`` [B] get their centre of mass put back
    at ``com_reference`` (ASE's ``FixCom.adjust_positions``) and zero centre-of-mass velocity.

    ``moving``: systems that took an MD step (optimisers conserve the centre of mass through
    the force projection; their ``velocities`` are not touched).
    """
    if not batch.has_field("fix_com") or not batch.has_field("com_reference"):
        return
    on = (batch["fix_com"] & moving).reshape(-1, 1).to(batch.dtype)
    shift = (centre_of_mass(batch) - batch["com_reference"]) * on
    batch.positions.sub_(shift[batch.batch_idx.long()])
    remove_com_velocity(batch, moving)


def degrees_of_freedom(batch) -> torch.Tensor:
    """float ``[B]``: ``3 N_s - 3 N_fixed,s - 3 [fix_com]`` per system (ASE's count)."""
    counts = (batch.ptr[1:] - batch.ptr[:-1]).to(batch.dtype) * 3.0
    if batch.has_field("fixed"):
        fixed = torch.zeros(batch.num_graphs, dtype=batch.dtype, device=batch.device)
        fixed.index_add_(0, batch.batch_idx.long(), batch["fixed"].to(batch.dtype))
        counts = counts - 3.0 * fixed
    if batch.has_field("fix_com"):
        counts = counts - 3.0 * batch["fix_com"].reshape(-1).to(batch.dtype)
    return counts


def system_temperature(batch) -> torch.Tensor:
    """Instantaneous kinetic temperature per system, K ``[B]`` (``2 E_kin / (dof kB)``, ASE's formula).

    Uses ``velocities`` (Å / ASE time unit) and ``atomic_masses`` (amu); a system without
    degrees of freedom gets 0.
    """
    from ase.units import kB

    v = batch.velocities
    if v is None:
        return torch.zeros(batch.num_graphs, dtype=batch.dtype, device=batch.device)
    ke = 0.5 * (batch.atomic_masses[:, None] * v * v).sum(dim=1)
    per_system = torch.zeros(batch.num_graphs, dtype=ke.dtype, device=ke.device)
    per_system.index_add_(0, batch.batch_idx.long(), ke)
    dof = degrees_of_freedom(batch)
    return torch.where(dof > 0, 2.0 * per_system / (dof.clamp(min=1.0) * kB), torch.zeros_like(per_system))
