"""Constraints in the batch: the per-atom ``fixed`` mask (ASE's ``FixAtoms``).

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
   (ASE's ``get_number_of_degrees_of_freedom``), e.g. :func:`system_temperature`.
4. **Cell filters** (variable-cell relaxation, NPT) scale positions with the cell: fixed
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

__all__ = ["fixed_mask", "apply_force_constraints", "degrees_of_freedom", "system_temperature"]


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


def apply_force_constraints(batch) -> None:
    """Zero the forces of fixed atoms in place (nothing to do without a ``fixed`` field). No host sync."""
    if not batch.has_field("fixed") or batch.forces is None:
        return
    batch.forces.masked_fill_(batch["fixed"].unsqueeze(-1), 0.0)


def degrees_of_freedom(batch) -> torch.Tensor:
    """float ``[B]``: ``3 N_s - 3 N_fixed,s`` per system (ASE's count with ``FixAtoms``)."""
    counts = (batch.ptr[1:] - batch.ptr[:-1]).to(batch.dtype) * 3.0
    if batch.has_field("fixed"):
        fixed = torch.zeros(batch.num_graphs, dtype=batch.dtype, device=batch.device)
        fixed.index_add_(0, batch.batch_idx.long(), batch["fixed"].to(batch.dtype))
        counts = counts - 3.0 * fixed
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
