"""Equation of state at batch scale: every volume of every structure in one inflight-batched run.

:func:`compute_eos` scales each structure's cell to ``n_points`` volumes, relaxes each
copy at its fixed volume (atoms; optionally the cell shape too), all copies of all
structures together through :func:`batchmd.ase.run_frames`, and fits E(V) with ASE's
:class:`ase.eos.EquationOfState` (Birch-Murnaghan by default; any of its ``eos`` names).

Procedure (the reference is the same in ASE, one structure at a time)::

    for s in linspace(-strain, +strain, n_points):            # volume strain
        atoms = structure.copy()
        atoms.set_cell(structure.cell * (1 + s) ** (1 / 3), scale_atoms=True)
        FIRE(atoms).run(fmax, max_steps)                        # relax="positions"
        # relax="shape": FIRE(FrechetCellFilter(atoms, constant_volume=True))
        volumes.append(atoms.get_volume()); energies.append(atoms.get_potential_energy())
    v0, e0, B = EquationOfState(volumes, energies, eos=eos).fit()

``strain`` is a *volume* strain: the volumes span ``V_in * (1 - strain) .. V_in * (1 +
strain)`` (each cell vector scaled by ``(1 + s)^(1/3)``), centred on the input volume, so
give relaxed (near-equilibrium) structures. The volume used in the fit is the final
volume of each point (``relax="shape"`` keeps it only approximately, as ASE's filter does).

Sources: the Birch-Murnaghan and other E(V) forms and their fit are ASE's
(``ase.eos``; F. Birch, Phys. Rev. 71, 809 (1947)); FIRE is Bitzek et al., PRL 97, 170201
(2006), step for step as ``ase.optimize.FIRE``.

Example
-------
>>> from ase.build import bulk
>>> from batchmd.models import load_model
>>> from batchmd.properties import compute_eos
>>> [result] = compute_eos([bulk("Cu", "fcc", a=3.6)], load_model("emt"), n_points=7)
>>> result.ok, round(result.B0_GPa)
(True, 134)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from batchmd.properties.common import check_periodic, optimizer_stage, run_variants, variant_problem

__all__ = ["EOS_NAMES", "EOSResult", "compute_eos", "eos_volume_strains", "fit_eos", "scaled_copies"]

#: ``eos`` names accepted (those of ``ase.eos.EquationOfState``).
EOS_NAMES = ("sj", "taylor", "murnaghan", "birch", "birchmurnaghan", "pouriertarantola", "vinet", "anton-schmidt", "p3")

#: EOS forms whose third fitted parameter is B0' (``ase.eos`` parameter order E0, B0, B0', V0).
_HAS_BP = ("murnaghan", "birch", "birchmurnaghan", "pouriertarantola", "vinet")


@dataclass
class EOSResult:
    """The equation of state of one structure.

    Attributes
    ----------
    index : int
        Position of the structure in the input.
    formula : str
        Its chemical formula (ASE's).
    n_atoms : int
        Atoms in the cell.
    ok : bool
        True when every point converged and the fit succeeded with its minimum inside the
        sampled volumes.
    error : str or None
        One line naming what failed (a point, or the fit), None when ``ok``.
    eos : str
        The ASE ``eos`` form fitted.
    V0_A3 : float
        Equilibrium volume of the cell, Å^3 (NaN when not ``ok``).
    E0_eV : float
        Energy at V0, eV (of the cell).
    B0_GPa : float
        Bulk modulus at V0, GPa.
    B0_prime : float
        Pressure derivative of the bulk modulus (dimensionless); NaN for forms without it
        (``sj``, ``taylor``, ``anton-schmidt``, ``p3``).
    volumes_A3, energies_eV : numpy.ndarray [n_points]
        The points: final cell volume (Å^3) and energy (eV) of each variant (NaN where a
        variant gave none).
    strains : numpy.ndarray [n_points]
        Volume strain of each point (``V / V_in - 1`` requested).
    statuses : list of str
        Each point's status (``converged``, ``out_of_steps``, ``failed``).
    n_steps : numpy.ndarray [n_points]
        Optimizer steps of each point.
    """

    index: int
    formula: str
    n_atoms: int
    ok: bool
    error: str | None
    eos: str
    V0_A3: float = math.nan
    E0_eV: float = math.nan
    B0_GPa: float = math.nan
    B0_prime: float = math.nan
    volumes_A3: np.ndarray = field(default_factory=lambda: np.zeros(0))
    energies_eV: np.ndarray = field(default_factory=lambda: np.zeros(0))
    strains: np.ndarray = field(default_factory=lambda: np.zeros(0))
    statuses: list = field(default_factory=list)
    n_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    def row(self) -> dict:
        """Flat columns (units in the names); NaN values where the result is not ``ok``."""
        n = max(self.n_atoms, 1)
        return {"index": self.index, "formula": self.formula, "n_atoms": self.n_atoms, "ok": self.ok,
                "error": self.error, "eos": self.eos, "V0_A3": self.V0_A3, "V0_per_atom_A3": self.V0_A3 / n,
                "E0_eV": self.E0_eV, "E0_per_atom_eV": self.E0_eV / n, "B0_GPa": self.B0_GPa,
                "B0_prime": self.B0_prime, "n_points": len(self.volumes_A3),
                "V_min_A3": float(np.nanmin(self.volumes_A3)) if np.isfinite(self.volumes_A3).any() else math.nan,
                "V_max_A3": float(np.nanmax(self.volumes_A3)) if np.isfinite(self.volumes_A3).any() else math.nan,
                "max_steps_used": int(self.n_steps.max()) if len(self.n_steps) else 0}

    def plot(self, path) -> None:
        """Save E(V) (points and, when ``ok``, the fitted curve) as a PNG at ``path`` (matplotlib, Agg)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.5, 3.4))
        ax = fig.add_subplot()
        good = np.isfinite(self.energies_eV)
        ax.plot(self.volumes_A3[good], self.energies_eV[good], "o", color="C0", label="points")
        if self.ok:
            eos = _equation_of_state(self.volumes_A3, self.energies_eV, self.eos)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                eos.fit(warn=False)
            _, _, _, _, x, y, _, _ = eos.getplotdata()
            ax.plot(x, y, "-", color="C3", label=self.eos)
            ax.axvline(self.V0_A3, color="0.6", lw=0.8, ls=":")
            ax.set_title(f"{self.formula}: V0 {self.V0_A3:.3f} Å$^3$, B0 {self.B0_GPa:.1f} GPa", fontsize=9)
        else:
            ax.set_title(f"{self.formula}: failed", fontsize=9)
        ax.set_xlabel("volume (Å$^3$)")
        ax.set_ylabel("energy (eV)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)


def eos_volume_strains(n_points: int, strain: float) -> np.ndarray:
    """The volume strains of the points: ``linspace(-strain, strain, n_points)``.

    Raises
    ------
    ValueError
        ``n_points`` not an integer >= 5 (a 4-parameter fit needs more points than
        parameters), or ``strain`` not in (0, 0.5).
    """
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 5:
        raise ValueError(f"compute_eos: n_points must be an integer >= 5, got {n_points!r}")
    if isinstance(strain, bool) or not isinstance(strain, (int, float)) or not 0 < strain < 0.5:
        raise ValueError(f"compute_eos: strain (volume strain) must be in (0, 0.5), got {strain!r}")
    return np.linspace(-strain, strain, int(n_points))


def scaled_copies(atoms, strains) -> list:
    """Copies of ``atoms`` with the cell scaled to volume ``V * (1 + s)`` for each ``s`` (atoms scaled with it).

    Each copy's ``info["eos_strain"]`` records its volume strain.
    """
    out = []
    for s in strains:
        copy = atoms.copy()
        copy.calc = None
        copy.set_cell(atoms.cell[:] * (1.0 + float(s)) ** (1.0 / 3.0), scale_atoms=True)
        copy.info["eos_strain"] = float(s)
        out.append(copy)
    return out


def _equation_of_state(volumes, energies, eos: str):
    from ase.eos import EquationOfState

    return EquationOfState(np.asarray(volumes, dtype=float), np.asarray(energies, dtype=float), eos=eos)


def fit_eos(volumes, energies, eos: str = "birchmurnaghan") -> tuple[float, float, float, float]:
    """Fit E(V) with ASE's ``EquationOfState``: ``(V0 Å^3, E0 eV, B0 GPa, B0')``.

    Raises
    ------
    ValueError
        One line: the fit failed (ASE or scipy raised, or a non-finite result), it has no
        minimum (B0 <= 0), or its minimum V0 lies outside the sampled volumes.
    """
    from ase.units import GPa

    volumes = np.asarray(volumes, dtype=float)
    fitter = _equation_of_state(volumes, energies, eos)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ASE warns when V0 is outside; checked below, one line
            fitter.fit(warn=False)
    except Exception as error:  # scipy's curve_fit raises RuntimeError, sj ValueError('No minimum!'), ...
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"the {eos} fit failed ({text})") from None
    v0, e0, b = float(fitter.v0), float(fitter.e0), float(fitter.B)
    bp = float(fitter.eos_parameters[2]) if eos in _HAS_BP else math.nan
    if not (math.isfinite(v0) and math.isfinite(e0) and math.isfinite(b)):
        raise ValueError(f"the {eos} fit failed (non-finite V0, E0 or B0)")
    if b <= 0:
        raise ValueError(f"the {eos} fit has no minimum (B0 = {b / GPa:.4g} GPa <= 0: E(V) is not convex)")
    if not volumes.min() <= v0 <= volumes.max():
        raise ValueError(f"the {eos} fit's minimum V0 = {v0:.4g} Å^3 lies outside the sampled volumes "
                         f"{volumes.min():.4g} .. {volumes.max():.4g} Å^3 (is the input near equilibrium? "
                         "relax it first, or widen strain)")
    return v0, e0, b / GPa, bp


def _label(strain: float) -> str:
    return f"volume {100 * strain:+.3g}%"


def _result(index: int, atoms, frames, strains, eos: str, single: bool) -> EOSResult:
    volumes = np.array([f.get_volume() for f in frames])
    energies = np.array([f.calc.results.get("energy", np.nan) if f.calc is not None else np.nan for f in frames],
                        dtype=float)
    statuses = [str(f.info.get("status")) for f in frames]
    steps = np.array([int(f.info.get("n_steps", 0)) for f in frames])
    result = EOSResult(index=index, formula=atoms.get_chemical_formula(), n_atoms=len(atoms), ok=False, error=None,
                       eos=eos, volumes_A3=volumes, energies_eV=energies, strains=np.asarray(strains, dtype=float),
                       statuses=statuses, n_steps=steps)
    problems = [p for f, s in zip(frames, strains) if (p := variant_problem(f, _label(s), single_point=single))]
    if problems:
        more = f" (and {len(problems) - 1} more points)" if len(problems) > 1 else ""
        result.error = problems[0] + more
        return result
    try:
        result.V0_A3, result.E0_eV, result.B0_GPa, result.B0_prime = fit_eos(volumes, energies, eos)
    except ValueError as error:
        result.error = str(error)
        return result
    result.ok = True
    return result


def compute_eos(structures: Sequence, model, *, n_points: int = 9, strain: float = 0.06,
                eos: str = "birchmurnaghan", relax: str = "positions", fmax: float = 0.01, max_steps: int = 500,
                optimizer: str = "fire", device="cpu", dtype: torch.dtype = torch.float64, max_atoms=None,
                hooks=(), progress: bool = False,
                on_result: Callable[[EOSResult], None] | None = None) -> list[EOSResult]:
    """Equations of state of many structures, every point of every structure in one batched run.

    Parameters
    ----------
    structures : sequence of ase.Atoms
        Crystals (3-D periodic), ideally relaxed: the volumes are centred on each input volume.
    model : callable
        Any batchmd model (``relax="shape"`` needs one that computes the stress).
    n_points : int
        Volumes per structure (>= 5; 7-11 typical).
    strain : float
        Largest volume strain: volumes from ``V (1 - strain)`` to ``V (1 + strain)``, evenly
        spaced (default 0.06, i.e. +-6% in volume, +-2% in lattice constant).
    eos : str
        An ``ase.eos.EquationOfState`` form (:data:`EOS_NAMES`; default Birch-Murnaghan).
    relax : str
        ``"positions"`` (atoms relaxed at the fixed scaled cell, default), ``"shape"`` (atoms and
        cell shape at constant volume: ``FrechetCellFilter(constant_volume=True)``) or
        ``"none"`` (single points of the scaled cells).
    fmax : float
        Force threshold, eV/Å (with ``"shape"``: ASE's fmax through the filter, cell rows included).
    max_steps : int
        Step budget of each point.
    optimizer : str
        ``"fire"`` (``ase.optimize.FIRE`` step for step) or ``"lbfgs"``.
    device, dtype, max_atoms, hooks
        Of the batched run (:func:`batchmd.ase.run_frames`).
    progress : bool
        Live progress line on stderr.
    on_result : callable, optional
        Called with each :class:`EOSResult` as soon as its structure's points have all
        finished (while the others still run), e.g. to write results as they come.

    Returns
    -------
    list of EOSResult
        One per structure, in input order. A structure with a point that failed or did not
        converge, or whose fit failed (ASE raised, B0 <= 0, or V0 outside the sampled volumes), has
        ``ok=False`` and ``error`` naming it; the other structures are unaffected.

    Raises
    ------
    ValueError
        One line, before anything runs: a structure without a 3-D periodic cell, an unknown
        ``eos``/``relax``/``optimizer``, bad ``n_points``, ``strain``, ``fmax`` or
        ``max_steps``; and the up-front checks of :func:`batchmd.ase.run_frames` (elements the
        model does not cover, overlapping atoms, ...).
    """
    where = "compute_eos"
    if eos not in EOS_NAMES:
        raise ValueError(f"{where}: eos must be one of {', '.join(EOS_NAMES)} (ase.eos), got {eos!r}")
    strains = eos_volume_strains(n_points, strain)
    structures = check_periodic(structures, where)
    stage, single = optimizer_stage(model, relax, fmax=fmax, max_steps=max_steps, optimizer=optimizer, where=where)
    variants = [scaled_copies(atoms, strains) for atoms in structures]
    results: dict[int, EOSResult] = {}

    def finished(s, frames):
        results[s] = _result(s, structures[s], frames, strains, eos, single)
        if on_result is not None:
            on_result(results[s])

    run_variants(variants, stage, on_structure=finished, device=device, dtype=dtype, max_atoms=max_atoms,
                 hooks=hooks, progress=progress, compute_stress=relax == "shape")
    return [results[s] for s in range(len(structures))]
