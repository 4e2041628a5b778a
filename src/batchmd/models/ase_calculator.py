"""Any ASE calculator as a batchmd model, evaluated system by system.

:class:`ASECalculatorModel` wraps an ``ase.calculators.calculator.Calculator`` (EMT,
Lennard-Jones, a DFT code, a machine-learned potential with an ASE interface, ...) so it can
drive batchmd's dynamics. It is **slow**: every step copies each system to the host, builds
an ``ase.Atoms`` and calls the calculator once per system, one after the other. Use it to
check a workflow or to reuse a calculator that has no batched implementation; use a
native batchmd model (:class:`~batchmd.models.lj.LennardJones`, a torch module) for speed.

Example
-------
>>> import torch
>>> from ase.build import bulk
>>> from ase.calculators.emt import EMT
>>> from batchmd.data import Batch
>>> from batchmd.models.ase_calculator import ASECalculatorModel
>>> batch = Batch.from_ase([bulk("Cu", "fcc", a=3.6, cubic=True)], dtype=torch.float64)
>>> out = ASECalculatorModel(EMT())(batch)
>>> out["energy"].shape, out["forces"].shape
(torch.Size([1, 1]), torch.Size([4, 3]))
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from batchmd.kernels.bookkeeping import EMPTY, FAILED
from batchmd.models.base import Model

log = logging.getLogger(__name__)

__all__ = ["ASECalculatorModel"]


class ASECalculatorModel(Model):
    """Wrap an ASE calculator as a batchmd :class:`~batchmd.models.base.Model`.

    Parameters
    ----------
    calculator : ase.calculators.calculator.Calculator
        The calculator; by default one object is reused for every system (it recomputes
        whenever the positions, numbers, cell or pbc differ from its last call).
    compute_stress : bool
        Also return ``"stress"`` [B,3,3] eV/Å^3 (ASE convention) for systems whose cell has
        non-zero volume (zeros for the others). Default False.
    per_system : bool
        Give every system (by ``system_id``) its own deep copy of ``calculator``, made when
        the system first appears and dropped when it leaves the batch. Calculators that keep
        state between calls (ASE's EMT keeps its neighbor list and updates it only when atoms
        move more than its skin) then keep it per system instead of rebuilding it at every
        call because the previous call was another system: with EMT this is ~3x faster for
        relaxations and gives the same numbers. Needs a calculator that ``copy.deepcopy``
        copies cheaply and independently (not one bound to an external process or file).
        Default False.

    Attributes
    ----------
    cutoff : None
        The calculator handles its own neighbors.
    needs_neighbors : bool
        False.
    computes_stress : bool
        As ``compute_stress``.

    Notes
    -----
    Returns energies [B,1] eV and forces [N,3] eV/Å in the batch's dtype and device. Cost:
    one host copy of the batch and ``B`` sequential calculator calls per evaluation.
    """

    cutoff = None
    needs_neighbors = False

    def __init__(self, calculator, compute_stress: bool = False, per_system: bool = False) -> None:
        super().__init__()
        if not hasattr(calculator, "get_potential_energy") or not hasattr(calculator, "get_forces"):
            raise TypeError(f"ASECalculatorModel: {calculator!r} is not an ASE calculator")
        self.calculator = calculator
        self.computes_stress = bool(compute_stress)
        self.per_system = bool(per_system)
        self._calculators: dict[int, object] = {}  # system_id -> its own calculator (per_system)

    def extra_repr(self) -> str:
        return (f"calculator={type(self.calculator).__name__}, compute_stress={self.computes_stress}, "
                f"per_system={self.per_system}")

    def _calculators_for(self, batch) -> list:
        """The calculator of each system of ``batch`` (one shared, or one per ``system_id``)."""
        if not self.per_system:
            return [self.calculator] * batch.num_graphs
        if batch.has_field("system_id"):
            ids = batch["system_id"].reshape(-1).tolist()
        else:  # a bare batch (no identities): one calculator per position, not kept between calls
            ids = [None] * batch.num_graphs
        calculators = []
        for system_id in ids:
            calculator = self._calculators.get(system_id) if system_id is not None else None
            if calculator is None:
                calculator = copy.deepcopy(self.calculator)
                if system_id is not None:
                    self._calculators[system_id] = calculator
            calculators.append(calculator)
        live = set(ids)
        for system_id in [k for k in self._calculators if k not in live]:  # graduated systems
            del self._calculators[system_id]
        return calculators

    def _atoms(self, numbers, positions, cell, pbc) -> Atoms:
        return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """Energies (eV), forces (eV/Å) and optionally stress (eV/Å^3), one system at a time."""
        ptr = batch.ptr.tolist()
        numbers = batch.atomic_numbers.cpu().numpy()
        positions = batch.positions.detach().to("cpu", torch.float64).numpy()
        cells = batch.cell.detach().to("cpu", torch.float64).numpy()
        pbcs = batch.pbc.cpu().numpy()
        energies = np.zeros(batch.num_graphs)
        forces = np.zeros((batch.num_nodes, 3))
        stress = np.zeros((batch.num_graphs, 3, 3))
        # Systems the loop already failed (a guard: non-finite or collapsed cell), empty padding rows and
        # systems with a non-finite geometry are not handed to the calculator: NaN outputs, so the loop
        # fails (or keeps failed) that system alone. A calculator raising for one system does the same.
        skip = np.zeros(batch.num_graphs, dtype=bool)
        if batch.has_field("status"):
            status = batch["status"].reshape(-1).cpu().numpy()
            skip |= (status == int(FAILED)) | (status == int(EMPTY))
        calculators = self._calculators_for(batch)
        for s in range(batch.num_graphs):
            lo, hi = ptr[s], ptr[s + 1]
            if skip[s] or not (np.isfinite(positions[lo:hi]).all() and np.isfinite(cells[s]).all()):
                energies[s], forces[lo:hi], stress[s] = np.nan, np.nan, np.nan
                continue
            atoms = self._atoms(numbers[lo:hi], positions[lo:hi], cells[s], pbcs[s])
            atoms.calc = calculators[s]
            try:
                energies[s] = atoms.get_potential_energy()
                forces[lo:hi] = atoms.get_forces()
                if self.computes_stress and atoms.cell.rank == 3:
                    stress[s] = voigt_6_to_full_3x3_stress(atoms.get_stress())
            except Exception as error:  # one system's failure is that system's, never the run's
                log.warning("%s raised for system %d (%s: %s); the system is failed (non-finite energy)",
                            type(self.calculator).__name__, s, type(error).__name__, error)
                energies[s], forces[lo:hi], stress[s] = np.nan, np.nan, np.nan
        as_tensor = lambda a: torch.as_tensor(a, dtype=batch.dtype, device=batch.device)  # noqa: E731
        out = {"energy": as_tensor(energies).reshape(-1, 1), "forces": as_tensor(forces)}
        if self.computes_stress:
            out["stress"] = as_tensor(stress)
        return out
