"""Harmonic phonons of many crystals with phonopy, every displaced supercell evaluated in one batched run.

:func:`compute_phonons` does the finite-displacement method of phonopy (Togo & Tanaka, Scr.
Mater. 108, 1 (2015); https://phonopy.github.io/phonopy/) for a list of structures:

1. per structure, ``phonopy.Phonopy`` builds the supercell and generates the symmetry-reduced
   displaced supercells (``generate_displacements``, default 0.01 Å, phonopy's default);
2. batchmd evaluates the perfect supercell and every displaced supercell of **every**
   structure as one inflight-batched single-point run
   (:func:`batchmd.properties.common.evaluate_frames`: energy and forces, no dynamics step)
   within an atom budget ``max_atoms``;
3. per structure, phonopy builds the force constants (``produce_force_constants``), the
   frequencies at Γ and on a q-point mesh, the band structure along a path, the total DOS
   and the harmonic thermal properties (``run_thermal_properties``).

Nothing of what phonopy does is re-implemented here: displacements, force constants, band
structure, DOS and thermal properties are phonopy's. The :class:`PhononResult` keeps the
``Phonopy`` object (``result.phonopy``) for anything else phonopy can do.

Conventions and choices
-----------------------
- **Residual forces.** The forces of the perfect (undisplaced) supercell are evaluated too
  and subtracted from every displaced supercell's forces (phonopy's ``--fz`` practice) when
  ``subtract_residual_forces=True`` (default): this removes the first-order error of a
  structure that is not exactly at a force-free geometry; for a crystal whose forces vanish
  by symmetry it changes nothing. ``residual_force_max_eV_A`` reports their size.
- **Force constants** come from phonopy's traditional finite-difference fit
  (``fc_calculator=None``), full shape ``(n_sc, n_sc, 3, 3)`` eV/Å^2, without the
  translational sum rule imposed unless ``symmetrize_fc=True``
  (``Phonopy.symmetrize_force_constants``): the drift is left as phonopy leaves it.
- **Imaginary modes** (phonopy gives them as negative frequencies) are reported, never
  failures: ``n_imaginary`` counts the modes below ``-imaginary_tol_THz`` (default 0.05 THz,
  numerical noise of the acoustic modes near Γ) over the full q-point mesh (irreducible points
  times their weights) and ``n_imaginary_gamma`` those at Γ; ``min_freq_THz`` is the lowest
  frequency at Γ, on the mesh and along the band path.
- **Band path.** ``band_path="auto"``: phonopy's ``auto_band_structure`` (seekpath) when the
  ``seekpath`` package is installed, otherwise ASE's ``Cell.bandpath`` special points of the
  phonopy primitive cell (no extra dependency; ``band_path_source`` says which was used).
  ``"seekpath"`` / ``"ase"`` force one; a list of connected paths of reduced q-points (in
  the primitive cell's reciprocal basis) gives your own; ``None`` skips the bands.
- **Units.** Frequencies THz (phonopy's default), DOS states/THz per primitive cell (it
  integrates to 3 x atoms of the primitive cell), free energy kJ/mol, entropy and heat
  capacity at constant volume J/K/mol, all per mole of *primitive cells* as phonopy reports
  them (divide by the number of atoms of the primitive cell for per mole of atoms);
  temperatures K.

Example
-------
>>> from ase.build import bulk
>>> from batchmd.models import load_model
>>> from batchmd.properties.phonons import compute_phonons
>>> [res] = compute_phonons([bulk("Cu", "fcc", a=3.59)], load_model("emt"), supercell_matrix=(2, 2, 2),
...                         mesh=(8, 8, 8), band_path=None)
>>> res.ok, res.n_imaginary, res.force_constants.shape
(True, 0, (8, 8, 3, 3))
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from batchmd.properties._phonon_result import PhononResult, supercell_label
from batchmd.properties.common import check_periodic, evaluate_frames, progress_hooks, relax_inputs

__all__ = ["PhononResult", "compute_phonons", "evaluate_frames", "choose_supercell", "supercell_label"]

_MISSING = ("batchmd.properties.phonons needs phonopy (>= 2.20): pip install 'batchmd[phonons]' "
            "(or pip install phonopy)")


def _require_phonopy():
    try:
        import phonopy
    except ImportError as error:  # pragma: no cover - exercised only without phonopy
        raise ImportError(_MISSING) from error
    return phonopy


def choose_supercell(atoms: Atoms, min_length: float) -> np.ndarray:
    """The diagonal supercell matrix whose every lattice vector is at least ``min_length`` Å long.

    ``n_i = ceil(min_length / |a_i|)`` (at least 1) for the lattice vectors ``a_i`` of
    ``atoms.cell``; returns a 3x3 int array ``diag(n_1, n_2, n_3)``.

    Raises
    ------
    ValueError
        ``min_length`` not a positive finite number.
    """
    if not (isinstance(min_length, (int, float)) and math.isfinite(min_length) and min_length > 0):
        raise ValueError(f"choose_supercell: min_length must be a positive number of Å, got {min_length!r}")
    lengths = atoms.cell.lengths()
    return np.diag([max(1, math.ceil(min_length / length - 1e-9)) for length in lengths]).astype(int)


def _supercell_matrices(structures, supercell_matrix, min_length) -> list[np.ndarray]:
    if min_length is not None:
        return [choose_supercell(atoms, min_length) for atoms in structures]

    def one(spec, where):
        matrix = np.asarray(spec)
        if matrix.shape == (3,):
            matrix = np.diag(matrix)
        if matrix.shape != (3, 3) or not np.all(np.round(matrix) == matrix):
            raise ValueError(f"compute_phonons: supercell_matrix{where} must be 3 integers or a 3x3 integer matrix, "
                             f"got {spec!r}")
        matrix = np.round(matrix).astype(int)
        if round(abs(np.linalg.det(matrix))) < 1:
            raise ValueError(f"compute_phonons: supercell_matrix{where} is singular: {spec!r}")
        return matrix

    spec = supercell_matrix
    shape = np.shape(spec) if not isinstance(spec, str) else ()
    n = len(structures)
    # one matrix: 3 ints or 3x3 (phonopy's meaning); per structure: n x 3x3, or n x 3 ints when n != 3
    per_structure = n > 0 and (shape == (n, 3, 3) or (shape == (n, 3) and n != 3))
    if per_structure:
        return [one(s, f"[{i}]") for i, s in enumerate(spec)]
    matrix = one(spec, "")
    return [matrix] * len(structures)


def _phonopy_atoms(atoms: Atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.array(atoms.cell),
                        scaled_positions=atoms.get_scaled_positions(), masses=atoms.get_masses())


def _to_ase(cell) -> Atoms:
    return Atoms(symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)


def _frame_error(frame: Atoms, name: str) -> str | None:
    if frame.info.get("status") == "failed":
        return f"{name}: evaluation failed ({frame.info.get('failure', 'non-finite values')})"
    forces = frame.get_forces()
    if not np.isfinite(forces).all():
        return f"{name}: non-finite forces"
    return None


def _check_options(displacement, temperatures, imaginary_tol_THz, mesh):
    if not (isinstance(displacement, (int, float)) and math.isfinite(displacement) and displacement > 0):
        raise ValueError(f"compute_phonons: displacement must be a positive number of Å, got {displacement!r}")
    temps = np.asarray(temperatures, dtype=float).reshape(-1)
    if temps.size == 0 or not np.isfinite(temps).all() or (temps < 0).any():
        raise ValueError(f"compute_phonons: temperatures must be non-negative finite K, got {temperatures!r}")
    if not (math.isfinite(imaginary_tol_THz) and imaginary_tol_THz >= 0):
        raise ValueError(f"compute_phonons: imaginary_tol_THz must be >= 0, got {imaginary_tol_THz!r}")
    if isinstance(mesh, (int, float)):
        if not mesh > 0:
            raise ValueError(f"compute_phonons: a mesh length must be positive, got {mesh!r}")
    elif np.asarray(mesh).shape != (3,) or not all(int(m) == m and m > 0 for m in mesh):
        raise ValueError(f"compute_phonons: mesh must be 3 positive integers or a length (float), got {mesh!r}")
    return temps


def compute_phonons(
    structures: Sequence[Atoms],
    model,
    *,
    supercell_matrix=(2, 2, 2),
    min_length: float | None = None,
    displacement: float = 0.01,
    primitive="auto",
    mesh=(20, 20, 20),
    band_path="auto",
    band_npoints: int = 51,
    temperatures=tuple(range(0, 1001, 10)),
    exclude_gamma_acoustic: bool = True,
    imaginary_tol_THz: float = 0.05,
    subtract_residual_forces: bool = True,
    symmetrize_fc: bool = False,
    fc_calculator: str | None = None,
    relax_input: bool = False,
    relax_cell: str = "fixed",
    fmax: float = 1e-3,
    max_steps: int = 1000,
    optimizer: str = "fire",
    device="cpu",
    dtype: torch.dtype = torch.float64,
    max_atoms: int | None = None,
    hooks=(),
    progress: bool = False,
    on_result=None,
) -> list[PhononResult]:
    """Phonons of every structure with phonopy, all displaced supercells evaluated as one batched run.

    Parameters
    ----------
    structures : sequence of ase.Atoms
        Periodic crystals (3-D cell, ``pbc`` all True), taken as phonopy's unit cell (not modified).
    model : callable
        Any batchmd model (LJ, ``load_model("emt")``, SevenNet-0, MACE, ...).
    supercell_matrix : 3 ints, 3x3 ints, or one per structure
        Supercell of the unit cell (phonopy's ``supercell_matrix``). Default ``(2, 2, 2)``.
        Per structure: a list of ``len(structures)`` 3x3 matrices, or of 3-int diagonals
        (except with exactly 3 structures, where a 3x3 nesting is read as one matrix).
    min_length : float, optional
        Instead of ``supercell_matrix`` (ignored when this is given): per structure the
        diagonal supercell whose lattice vectors are at least this long, Å
        (:func:`choose_supercell`).
    displacement : float
        Displacement amplitude, Å (phonopy's default 0.01).
    primitive : "auto", None or 3x3
        phonopy's ``primitive_matrix`` ("auto": found by symmetry; None: the unit cell).
    mesh : 3 ints or float
        Γ-centred q-point mesh for the DOS and thermal properties (a float is phonopy's mesh
        length in Å, which sets a density). Default ``(20, 20, 20)``.
    band_path : "auto", "seekpath", "ase", None or list
        See the module notes. A list is ``[[q0, q1, q2, ...], [q3, q4, ...]]`` of connected
        paths of reduced q-points.
    band_npoints : int
        q-points per band segment (ends included).
    temperatures : sequence of float
        K (default 0, 10, ..., 1000).
    exclude_gamma_acoustic : bool
        Leave the three acoustic modes at Γ out of the thermal sums (phonopy's
        ``exclude_gamma_acoustic``, default True here): their frequency is zero up to numerical
        noise, so otherwise each adds a spurious ``kB`` to Cv and a ``kB T ln(h nu / kB T)`` term
        to F that depend on the noise (and on float32 vs float64) and vanish only as the mesh grows.
    imaginary_tol_THz : float
        Modes below ``-imaginary_tol_THz`` count as imaginary.
    subtract_residual_forces, symmetrize_fc, fc_calculator
        See the module notes; ``fc_calculator`` is passed to ``produce_force_constants``.
    relax_input : bool
        Relax each structure first (:func:`batchmd.ase.relax`, ``relax_cell`` "fixed" or
        "full", ``fmax`` eV/Å, ``max_steps``, ``optimizer``), all structures in one batched
        run; one that does not converge is a failed result.
    device, dtype, max_atoms, hooks
        As :func:`batchmd.ase.run_frames` (``max_atoms``: atom budget of the live batch).
    progress : bool
        Show a progress line on stderr (:class:`~batchmd.progress.ProgressHook`).
    on_result : callable, optional
        ``on_result(result)`` is called with each structure's :class:`PhononResult` as soon as
        it is complete (failed ones first, then one by one as phonopy finishes each).

    Returns
    -------
    list of PhononResult
        One per structure, in input order. A structure whose relaxation or any supercell
        evaluation failed (non-finite), or that phonopy could not process, has ``ok=False``
        and a one-line ``error``; the others are unaffected.

    Raises
    ------
    ImportError
        phonopy is not installed (the ``phonons`` extra).
    ValueError
        One line, before anything runs: a structure without a 3-D periodic cell, bad
        options (supercell matrix, mesh, displacement, temperatures, band path); and the
        up-front refusals of :func:`batchmd.ase.run_frames` (e.g. elements the model has no
        parameters for, naming the first structure holding one as ``(frame k)``).
    """
    phonopy = _require_phonopy()
    structures = check_periodic(structures, "compute_phonons")
    temps = _check_options(displacement, temperatures, float(imaginary_tol_THz), mesh)
    if not (isinstance(band_path, (list, tuple)) or band_path in ("auto", "seekpath", "ase", None)):
        raise ValueError(f"compute_phonons: band_path must be 'auto', 'seekpath', 'ase', None or a list of "
                         f"paths, got {band_path!r}")
    if band_path == "seekpath":
        try:
            import seekpath  # noqa: F401
        except ImportError:
            raise ImportError("compute_phonons: band_path='seekpath' needs the seekpath package "
                              "(pip install seekpath); band_path='ase' needs nothing more") from None
    matrices = _supercell_matrices(structures, supercell_matrix, min_length)
    _check_species(structures, model)
    results = [PhononResult(index=i, formula=atoms.get_chemical_formula(), n_atoms=len(atoms), supercell_matrix=matrix)
               for i, (atoms, matrix) in enumerate(zip(structures, matrices))]
    with progress_hooks(hooks, progress) as run_hooks:
        run_kw = dict(device=device, dtype=dtype, max_atoms=max_atoms, hooks=run_hooks)
        cells = list(structures)
        if relax_input:
            cells = _relax(structures, model, results, relax_cell, fmax, max_steps, optimizer, run_kw)
        for res in results:
            if not res.ok and on_result is not None:
                on_result(res)
        # 1. phonopy: supercells and displacements, per structure
        plans = {}
        for res, atoms in zip(results, cells):
            if not res.ok:
                continue
            try:
                with warnings.catch_warnings():  # "auto" is our explicit choice, not phonopy's default
                    warnings.filterwarnings("ignore", message=".*primitive_matrix defaulted.*")
                    ph = phonopy.Phonopy(_phonopy_atoms(atoms), supercell_matrix=res.supercell_matrix,
                                         primitive_matrix="P" if primitive is None else primitive, log_level=0)
                ph.generate_displacements(distance=displacement)
                frames = ([_to_ase(ph.supercell)] if subtract_residual_forces else []) + \
                    [_to_ase(c) for c in ph.supercells_with_displacements]
            except Exception as error:  # phonopy refused this structure: its result alone
                res.ok, res.error = False, f"phonopy setup: {type(error).__name__}: {error}".splitlines()[0]
                if on_result is not None:
                    on_result(res)
                continue
            res.phonopy = ph
            res.n_displacements = len(ph.supercells_with_displacements)
            res.n_supercell_atoms = len(ph.supercell)
            plans[res.index] = frames
        # 2. batchmd: every frame of every structure, one batched single-point run
        flat = [frame for frames in plans.values() for frame in frames]
        evaluated = evaluate_frames(flat, model, **run_kw)
    # 3. phonopy: force constants and everything after, per structure (each result handed over when done)
    start = 0
    for index, frames in plans.items():
        res = results[index]
        mine = evaluated[start:start + len(frames)]
        start += len(frames)
        _finish(res, mine, subtract_residual_forces, symmetrize_fc, fc_calculator, mesh, band_path,
                band_npoints, temps, float(imaginary_tol_THz), exclude_gamma_acoustic)
        if on_result is not None:
            on_result(res)
    return results


def _check_species(structures, model) -> None:
    """Elements the model has no parameters for, refused before anything runs (naming the structure)."""
    from batchmd.ase_checks import _check_species_up_front
    from batchmd.dynamics import FIRE

    if structures:
        _check_species_up_front(structures, [FIRE(model, n_steps=0)])


def _relax(structures, model, results, relax_cell, fmax, max_steps, optimizer, run_kw) -> list[Atoms]:
    relaxed, problems = relax_inputs(structures, model, cell=relax_cell, fmax=fmax, max_steps=max_steps,
                                     optimizer=optimizer, **run_kw)
    for res, problem in zip(results, problems):
        if problem is not None:
            res.ok, res.error = False, problem
    return [Atoms(a.get_chemical_symbols(), cell=a.cell, positions=a.positions, pbc=True, masses=s.get_masses())
            for a, s in zip(relaxed, structures)]


def _finish(res, frames, subtract, symmetrize_fc, fc_calculator, mesh, band_path, band_npoints, temps, tol,
            exclude_gamma_acoustic):
    ph = res.phonopy
    names = (["perfect supercell"] if subtract else []) + \
        [f"displacement {k} of {res.n_displacements}" for k in range(res.n_displacements)]
    for name, frame in zip(names, frames):
        error = _frame_error(frame, name)
        if error is not None:
            res.ok, res.error = False, error
            return
    forces = np.array([f.get_forces() for f in frames], dtype=np.float64)
    if subtract:
        residual, forces = forces[0], forces[1:] - forces[0]
        res.residual_force_max_eV_A = float(np.linalg.norm(residual, axis=1).max())
    try:
        ph.forces = forces
        ph.produce_force_constants(fc_calculator=fc_calculator, show_drift=False)
        if symmetrize_fc:
            ph.symmetrize_force_constants()
        res.force_constants = np.array(ph.force_constants)
        ph.run_qpoints([[0.0, 0.0, 0.0]])
        res.gamma_frequencies = np.array(ph.qpoints.frequencies[0])
        ph.run_mesh(mesh, is_gamma_center=True)
        res.mesh_qpoints, res.mesh_weights = np.array(ph.mesh.qpoints), np.array(ph.mesh.weights)
        res.mesh_frequencies = np.array(ph.mesh.frequencies)
        res.mesh_numbers = np.array(ph.mesh.mesh_numbers)
        ph.run_total_dos()
        res.dos_frequencies, res.dos = np.array(ph.total_dos.frequency_points), np.array(ph.total_dos.dos)
        _thermal(ph, temps, exclude_gamma_acoustic)
        t, free, entropy, cv = ph.thermal_properties.thermal_properties
        res.temperatures, res.free_energy_kJ_mol = np.array(t), np.array(free)
        res.entropy_J_K_mol, res.heat_capacity_J_K_mol = np.array(entropy), np.array(cv)
        if band_path is not None:
            _bands(res, ph, band_path, band_npoints)
    except Exception as error:  # phonopy failed on this structure: its result alone
        res.ok, res.error = False, f"phonopy: {type(error).__name__}: {error}".splitlines()[0]
        return
    lowest = [res.gamma_frequencies.min(), res.mesh_frequencies.min()]
    if res.band_frequencies:
        lowest.append(min(f.min() for f in res.band_frequencies))
    res.min_freq_THz = float(min(lowest))
    res.imaginary_tol_THz = tol
    res.n_imaginary = int(np.sum((res.mesh_frequencies < -tol) * res.mesh_weights[:, None]))
    res.n_imaginary_gamma = int(np.sum(res.gamma_frequencies < -tol))


def _thermal(ph, temps, exclude_gamma_acoustic):
    import inspect

    kwargs = {}
    if "exclude_gamma_acoustic" in inspect.signature(ph.run_thermal_properties).parameters:
        kwargs["exclude_gamma_acoustic"] = bool(exclude_gamma_acoustic)  # older phonopy: cut off by frequency
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*acoustic mode.*at Gamma.*")  # our documented choice
        ph.run_thermal_properties(temperatures=temps, **kwargs)


def _bands(res, ph, band_path, npoints):
    from phonopy.phonon.band_structure import get_band_qpoints_and_path_connections

    source = band_path
    if band_path == "auto":
        try:
            import seekpath  # noqa: F401
            source = "seekpath"
        except ImportError:
            source = "ase"
    if source == "seekpath":
        from phonopy.phonon.band_structure import get_band_qpoints_by_seekpath

        qpoints, labels, connections = get_band_qpoints_by_seekpath(ph.primitive, npoints, is_const_interval=True)
    else:
        if source == "ase":
            paths, names = _ase_paths(ph.primitive.cell)
        else:
            paths, names = [np.asarray(p, dtype=float) for p in band_path], None
            source = "given"
            if any(p.ndim != 2 or p.shape[1] != 3 or len(p) < 2 for p in paths):
                raise ValueError("band_path: each path needs at least two reduced q-points of 3 components")
        qpoints, connections = get_band_qpoints_and_path_connections(paths, npoints=npoints)
        labels = [label for path in names for label in path] if names is not None else None
    ph.run_band_structure(qpoints, path_connections=connections, labels=labels)
    bs = ph.band_structure
    res.band_qpoints = [np.array(q) for q in bs.qpoints]
    res.band_distances = [np.array(d) for d in bs.distances]
    res.band_frequencies = [np.array(f) for f in bs.frequencies]
    res.band_connections = list(connections)
    res.band_labels = _segment_labels(labels, connections, len(qpoints))
    res.band_path_source = source


def _segment_labels(labels, connections, n_segments):
    """(start, end) label per segment from phonopy's flat label list (None where unknown)."""
    if not labels:
        return [(None, None)] * n_segments
    out, k = [], 0
    for seg in range(n_segments):
        start = labels[k]
        end = labels[k + 1] if k + 1 < len(labels) else None
        out.append((start, end))
        k += 1 if connections[seg] else 2
    return out


def _ase_paths(cell):
    """Connected paths of special points (reduced coordinates of ``cell``'s reciprocal basis) from ASE's bandpath."""
    from ase.cell import Cell
    from ase.dft.kpoints import parse_path_string

    bp = Cell(np.array(cell)).bandpath(npoints=0)
    points = bp.special_points
    paths, names = [], []
    for path in parse_path_string(bp.path):
        paths.append(np.array([points[name] for name in path], dtype=float))
        names.append(["$\\Gamma$" if name == "G" else name for name in path])
    return paths, names

