"""Elastic tensor by finite differences of the stress, every strain of every structure in one batched run.

Method (the stress-strain finite-difference method, Le Page & Saxe, Phys. Rev. B 65, 104104
(2002); as in pymatgen's ``ElasticTensor.from_independent_strains`` and atomate2's elastic flow):

1. (optional, ``relax_input=True``) each structure is relaxed, positions and cell
   (``cell="full"``: ASE's ``FrechetCellFilter``), in one batched run.
2. Each structure is deformed by each of the six Voigt strains at each magnitude ``e`` of
   ``strains`` (default -1%, -0.5%, +0.5%, +1%), one at a time:
   ``cell' = cell (I + eps)^T``, ``positions' = positions (I + eps)^T`` with the symmetric
   small-strain tensor ``eps`` whose Voigt component ``j`` is ``e`` and all others 0
   (normal: ``eps_jj = e``; shear: ``eps_ab = eps_ba = e / 2``, i.e. the **engineering**
   shear strain ``gamma = 2 eps_ab = e``, as in Voigt notation). The unstrained structure is
   one more variant (the zero-strain point of the fit).
3. Every variant of every structure runs in **one** inflight batched run
   (:func:`batchmd.properties.common.run_variants`; each structure's result is assembled as
   soon as its variants have finished): the ions are relaxed at the strained cell
   (relaxed-ion tensor) with FIRE or LBFGS to ``fmax`` (the stage of
   :func:`batchmd.ase.relax` with ``cell="fixed"``), or, ``relax_ions=False``, not moved
   (clamped-ion tensor: one evaluation each, :func:`~batchmd.properties.common.single_point_stage`).
4. The stress of each variant comes from the model (ASE's sign convention: **positive in
   tension**, ``sigma = (1/V) dE/d eps``; no sign flip is needed). For each strained
   component ``j`` a straight line is fitted by least squares to the points
   ``(e, sigma_i(e))`` and ``(0, sigma_i(0))`` (``numpy.linalg.lstsq``, intercept and slope),
   and ``C[i, j] = d sigma_i / d eps_j`` is its slope, in GPa (Voigt order xx yy zz yz xz xy,
   engineering shear strain). The intercept absorbs any residual stress of the reference.

``C`` is the raw fit (not symmetrised: its antisymmetric part measures the finite-difference
and convergence error, reported as ``C_asym_GPa``); ``C_sym = (C + C^T) / 2`` gives the
moduli and the ``C11_GPa`` ... ``C66_GPa`` columns. pymatgen's ``ElasticTensor`` holds the
transpose (its ``c_ij`` is the slope of stress ``j`` against strain ``i``).

Bulk and shear moduli, GPa (Voigt 1928, Reuss 1929, Hill, Proc. Phys. Soc. A 65, 349
(1952)), with ``S = C_sym^-1``::

    K_V = [(C11 + C22 + C33) + 2 (C12 + C23 + C13)] / 9
    G_V = [(C11 + C22 + C33) - (C12 + C23 + C13) + 3 (C44 + C55 + C66)] / 15
    K_R = 1 / [(S11 + S22 + S33) + 2 (S12 + S23 + S13)]
    G_R = 15 / [4 (S11 + S22 + S33) - 4 (S12 + S23 + S13) + 3 (S44 + S55 + S66)]
    K_VRH = (K_V + K_R) / 2,  G_VRH = (G_V + G_R) / 2

Born stability is reported as ``stable`` (every eigenvalue of ``C_sym`` positive; Mouhat &
Coudert, Phys. Rev. B 90, 224104 (2014)); an unstable tensor is still returned.

Example
-------
>>> from ase.build import bulk
>>> from batchmd.models import load_model
>>> from batchmd.properties.elastic import compute_elastic
>>> [result] = compute_elastic([bulk("Cu", "fcc", a=3.59, cubic=True)], load_model("emt"))  # doctest: +SKIP
>>> round(result.K_VRH, 1)                                                                   # doctest: +SKIP
134.3
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.units import GPa

from batchmd.properties.common import (check_periodic, check_relax_options, optimizer_stage, progress_hooks,
                                       relax_inputs, run_variants, single_point_stage, variant_problem)

__all__ = ["ElasticResult", "VOIGT_LABELS", "compute_elastic", "fit_stress_strain", "voigt_strain",
           "strain_structure", "vrh_moduli"]

#: Voigt order of strain and stress components (engineering shear strain for yz, xz, xy).
VOIGT_LABELS = ("xx", "yy", "zz", "yz", "xz", "xy")
_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
_MODULI = ("K_V", "K_R", "K_VRH", "G_V", "G_R", "G_VRH")


def voigt_strain(component: int, magnitude: float) -> np.ndarray:
    """The symmetric 3x3 small-strain tensor of Voigt ``component`` (0..5, xx yy zz yz xz xy) at ``magnitude``.

    Normal components: ``eps_jj = magnitude``; shear: ``eps_ab = eps_ba = magnitude / 2``
    (engineering shear strain ``gamma = magnitude``).
    """
    a, b = _PAIRS[component]
    eps = np.zeros((3, 3))
    if a == b:
        eps[a, a] = magnitude
    else:
        eps[a, b] = eps[b, a] = 0.5 * magnitude
    return eps


def strain_structure(atoms: Atoms, eps: np.ndarray) -> Atoms:
    """A copy of ``atoms`` deformed by ``F = I + eps``: cell and positions times ``F^T`` (no calculator)."""
    deformation = np.eye(3) + np.asarray(eps, dtype=np.float64)
    out = atoms.copy()
    out.calc = None
    out.set_cell(atoms.cell.array @ deformation.T, scale_atoms=False)
    out.positions = atoms.positions @ deformation.T
    return out


def fit_stress_strain(strains: Sequence[float], stresses: np.ndarray,
                      stress0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares stress-strain fit: ``C[i, j] = d sigma_i / d eps_j`` and the fit residuals.

    Parameters
    ----------
    strains : sequence of float, length n
        Strain magnitudes (engineering strain for the shear components).
    stresses : array [6, n, 6]
        ``stresses[j, k, i]``: stress component ``i`` (Voigt, any unit) with Voigt component
        ``j`` strained by ``strains[k]``.
    stress0 : array [6]
        Stress of the unstrained structure (the zero-strain point of every column).

    Returns
    -------
    (C, rms) : array [6, 6] (unit of ``stresses``), array [6, 6] root-mean-square residual of each line.
    """
    e = np.concatenate([[0.0], np.asarray(strains, dtype=np.float64)])
    design = np.stack([np.ones_like(e), e], axis=1)
    C = np.empty((6, 6))
    rms = np.empty((6, 6))
    for j in range(6):
        y = np.concatenate([np.asarray(stress0, dtype=np.float64)[None, :], stresses[j]], axis=0)  # [n+1, 6]
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        C[:, j] = coef[1]
        rms[:, j] = np.sqrt(np.mean((design @ coef - y) ** 2, axis=0))
    return C, rms


def vrh_moduli(C: np.ndarray) -> dict[str, float]:
    """Voigt, Reuss and Hill bulk and shear moduli of a symmetric 6x6 stiffness tensor (unit of ``C``).

    Formulas: Hill, Proc. Phys. Soc. A 65, 349 (1952) (see the module docstring). The Reuss
    bounds are NaN when ``C`` is singular. Returns ``{"K_V", "K_R", "K_VRH", "G_V", "G_R", "G_VRH"}``.
    """
    C = np.asarray(C, dtype=np.float64)
    k_v = (C[0, 0] + C[1, 1] + C[2, 2] + 2.0 * (C[0, 1] + C[1, 2] + C[0, 2])) / 9.0
    g_v = (C[0, 0] + C[1, 1] + C[2, 2] - (C[0, 1] + C[1, 2] + C[0, 2]) + 3.0 * (C[3, 3] + C[4, 4] + C[5, 5])) / 15.0
    k_r = g_r = math.nan
    if np.all(np.isfinite(C)) and np.linalg.cond(C) < 1e12:
        S = np.linalg.inv(C)
        k_r = 1.0 / (S[0, 0] + S[1, 1] + S[2, 2] + 2.0 * (S[0, 1] + S[1, 2] + S[0, 2]))
        g_r = 15.0 / (4.0 * (S[0, 0] + S[1, 1] + S[2, 2]) - 4.0 * (S[0, 1] + S[1, 2] + S[0, 2])
                      + 3.0 * (S[3, 3] + S[4, 4] + S[5, 5]))
    return {"K_V": float(k_v), "K_R": float(k_r), "K_VRH": float(0.5 * (k_v + k_r)),
            "G_V": float(g_v), "G_R": float(g_r), "G_VRH": float(0.5 * (g_v + g_r))}


@dataclass
class ElasticResult:
    """The elastic tensor of one structure (see :func:`compute_elastic`).

    Attributes
    ----------
    index : int
        Position of the structure in the input.
    formula : str
        Chemical formula (``Atoms.get_chemical_formula()``).
    ok : bool
        False when any variant failed, did not converge or gave a non-finite stress (then
        ``error`` names the first, and the tensor and moduli are NaN).
    error : str or None
        One line, e.g. ``"strain -1% of xx: not converged in 500 steps (fmax 0.12 eV/Å)"``.
    C : numpy.ndarray
        [6, 6] GPa. Raw least-squares fit ``C[i, j] = d sigma_i / d eps_j`` (Voigt xx yy zz yz xz xy,
        engineering shear strain; stress positive in tension).
    C_sym : numpy.ndarray
        [6, 6] GPa. ``(C + C^T) / 2``: the tensor the moduli and the row's ``Cij_GPa`` use.
    K_V, K_R, K_VRH, G_V, G_R, G_VRH : float
        GPa. Bulk and shear moduli, Voigt, Reuss, Hill (:func:`vrh_moduli`, of ``C_sym``).
    strains : numpy.ndarray
        [n] The strain magnitudes.
    stresses : numpy.ndarray
        [6, n, 6] GPa. ``stresses[j, k, i]``: Voigt stress ``i`` with component ``j`` strained by ``strains[k]``.
    stress0 : numpy.ndarray
        [6] GPa. Stress of the unstrained reference (after its ions were relaxed).
    fit_rms : numpy.ndarray
        [6, 6] GPa. Root-mean-square residual of each fitted line (non-linearity of the response).
    variants : tuple of str
        Variant names: ``"unstrained"``, then ``"strain -1% of xx"``, ... (component-major).
    status, n_steps, fmax : tuple
        Per variant: final status name (``converged``; ``completed`` for clamped ions;
        ``out_of_steps``, ``failed``), optimizer steps, final fmax (eV/Å).
    relax_ions : bool
        True: relaxed-ion tensor; False: clamped-ion tensor.
    structure : ase.Atoms or None
        The unstrained reference structure (relaxed when ``relax_input``; ions relaxed at
        its cell when ``relax_ions``).
    """

    index: int
    formula: str
    ok: bool
    error: str | None
    C: np.ndarray = field(default_factory=lambda: np.full((6, 6), np.nan))
    C_sym: np.ndarray = field(default_factory=lambda: np.full((6, 6), np.nan))
    K_V: float = math.nan
    K_R: float = math.nan
    K_VRH: float = math.nan
    G_V: float = math.nan
    G_R: float = math.nan
    G_VRH: float = math.nan
    strains: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stresses: np.ndarray = field(default_factory=lambda: np.zeros((6, 0, 6)))
    stress0: np.ndarray = field(default_factory=lambda: np.full(6, np.nan))
    fit_rms: np.ndarray = field(default_factory=lambda: np.full((6, 6), np.nan))
    variants: tuple = ()
    status: tuple = ()
    n_steps: tuple = ()
    fmax: tuple = ()
    relax_ions: bool = True
    structure: Atoms | None = None

    @property
    def stable(self) -> bool:
        """True when every eigenvalue of ``C_sym`` is positive (Born stability; False when the tensor is NaN)."""
        return bool(np.all(np.isfinite(self.C_sym)) and np.linalg.eigvalsh(self.C_sym).min() > 0)

    def row(self) -> dict:
        """Flat columns, units in the names: ``index``, ``formula``, ``ok``, ``error``,
        ``C11_GPa`` ... ``C66_GPa`` (the 21 entries ``i <= j`` of ``C_sym``), ``K_V_GPa`` ...
        ``G_VRH_GPa``, ``C_asym_GPa`` (largest ``|C - C^T| / 2``), ``fit_rms_GPa`` (largest
        residual), ``min_eig_GPa``, ``residual_stress_GPa`` (largest ``|stress0|``: the reference's
        own stress; large values mean a pre-stressed input, relax it first), ``stable``,
        ``relax_ions``, ``n_variants``, ``max_steps_taken``. NaN values for a failed result."""
        row = {"index": self.index, "formula": self.formula, "ok": self.ok, "error": self.error}
        for i in range(6):
            for j in range(i, 6):
                row[f"C{i + 1}{j + 1}_GPa"] = float(self.C_sym[i, j])
        for name in _MODULI:
            row[f"{name}_GPa"] = float(getattr(self, name))
        finite = bool(np.all(np.isfinite(self.C)))
        row["C_asym_GPa"] = float(np.abs(self.C - self.C.T).max() / 2) if finite else math.nan
        row["fit_rms_GPa"] = float(np.max(self.fit_rms)) if finite else math.nan
        row["min_eig_GPa"] = float(np.linalg.eigvalsh(self.C_sym).min()) if finite else math.nan
        stress0 = np.asarray(self.stress0, dtype=np.float64)
        # a large residual stress means a pre-stressed reference: C is then the stiffness of that strained state
        row["residual_stress_GPa"] = float(np.abs(stress0).max()) if np.all(np.isfinite(stress0)) else math.nan
        row["stable"] = self.stable if finite else None
        row["relax_ions"] = self.relax_ions
        row["n_variants"] = len(self.variants)
        row["max_steps_taken"] = int(max(self.n_steps)) if self.n_steps else None
        return row

    def plot(self, path) -> None:
        """Write :meth:`figure` as a PNG to ``path`` (no pyplot, no backend change). Raises ``ValueError`` for a
        failed result."""
        fig = self.figure()
        fig.savefig(path, dpi=110)

    def figure(self, fig=None):
        """Draw the ``C_sym`` heatmap (GPa) and, per strained component, the six stresses vs strain with the
        fitted lines, into ``fig`` (a ``matplotlib.figure.Figure``; default a new 13 x 5.2 inch one, not
        registered with pyplot). Returns the figure. Raises ``ValueError`` for a failed result."""
        if not self.ok:
            raise ValueError(f"ElasticResult.plot: structure {self.index} ({self.formula}) failed: {self.error}")
        from matplotlib.figure import Figure

        if fig is None:
            fig = Figure(figsize=(13, 5.2), layout="constrained")
        grid = fig.add_gridspec(2, 5)
        ax = fig.add_subplot(grid[:, :2])
        limit = float(np.abs(self.C_sym).max()) or 1.0
        image = ax.imshow(self.C_sym, cmap="RdBu_r", vmin=-limit, vmax=limit)
        for i in range(6):
            for j in range(6):
                value = self.C_sym[i, j] if abs(self.C_sym[i, j]) >= 0.5 else 0.0  # no "-0"
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(value) > 0.6 * limit else "black")
        ax.set_xticks(range(6), [f"{k + 1}\n{v}" for k, v in enumerate(VOIGT_LABELS)])
        ax.set_yticks(range(6), [f"{k + 1} {v}" for k, v in enumerate(VOIGT_LABELS)])
        ax.set_title(f"{self.formula}: C (GPa), K_VRH {self.K_VRH:.1f}, G_VRH {self.G_VRH:.1f}")
        fig.colorbar(image, ax=ax, shrink=0.8, label="GPa")
        e = np.concatenate([[0.0], self.strains])
        order = np.argsort(e)
        line = np.linspace(e.min(), e.max(), 2)
        for j in range(6):
            axj = fig.add_subplot(grid[j // 3, 2 + j % 3])
            for i in range(6):
                sigma = np.concatenate([[self.stress0[i]], self.stresses[j, :, i]])
                intercept = np.mean(sigma) - self.C[i, j] * np.mean(e)
                (points,) = axj.plot(100 * e[order], sigma[order], "o", ms=3, label=VOIGT_LABELS[i])
                axj.plot(100 * line, intercept + self.C[i, j] * line, "-", lw=0.8, color=points.get_color())
            axj.set_title(f"strain {VOIGT_LABELS[j]}", fontsize=9)
            axj.tick_params(labelsize=7)
            if j // 3 == 1:
                axj.set_xlabel("strain (%)", fontsize=8)
            if j % 3 == 0:
                axj.set_ylabel("stress (GPa)", fontsize=8)
            if j == 2:
                axj.legend(fontsize=6, title="stress", title_fontsize=6)
        return fig


def _check_strains(strains) -> np.ndarray:
    try:
        values = np.asarray([float(s) for s in strains], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"compute_elastic: strains must be a sequence of numbers, got {strains!r}") from None
    if values.size == 0:
        raise ValueError("compute_elastic: strains is empty: give at least one non-zero strain magnitude")
    if not np.all(np.isfinite(values)) or np.any(values == 0) or np.any(np.abs(values) > 0.1):
        raise ValueError(f"compute_elastic: strains must be finite, non-zero and at most 0.1 in magnitude "
                         f"(small strains for finite differences), got {values.tolist()}")
    if len(set(values.tolist())) != values.size:
        raise ValueError(f"compute_elastic: strains has repeated values: {values.tolist()}")
    return values


def _variant_label(component: int, magnitude: float) -> str:
    return f"strain {100 * magnitude:+g}% of {VOIGT_LABELS[component]}"


def _problem(atoms: Atoms, label: str, relaxed: bool) -> str | None:
    """Why a result frame cannot enter the fit (one line), or None: the shared status check
    (:func:`~batchmd.properties.common.variant_problem`), then the stress."""
    problem = variant_problem(atoms, label, single_point=not relaxed)
    if problem is not None:
        return problem
    if atoms.calc is None or "stress" not in atoms.calc.results:
        return f"{label}: the model gave no stress"
    if not np.all(np.isfinite(atoms.get_stress(voigt=True))):
        return f"{label}: non-finite stress"
    return None


def _failed(index: int, atoms: Atoms, error: str, relax_ions: bool, strains: np.ndarray) -> ElasticResult:
    return ElasticResult(index=index, formula=atoms.get_chemical_formula(), ok=False, error=error,
                         strains=strains.copy(), stresses=np.full((6, strains.size, 6), np.nan), relax_ions=relax_ions)


def compute_elastic(structures: Sequence[Atoms], model, *, strains=(-0.01, -0.005, 0.005, 0.01),
                    relax_ions: bool = True, relax_input: bool = False, fmax: float = 0.005, max_steps: int = 500,
                    optimizer: str = "fire", device="cpu", dtype: torch.dtype = torch.float64,
                    max_atoms: int | None = None, hooks=(), progress: bool = False,
                    on_result=None) -> list[ElasticResult]:
    """Elastic tensors of many crystals, every strained variant of every structure in one batched run.

    Parameters
    ----------
    structures : sequence of ase.Atoms
        Crystals (3-D periodic cells; not modified).
    model : callable
        A batchmd model that computes the stress (``model.computes_stress``).
    strains : sequence of float
        Strain magnitudes applied to each of the six Voigt components (non-zero, distinct,
        ``|e| <= 0.1``; engineering strain for shears). Default ``(-0.01, -0.005, 0.005, 0.01)``.
    relax_ions : bool
        True (default): ions relaxed at each strained cell (relaxed-ion tensor); False:
        clamped-ion tensor (ions moved affinely with the cell, one evaluation per variant).
    relax_input : bool
        Relax each structure first, positions and cell (``cell="full"``, ASE's
        ``FrechetCellFilter``), to ``fmax``; a structure that does not converge fails.
    fmax : float
        Force criterion of every relaxation, eV/Å.
    max_steps : int
        Step budget of every relaxation.
    optimizer : str
        ``"fire"`` (``ase.optimize.FIRE`` step for step) or ``"lbfgs"``.
    device, dtype
        Where and in what precision the batched runs go.
    max_atoms : int, optional
        Atom budget of the live batch (see :func:`batchmd.ase.run_frames`).
    hooks : sequence
        Run-level hooks passed to the batched runs.
    progress : bool
        Show a progress line (:class:`batchmd.progress.ProgressHook`).
    on_result : callable, optional
        ``on_result(result)`` is called with each structure's :class:`ElasticResult` as soon
        as all its variants have finished, while the run goes on (write results early).

    Returns
    -------
    list of ElasticResult
        One per structure, in input order. A structure with any failed, non-converged or
        non-finite variant is ``ok=False`` with a named ``error``; the others are unaffected.

    Raises
    ------
    ValueError
        One line, before anything runs: a structure that is not a 3-D periodic crystal, bad
        ``strains``, ``fmax``, ``max_steps`` or ``optimizer``, a model that computes no stress;
        and the errors of :func:`batchmd.ase.run_frames` (e.g. elements the model lacks).
    """
    where = "compute_elastic"
    structures = check_periodic(structures, where)
    values = _check_strains(strains)
    check_relax_options(fmax, max_steps, optimizer, where=where, min_steps=1)
    if getattr(model, "computes_stress", None) is False:
        raise ValueError("compute_elastic: the model computes no stress (computes_stress=False); the elastic "
                         "tensor is fitted to stresses")
    if not structures:
        return []
    results: list[ElasticResult | None] = [None] * len(structures)

    def deliver(index: int, result: ElasticResult) -> None:
        results[index] = result
        if on_result is not None:
            on_result(result)

    with progress_hooks(hooks, progress) as run_hooks:
        run_kw = dict(device=device, dtype=dtype, max_atoms=max_atoms, hooks=run_hooks)
        references = list(structures)
        if relax_input:
            references, problems = relax_inputs(structures, model, cell="full", fmax=fmax, max_steps=max_steps,
                                                optimizer=optimizer, **run_kw)
            for index, problem in enumerate(problems):
                if problem is not None:
                    deliver(index, _failed(index, structures[index], problem, relax_ions, values))

        labels = ["unstrained"] + [_variant_label(j, e) for j in range(6) for e in values]
        todo = [i for i in range(len(structures)) if results[i] is None]
        variants = []
        for index in todo:
            base = references[index].copy()
            base.calc = None
            variants.append([base] + [strain_structure(base, voigt_strain(j, e)) for j in range(6) for e in values])
        # relaxed ions: ions relaxed at each fixed strained cell (batchmd.ase.relax's cell="fixed" stage);
        # clamped ions: one evaluation each (a zero-step stage)
        if relax_ions:
            stage, _ = optimizer_stage(model, "positions", fmax=fmax, max_steps=max_steps, optimizer=optimizer,
                                       where=where)
        else:
            stage = single_point_stage(model)

        def finished(position: int, frames) -> None:
            index = todo[position]
            deliver(index, _assemble(index, structures[index], frames, labels, values, relax_ions))

        # ions at centres of inversion (fcc) have no force to relax: no-progress warnings are silenced there
        run_variants(variants, stage, on_structure=finished, **run_kw)
    return results


def _assemble(index, atoms, chunk, labels, values, relax_ions) -> ElasticResult:
    problems = [p for frame, label in zip(chunk, labels) if (p := _problem(frame, label, relax_ions)) is not None]
    result = _failed(index, atoms, "", relax_ions, values)
    result.variants = tuple(labels)
    result.status = tuple(str(f.info.get("status")) for f in chunk)
    result.n_steps = tuple(int(f.info.get("n_steps", 0)) for f in chunk)
    result.fmax = tuple(float(f.info.get("fmax", math.nan)) for f in chunk)
    if problems:
        more = f" (and {len(problems) - 1} more failed variants)" if len(problems) > 1 else ""
        result.error = problems[0] + more
        return result
    stress = np.array([f.get_stress(voigt=True) for f in chunk]) / GPa  # ASE: positive in tension, eV/Å^3 -> GPa
    result.stress0 = stress[0]
    result.stresses = stress[1:].reshape(6, values.size, 6)
    result.C, result.fit_rms = fit_stress_strain(values, result.stresses, result.stress0)
    result.C_sym = 0.5 * (result.C + result.C.T)
    for name, value in vrh_moduli(result.C_sym).items():
        setattr(result, name, value)
    result.structure = chunk[0]
    result.ok, result.error = True, None
    return result
