"""Cell filters for the optimizers: ASE's ``FrechetCellFilter`` and ``UnitCellFilter``, batched.

A filter adds three "rows" per system (the cell's degrees of freedom) to what an optimizer
moves, and turns the stress into forces on them, so that :class:`~batchmd.dynamics.FIRE`
and :class:`~batchmd.dynamics.LBFGS` relax atoms and cell together, step for step as
``ase.optimize.FIRE(FrechetCellFilter(atoms))`` does. The math is in
:mod:`batchmd.kernels.cell_filter`.

Example
-------
>>> from batchmd.dynamics import FIRE, ConvergenceHook, FrechetCellFilter
>>> relax = FIRE(model, cell_filter=FrechetCellFilter(scalar_pressure=0.01),
...              convergence_hook=ConvergenceHook.from_forces(0.01))     # doctest: +SKIP
>>> relaxed = relax.run(batch, n_steps=1000)                             # doctest: +SKIP

``convergence_hook=ConvergenceHook.from_forces(fmax)`` then means ASE's criterion through
the filter: the largest norm over the ``N`` transformed atom forces and the 3 cell-force rows
is ``<= fmax``. The model must compute the stress (Lennard-Jones does).
"""

from __future__ import annotations

import numpy as np
import torch

from batchmd.dynamics.base import set_system_param, system_target
from batchmd.dynamics.convergence import ConvergenceHook
from batchmd.dynamics.ranges import check_md_ranges
from batchmd.kernels import cell_filter as cfk
from batchmd.runtime import LaunchCache, WarpViewCache

__all__ = ["CellFilter", "FrechetCellFilter", "UnitCellFilter", "GPA", "FILTER_FIELDS", "CELL_MODES", "cell_filter_for"]

#: 1 GPa in eV/Å^3 (``ase.units.GPa``).
GPA = 1.0 / 160.21766208

#: System fields a filter keeps in the batch (they follow each system through refills).
FILTER_FIELDS = {
    "filter_kind": "int32: 0 UnitCellFilter, 1 FrechetCellFilter",
    "filter_ref_cell": "[3, 3] Å: the cell when the filter was attached (ASE's orig_cell)",
    "filter_pressure": "eV/Å^3: scalar_pressure",
    "filter_hydrostatic": "int32: hydrostatic_strain",
    "filter_constant_volume": "int32: constant_volume",
    "filter_mask": "[3, 3] 0/1: mask (ASE's mask3x3)",
    "filter_factor": "cell_factor (unit) or exp_cell_factor (Fréchet); default the atom count",
    "filter_fmax": "eV/Å: ASE's fmax through the filter (N + 3 rows), after each evaluation",
}


def _mask3x3(mask) -> np.ndarray:
    """ASE's mask (6 Voigt flags or 3x3) as a 3x3 float array."""
    m = np.asarray(mask, dtype=np.float64)
    if m.shape == (6,):
        xx, yy, zz, yz, xz, xy = m
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if m.shape == (3, 3):
        return m.copy()
    raise ValueError(f"batchmd: cell filter mask must have shape (6,) or (3, 3), got {m.shape}")


class CellFilter:
    """Base of :class:`~batchmd.dynamics.FrechetCellFilter` and :class:`~batchmd.dynamics.UnitCellFilter` (use those).

    Parameters
    ----------
    scalar_pressure : float, torch.Tensor [B] or str
        External pressure ``P`` in **eV/Å^3** (``GPA`` converts: ``10 * GPA``); the virial
        becomes ``-V (sigma + P I)``, i.e. the relaxation minimises the enthalpy ``E + P V``.
        A tensor is indexed by slot when a system enters the stage; a string names a system
        field of the batch holding each system's own pressure (eV/Å^3), so that in inflight
        runs every sample brings its own. A number or tensor is replaced, for a system that
        carries one, by its own ``target_pressure`` (``atoms.info["pressure_GPa"]``, see
        :func:`~batchmd.dynamics.base.system_target`).
    hydrostatic_strain : bool, bool tensor [B] or str
        Only isotropic deformation (the virial is replaced by its trace over 3).
    constant_volume : bool, bool tensor [B] or str
        Project the trace out of the cell forces (volume kept approximately, as in ASE).
    mask : None, sequence of 6 or 3x3 (0/1), tensor [B, 6] / [B, 3, 3], or str
        Which strain components relax (Voigt order ``xx, yy, zz, yz, xz, xy``); None: all.
    factor : None, float, tensor [B] or str
        ``cell_factor`` (unit) / ``exp_cell_factor`` (Fréchet); None: the system's atom count
        (ASE's default).

    Notes
    -----
    :meth:`init_state` writes the fields of :data:`~batchmd.dynamics.cell_filter.FILTER_FIELDS` for the systems entering
    the stage; the reference cell is their cell at that moment (as attaching a new ASE filter).
    """

    kind: int = -1
    ase_name = ""

    def __init__(self, scalar_pressure=0.0, hydrostatic_strain=False, constant_volume=False, mask=None,
                 factor=None):
        for name, value in (("scalar_pressure", scalar_pressure), ("factor", factor)):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not np.isfinite(value):
                raise ValueError(f"batchmd: {type(self).__name__} {name} must be finite, got {value!r}")
        if isinstance(factor, (int, float)) and factor <= 0:
            raise ValueError(f"batchmd: {type(self).__name__} cell factor must be > 0, got {factor!r}")
        check_md_ranges(f"batchmd: {type(self).__name__}", pressure=scalar_pressure)  # eV/Å^3; unit slips
        if mask is not None and not isinstance(mask, (str, torch.Tensor)):
            mask = _mask3x3(mask)
        self.scalar_pressure = scalar_pressure
        self.hydrostatic_strain = hydrostatic_strain
        self.constant_volume = constant_volume
        self.mask = mask
        self.factor = factor
        self._views = WarpViewCache()
        self._launch = LaunchCache()
        self._scratch = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(scalar_pressure={self.scalar_pressure!r}, hydrostatic_strain="
                f"{self.hydrostatic_strain!r}, constant_volume={self.constant_volume!r})")

    # ----------------------------------------------------------------- state
    @staticmethod
    def _value(batch, value, name):
        if isinstance(value, str):
            if not batch.has_field(value):
                raise ValueError(f"batchmd: cell filter {name}={value!r} names a batch field the batch does not have")
            return batch[value].reshape(batch.num_graphs, *batch[value].shape[1:])
        return value

    def init_state(self, batch, mask: torch.Tensor) -> None:
        """Attach the filter to the systems where ``mask`` [B] is True (reference cell = current cell)."""
        if batch.cell is None:
            raise ValueError("batchmd: a cell filter needs systems with a cell")
        dtype, num, dev = batch.positions.dtype, batch.num_graphs, mask.device
        set_system_param(batch, "filter_kind", self.kind, mask, torch.int32)
        pressure = self._value(batch, self.scalar_pressure, "scalar_pressure")
        if not isinstance(self.scalar_pressure, str):  # a named field is the caller's explicit choice
            pressure = system_target(batch, "target_pressure", pressure, dtype)
        set_system_param(batch, "filter_pressure", pressure.reshape(-1) if torch.is_tensor(pressure) else pressure,
                         mask, dtype)
        for field, attr in (("filter_hydrostatic", "hydrostatic_strain"), ("filter_constant_volume", "constant_volume")):
            value = self._value(batch, getattr(self, attr), attr)
            value = value.reshape(-1).to(torch.int32) if torch.is_tensor(value) else int(bool(value))
            set_system_param(batch, field, value, mask, torch.int32)
        factor = self._value(batch, self.factor, "factor")
        if factor is None:
            factor = batch.num_atoms_per_system.to(device=dev, dtype=dtype)
        set_system_param(batch, "filter_factor", factor.reshape(-1) if torch.is_tensor(factor) else factor, mask, dtype)
        m = self._value(batch, self.mask, "mask")
        if m is None:
            m = torch.ones(num, 3, 3, dtype=dtype, device=dev)
        elif isinstance(m, np.ndarray):
            m = torch.as_tensor(m, dtype=dtype, device=dev).expand(num, 3, 3)
        else:
            m = m.to(device=dev, dtype=dtype)
            if m.shape[-1] == 6:
                m = m[:, [[0, 5, 4], [5, 1, 3], [4, 3, 2]]]
            if tuple(m.shape) != (num, 3, 3):
                raise ValueError(f"batchmd: per-system cell filter mask must be [{num}, 6] or [{num}, 3, 3]")
        pick = mask.view(-1, 1, 1)
        for field, value in (("filter_mask", m), ("filter_ref_cell", batch.cell.to(dtype).clone())):
            if batch.has_field(field) and tuple(batch[field].shape) == (num, 3, 3):
                value = torch.where(pick, value, batch[field])
            batch.set_field(field, value.contiguous(), "system")
        if not batch.has_field("filter_fmax") or batch["filter_fmax"].shape != (num,):
            batch.set_field("filter_fmax", torch.full((num,), float("nan"), dtype=dtype, device=dev), "system")

    # ----------------------------------------------------------------- kernels
    def scratch(self, batch) -> dict:
        """Per-system ``F``, ``F^{-1}``, cell rows and cell forces (mat33 [B]), reused while B holds."""
        num, dtype, dev = batch.num_graphs, batch.positions.dtype, batch.device
        sc = self._scratch
        if sc is None or sc["key"] != (num, dtype, dev):
            t = {name: torch.zeros(num, 3, 3, dtype=dtype, device=dev)
                 for name in ("deform", "inv_deform", "cell_x", "cell_f")}
            self._scratch = sc = {"key": (num, dtype, dev), "t": t}
        views = self._views
        sc["w"] = {name: views("_" + name, tensor, matrix=True) for name, tensor in sc["t"].items()}
        return sc

    def compute(self, batch, stage_index: int, active_only: bool = True, report: bool = False) -> dict:
        """Launch ``filter_system_kernel``; returns the scratch views.

        Raises
        ------
        ValueError
            The batch carries no stress (the model must compute it; see ``Model.computes_stress``).

        ``report=True`` also writes the filter's ``fmax`` into the loop's ``fmax`` field of the
        stage's systems (what progress lines and results report), and marks FAILED (failure bit
        ``FailureReason.CELL``) a system that is not periodic in all three directions, has a
        zero-volume cell or a non-finite stress; its ``fmax`` is NaN, so it never converges.
        """
        if not batch.has_field("stress"):
            raise ValueError(f"batchmd: {type(self).__name__} needs the stress (eV/Å^3) of every system; "
                             "use a model that computes it (model.computes_stress) in a loop that asks for it")
        sc = self.scratch(batch)
        v, w = self._views, sc["w"]
        self._launch(cfk.filter_system_kernel, batch.num_graphs, [
            v("ptr", batch.ptr), v("stage", batch["stage"]), v("status", batch["status"]), int(stage_index),
            int(bool(active_only)), v("kind", batch["filter_kind"]), v("cell", batch.cell, matrix=True),
            v("ref_cell", batch["filter_ref_cell"], matrix=True), v("stress", batch.stress, matrix=True),
            v("pressure", batch["filter_pressure"]), v("hydro", batch["filter_hydrostatic"]),
            v("constvol", batch["filter_constant_volume"]), v("mask", batch["filter_mask"], matrix=True),
            v("factor", batch["filter_factor"]), v("forces", batch.forces, vector=True),
            w["deform"], w["inv_deform"], w["cell_x"], w["cell_f"], v("fmax", batch["filter_fmax"]),
            int(bool(report)), v("loop_fmax", batch["fmax"] if report else batch["filter_fmax"]),
            v("pbc", batch.pbc), v("failure", self._failure(batch)),
        ], batch.device, batch.positions.dtype)
        return sc

    def _failure(self, batch) -> torch.Tensor:
        """The loop's int32 ``failure`` field (created at zero when a batch has none yet)."""
        if not batch.has_field("failure") or batch["failure"].shape != (batch.num_graphs,):
            batch.set_field("failure", torch.zeros(batch.num_graphs, dtype=torch.int32, device=batch.device), "system")
        return batch["failure"]

    def fmax(self, batch) -> torch.Tensor:
        """ASE's ``fmax`` through the filter for every system, eV/Å (``[B]``; also in field ``filter_fmax``)."""
        self.compute(batch, -1, active_only=False)
        return batch["filter_fmax"]

    def convergence_hook(self, threshold: float) -> ConvergenceHook:
        """Converged when ASE's ``fmax`` through this filter is ``<= threshold`` (eV/Å)."""
        if not threshold > 0:
            raise ValueError(f"batchmd: convergence threshold must be > 0 eV/Å, got {threshold}")
        threshold = float(threshold)
        out = {}

        def converged(batch):
            fmax = self.fmax(batch)
            buf = out.get("buf")
            if buf is None or buf.shape != fmax.shape or buf.device != fmax.device or out["t"].dtype != fmax.dtype:
                buf = out["buf"] = torch.empty(fmax.shape, dtype=torch.bool, device=fmax.device)
                out["t"] = torch.tensor(threshold, dtype=fmax.dtype, device=fmax.device)
            return torch.le(fmax, out["t"], out=buf)  # no allocation in the steady-state step

        return ConvergenceHook("filter_fmax", threshold, predicate=converged)

    def wrap_convergence(self, hook):
        """A plain force criterion (``ConvergenceHook.from_forces``) becomes the filter's; others are kept."""
        if hook is not None and hook.field == "fmax" and hook.predicate is None:
            return self.convergence_hook(hook.threshold)
        return hook


class FrechetCellFilter(CellFilter):
    """Batched ``ase.filters.FrechetCellFilter``: cell rows ``exp_cell_factor * log(F)``.

    Parameters as :class:`~batchmd.dynamics.cell_filter.CellFilter`, with ASE's name ``exp_cell_factor`` for the factor.
    The default filter for variable-cell relaxation (ASE's recommendation); its cell forces
    are exact gradients of the (enthalpy) energy with respect to the log-strain rows.
    """

    kind = cfk.FRECHET
    ase_name = "FrechetCellFilter"

    def __init__(self, scalar_pressure=0.0, hydrostatic_strain=False, constant_volume=False, mask=None,
                 exp_cell_factor=None):
        super().__init__(scalar_pressure, hydrostatic_strain, constant_volume, mask, exp_cell_factor)


class UnitCellFilter(CellFilter):
    """Batched ``ase.filters.UnitCellFilter``: cell rows ``cell_factor * F``.

    Parameters as :class:`~batchmd.dynamics.cell_filter.CellFilter`, with ASE's name ``cell_factor`` for the factor.
    """

    kind = cfk.UNIT
    ase_name = "UnitCellFilter"

    def __init__(self, scalar_pressure=0.0, hydrostatic_strain=False, constant_volume=False, mask=None,
                 cell_factor=None):
        super().__init__(scalar_pressure, hydrostatic_strain, constant_volume, mask, cell_factor)


#: ``cell`` modes of :func:`batchmd.ase.relax` and ``batchmd relax --cell`` -> FrechetCellFilter
#: options (None: no filter, the cell is kept).
CELL_MODES = {"fixed": None, "full": {}, "hydrostatic": {"hydrostatic_strain": True},
              "volume": {"constant_volume": True}}


def cell_filter_for(cell: str = "fixed", pressure=0.0):
    """The cell filter of a ``cell`` mode, as ``batchmd relax --cell`` builds it.

    Parameters
    ----------
    cell : str
        ``"fixed"`` (atoms only: no filter), ``"full"`` (atoms and cell, ASE's
        ``FrechetCellFilter``), ``"hydrostatic"`` (isotropic cell changes only) or ``"volume"``
        (cell shape at constant volume).
    pressure : float
        External pressure, eV/Å^3 (``GPA`` per GPa); needs ``"full"`` or ``"hydrostatic"``.
        0 with other modes; per-frame pressures go in the systems' ``target_pressure``.

    Returns
    -------
    FrechetCellFilter or None

    Raises
    ------
    ValueError
        For an unknown mode, a non-finite pressure, or a non-zero pressure with ``"fixed"``
        or ``"volume"`` (it would do nothing).
    """
    if cell not in CELL_MODES:
        raise ValueError(f"cell must be one of {', '.join(CELL_MODES)}, got {cell!r}")
    if isinstance(pressure, bool) or not isinstance(pressure, (int, float)) or not np.isfinite(pressure):
        raise ValueError(f"pressure must be a finite number of eV/Å^3, got {pressure!r}")
    options = CELL_MODES[cell]
    if options is None or cell == "volume":
        if pressure != 0.0:
            raise ValueError(f"pressure does nothing with cell={cell!r}: it needs a variable cell "
                             "(cell='full' or 'hydrostatic' relaxes the cell under pressure)")
    if options is None:
        return None
    return FrechetCellFilter(scalar_pressure=float(pressure), **options)
