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
3. **Degrees of freedom** -- one count for everything. Each system's count is
   ``g = 3 N - 3 N_fixed - 3 [fix_com]`` (:func:`degrees_of_freedom`; ASE's
   ``get_number_of_degrees_of_freedom``). The loop stores it once per system, as the
   float system field ``dof``, when the system enters a run (first batch, in-place refill,
   rebuilt batch: :func:`record_degrees_of_freedom`, next to ``com_reference``); the
   field travels with its system through slot operations, and every consumer reads it
   (:func:`system_dof`): the Nosé-Hoover chain (``Q_0 = g kT tdamp^2``, target ``g kT``),
   C-rescale's and MTK's thermostats, MTK's barostat kinetic terms (``N_f = g``), the
   Maxwell-Boltzmann draw of the velocity policy, the reported temperature
   (``stage{k}_temperature``, :class:`~batchmd.dynamics.TrajectoryHook`,
   :func:`system_temperature`). Where batchmd differs from ASE: ASE's
   ``NoseHooverChainNVT`` and MTK integrators count ``3N`` whatever the constraints (its
   ``get_temperature`` counts ``g``); see ``docs/ensembles.rst``.
4. **FixCom** (bool system field ``fix_com``): the loop projects the forces
   (:func:`apply_force_constraints`, ASE's formula), so optimisers keep the centre of mass;
   after every MD step it puts the centre of mass back at ``com_reference`` (recorded at
   the run's start) and removes the centre-of-mass velocity (:func:`apply_com_constraint`),
   and the velocity policy removes it at stage entry. A new MD integrator needs nothing
   more; its temperature counts 3 fewer degrees of freedom. With ``FixAtoms`` in the same
   system, all of this acts on the free atoms only (their mass-weighted sums; the fixed
   atoms keep zero force and velocity and never move); without fixed atoms it is ASE's
   ``FixCom`` exactly.
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

__all__ = ["fixed_mask", "apply_force_constraints", "degrees_of_freedom", "record_degrees_of_freedom", "system_dof",
           "system_temperature", "centre_of_mass", "record_com_reference", "remove_com_velocity",
           "apply_com_constraint", "DOF_FIELD"]

#: The float system field holding each system's degrees of freedom (see :func:`record_degrees_of_freedom`).
DOF_FIELD = "dof"


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


def _free_masses(batch) -> torch.Tensor:
    """``[N, 1]`` masses of the free atoms (0 for ``fixed`` ones): the weights of FixCom's sums."""
    m = batch.atomic_masses.unsqueeze(-1)
    if batch.has_field("fixed"):
        m = m.masked_fill(batch["fixed"].unsqueeze(-1), 0.0)
    return m


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` per system row, 0 where ``den == 0`` (a system whose atoms are all fixed)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def apply_force_constraints(batch) -> None:
    """Constrain the forces in place, as ASE's ``get_forces()`` does. No host sync.

    ``fixed`` atoms get zero force. Systems with ``fix_com`` get ASE's ``FixCom`` projection
    ``f_i -= m_i (sum_j m_j f_j) / (sum_j m_j^2)`` (Eqs. 3 and 7 of Kästner & Sherwood,
    doi:10.1021/jp9722824, as ``ase.constraints.FixCom.adjust_forces``): the mass-weighted
    net force vanishes, so an optimiser never moves the centre of mass. The sums run over
    the free atoms (``m_j = 0`` for fixed ones), so fixed atoms keep zero force.
    """
    if batch.forces is None:
        return
    if batch.has_field("fixed"):
        batch.forces.masked_fill_(batch["fixed"].unsqueeze(-1), 0.0)
    if batch.has_field("fix_com"):
        m = _free_masses(batch)
        lam = _ratio(_system_sum(batch, m * batch.forces), _system_sum(batch, m * m))
        on = batch["fix_com"].reshape(-1, 1).to(batch.dtype)
        batch.forces.sub_(m * (lam * on)[batch.batch_idx.long()])


def centre_of_mass(batch, free: bool = False) -> torch.Tensor:
    """``[B, 3]`` centre of mass of every system, Å (positions as stored, not wrapped).

    ``free=True``: of the free atoms only (0 for a system whose atoms are all fixed).
    """
    m = _free_masses(batch) if free else batch.atomic_masses.unsqueeze(-1)
    return _ratio(_system_sum(batch, m * batch.positions), _system_sum(batch, m))


def record_com_reference(batch) -> None:
    """Store every ``fix_com`` system's centre of mass of its free atoms (``com_reference`` [B, 3], Å) at a
    run's start (the fixed atoms never move, so holding it holds the whole system's centre of mass)."""
    if batch.has_field("fix_com"):
        batch.set_field("com_reference", centre_of_mass(batch, free=True), "system")


def record_degrees_of_freedom(batch) -> torch.Tensor:
    """Store every system's degrees of freedom (:func:`degrees_of_freedom`) as the float system field ``dof``.

    Called by the loop for the systems of a batch as they enter a run (with
    :func:`record_com_reference`): the field then travels with each system through slot
    operations and in-place refills (newcomers bring their own count). Device-side only;
    returns the ``[B]`` field.
    """
    dof = degrees_of_freedom(batch).contiguous()
    batch.set_field(DOF_FIELD, dof, "system")
    return dof


def system_dof(batch, record: bool = True) -> torch.Tensor:
    """float ``[B]`` (batch dtype): each system's degrees of freedom, the one count every consumer uses.

    The ``dof`` field when the batch carries it (recorded at run entry by
    :func:`record_degrees_of_freedom`), else :func:`degrees_of_freedom`, recorded in the
    batch when ``record`` (the integrators' kernels read it every step). No host sync.
    """
    if batch.has_field(DOF_FIELD):
        dof = batch[DOF_FIELD]
        if dof.shape == (batch.num_graphs,) and dof.dtype == batch.dtype:
            return dof
    return record_degrees_of_freedom(batch) if record else degrees_of_freedom(batch)


def remove_com_velocity(batch, mask: torch.Tensor) -> None:
    """Zero the centre-of-mass velocity of ``fix_com`` systems where ``mask`` [B] (ASE's ``adjust_momenta``).

    Over the free atoms: fixed atoms keep zero velocity.
    """
    if not batch.has_field("fix_com") or batch.velocities is None:
        return
    m = _free_masses(batch)
    v_com = _ratio(_system_sum(batch, m * batch.velocities), _system_sum(batch, m))
    on = (batch["fix_com"] & mask).reshape(-1, 1).to(batch.dtype)
    _sub_free(batch, batch.velocities, v_com * on)


def apply_com_constraint(batch, moving: torch.Tensor) -> None:
    """After a step: ``fix_com`` systems where ``moving`` [B] get their centre of mass put back
    at ``com_reference`` (ASE's ``FixCom.adjust_positions``) and zero centre-of-mass velocity
    (both over the free atoms: fixed atoms never move).

    ``moving``: systems that took an MD step (optimisers conserve the centre of mass through
    the force projection; their ``velocities`` are not touched).
    """
    if not batch.has_field("fix_com") or not batch.has_field("com_reference"):
        return
    on = (batch["fix_com"] & moving).reshape(-1, 1).to(batch.dtype)
    shift = (centre_of_mass(batch, free=True) - batch["com_reference"]) * on
    _sub_free(batch, batch.positions, shift)
    remove_com_velocity(batch, moving)


def _sub_free(batch, values: torch.Tensor, per_system: torch.Tensor) -> None:
    """``values[i] -= per_system[system of i]`` in place, for free atoms only."""
    delta = per_system[batch.batch_idx.long()]
    if batch.has_field("fixed"):
        delta = delta.masked_fill(batch["fixed"].unsqueeze(-1), 0.0)
    values.sub_(delta)


def degrees_of_freedom(batch) -> torch.Tensor:
    """float ``[B]``: ``3 N_s - 3 N_fixed,s - 3 [fix_com]`` per system (ASE's count), never below 0.

    Computed from the ``fixed`` and ``fix_com`` fields; consumers read the recorded field
    through :func:`system_dof` instead.
    """
    counts = (batch.ptr[1:] - batch.ptr[:-1]).to(batch.dtype) * 3.0
    if batch.has_field("fixed"):
        fixed = torch.zeros(batch.num_graphs, dtype=batch.dtype, device=batch.device)
        fixed.index_add_(0, batch.batch_idx.long(), batch["fixed"].to(batch.dtype))
        counts = counts - 3.0 * fixed
    if batch.has_field("fix_com"):
        counts = counts - 3.0 * batch["fix_com"].reshape(-1).to(batch.dtype)
    return counts.clamp(min=0.0)


def system_temperature(batch) -> torch.Tensor:
    """Instantaneous kinetic temperature per system, K ``[B]`` (``2 E_kin / (dof kB)``, ASE's formula).

    Uses ``velocities`` (Å / ASE time unit), ``atomic_masses`` (amu) and the degrees of
    freedom of :func:`system_dof`; a system without degrees of freedom gets 0.
    """
    from ase.units import kB

    v = batch.velocities
    if v is None:
        return torch.zeros(batch.num_graphs, dtype=batch.dtype, device=batch.device)
    ke = 0.5 * (batch.atomic_masses[:, None] * v * v).sum(dim=1)
    per_system = torch.zeros(batch.num_graphs, dtype=ke.dtype, device=ke.device)
    per_system.index_add_(0, batch.batch_idx.long(), ke)
    dof = system_dof(batch, record=False)
    return torch.where(dof > 0, 2.0 * per_system / (dof.clamp(min=1.0) * kB), torch.zeros_like(per_system))
