"""Mean squared displacement and the self-diffusion coefficient (tidynamics' FFT MSD, Einstein relation).

MSD(tau) = < |x_i(t + tau) - x_i(t)|^2 >, averaged over atoms i and every time origin t
of the chosen frames, computed per atom with :func:`tidynamics.msd` (the fast correlation
algorithm, O(T log T) over all origins; Calandrini et al., *Collection SFN* 12, 201
(2011); tidynamics: P. de Buyl, JOSS 3, 877 (2018)) and averaged over atoms.

Unwrapping: batchmd's integrators do not wrap positions, so stored positions are
continuous and used as stored. Frames written by other tools (or a future engine that
wraps) may jump by a lattice vector between consecutive frames; such jumps are detected
(a fractional displacement beyond 1/2 along a periodic direction) and removed by
accumulating the minimum-image displacement between consecutive frames
(``MSD.unwrapped`` says whether it was needed). That is exact as long as no atom moves
more than half a cell width between two recorded frames.

Diffusion: Einstein relation ``MSD(tau) -> 6 D tau`` (3-D), ``D`` = slope / 6 of a
least-squares line through the MSD over a fit window of lags (default 20% to 60% of the
longest lag: past the ballistic regime, before the few-origin noise of long lags). Units
Å^2/fs; 1 Å^2/fs = 0.1 cm^2/s. Error bars: the standard error over independent systems
(replicas) given together; a single trajectory's fit residual is no error bar (the MSD
points are correlated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from batchmd.analysis.frames import load_arrays

__all__ = ["MSD", "Diffusion", "msd", "msd_of_positions", "unwrap", "diffusion_coefficient", "fit_diffusion",
           "A2_FS_TO_CM2_S"]

#: 1 Å^2/fs in cm^2/s (1e-16 cm^2 / 1e-15 s).
A2_FS_TO_CM2_S = 0.1


@dataclass
class MSD:
    """Mean squared displacement of one system.

    Attributes
    ----------
    lag_fs : numpy.ndarray
        ``[T]`` time lags, fs (0, dt_frame, 2 dt_frame, ...).
    msd_A2 : numpy.ndarray
        ``[T]`` MSD, Å^2 (lag k averaged over the T - k origins and the atoms).
    system_id : int
    n_atoms : int
        Atoms averaged over (all, or those of ``elements``).
    unwrapped : bool
        Whether lattice-vector jumps were found in the stored positions and removed.
    stage : int or None
        The stage whose frames were used (None: every frame).
    """

    lag_fs: np.ndarray
    msd_A2: np.ndarray
    system_id: int
    n_atoms: int
    unwrapped: bool
    stage: int | None = None


@dataclass
class Diffusion:
    """Self-diffusion coefficient from the Einstein relation (mean over the systems given).

    Attributes
    ----------
    D_A2_fs, D_cm2_s : float
        The mean D over ``system_ids``, Å^2/fs and cm^2/s.
    sem_A2_fs, sem_cm2_s : float
        Standard error of that mean over the systems (std / sqrt(n), ddof 1); NaN for one system.
    per_system_A2_fs : numpy.ndarray
        ``[n]`` each system's D, Å^2/fs.
    fit_fs : tuple of float
        The fit window of lags (fs, inclusive).
    slope_A2_fs, intercept_A2 : numpy.ndarray
        ``[n]`` each system's fitted line ``MSD = slope tau + intercept``.
    system_ids : list of int
    """

    D_A2_fs: float
    D_cm2_s: float
    sem_A2_fs: float
    sem_cm2_s: float
    per_system_A2_fs: np.ndarray
    fit_fs: tuple
    slope_A2_fs: np.ndarray
    intercept_A2: np.ndarray
    system_ids: list


def unwrap(positions: np.ndarray, cells: np.ndarray, pbc) -> tuple[np.ndarray, bool]:
    """Remove lattice-vector jumps between consecutive frames.

    Parameters
    ----------
    positions : numpy.ndarray
        ``[T, N, 3]`` Å.
    cells : numpy.ndarray
        ``[T, 3, 3]`` Å (rows are lattice vectors).
    pbc : sequence of bool
        ``[3]`` periodic directions.

    Returns
    -------
    (numpy.ndarray, bool)
        The positions (the input array itself when no jump is found) and whether jumps were
        removed. Each step's displacement is taken in fractional coordinates of the later
        frame's cell and brought to its minimum image along periodic directions.
    """
    positions = np.asarray(positions)
    if len(positions) < 2:
        return positions, False
    periodic = np.asarray(pbc, dtype=bool)
    delta = np.diff(positions, axis=0)  # [T-1, N, 3]
    inverse = np.linalg.inv(cells[1:])  # [T-1, 3, 3]
    frac = np.einsum("tnj,tjk->tnk", delta, inverse)
    jumps = np.where(periodic, np.round(frac), 0.0)
    if not np.any(jumps):
        return positions, False
    delta = np.einsum("tnj,tjk->tnk", frac - jumps, cells[1:])
    out = np.empty_like(positions)
    out[0] = positions[0]
    out[1:] = positions[0] + np.cumsum(delta, axis=0)
    return out, True


def msd_of_positions(positions: np.ndarray) -> np.ndarray:
    """``[T]`` MSD (Å^2) of ``[T, N, 3]`` continuous positions: tidynamics' per-atom MSD averaged over atoms."""
    import tidynamics

    positions = np.asarray(positions, dtype=np.float64)
    per_atom = [tidynamics.msd(positions[:, i, :]) for i in range(positions.shape[1])]
    return np.mean(per_atom, axis=0)


def _uniform_lags(steps: np.ndarray, time_fs: np.ndarray, system_id: int) -> np.ndarray:
    if not np.all(np.isfinite(time_fs)):
        raise ValueError(f"system {system_id}: the chosen frames have no MD time (optimizer stage, or a store "
                         "written without time steps): choose an MD stage with stage=")
    gaps = np.diff(steps)
    if len(gaps) and (np.any(gaps != gaps[0]) or gaps[0] <= 0):
        raise ValueError(f"system {system_id}: the chosen frames are not evenly spaced in steps (gaps "
                         f"{sorted(set(gaps.tolist()))[:4]}); the MSD over time origins needs a constant interval "
                         "(choose one stage and a slice with a constant stride)")
    return time_fs - time_fs[0]


def msd(store, system_id: int, frames=None, stage=-1, elements=None, remove_com: bool = False) -> MSD:
    """Mean squared displacement of one system of a trajectory store.

    Parameters
    ----------
    store : path
        A trajectory store.
    system_id : int
        The system.
    frames : slice or sequence of int, optional
        Frames among those of ``stage`` (must stay evenly spaced in steps); default all.
    stage : int or None
        -1 (default): the last stage recorded for the system; an int: that stage; None: every
        frame (only if the time axis is continuous, e.g. a single MD stage).
    elements : str or sequence of str, optional
        Average over atoms of these elements only (default all atoms).
    remove_com : bool
        Subtract the mass-weighted centre-of-mass displacement of the system from every atom
        (thermostats such as Langevin let the centre of mass wander; NVE conserves it).

    Returns
    -------
    MSD
        ``lag_fs`` [T] (fs), ``msd_A2`` [T] (Å^2), ``unwrapped``.

    Raises
    ------
    ValueError
        The system was never recorded, fewer than 3 frames are chosen, frames are not evenly
        spaced or have no MD time, or no atom of ``elements``.

    Notes
    -----
    tidynamics' FFT MSD per atom, averaged over atoms; see the module docstring (unwrapping).
    """
    system_id = int(system_id)
    data = load_arrays(store, system_id, stage, frames)
    n_frames = len(data["step"])
    if n_frames < 3:
        raise ValueError(f"system {system_id}: {n_frames} frames chosen in {store}; the MSD needs at least 3 "
                         "(record more often: a smaller traj-every)")
    lags = _uniform_lags(data["step"], data["time_fs"], system_id)
    positions, unwrapped = unwrap(data["positions"], data["cell"], data["pbc"])
    if remove_com:
        from ase.data import atomic_masses

        masses = atomic_masses[data["numbers"]]
        com = np.einsum("tnk,n->tk", positions, masses) / masses.sum()
        positions = positions - com[:, None, :]
    mask = _element_mask(data["numbers"], elements, system_id)
    if mask is not None:
        positions = positions[:, mask]
    stages = np.unique(data["stage"])
    return MSD(lag_fs=lags, msd_A2=msd_of_positions(positions), system_id=system_id, n_atoms=positions.shape[1],
               unwrapped=unwrapped, stage=int(stages[0]) if len(stages) == 1 else None)


def _element_mask(numbers, elements, system_id):
    if elements is None:
        return None
    from ase.data import chemical_symbols
    from ase.symbols import symbols2numbers

    wanted = symbols2numbers([elements] if isinstance(elements, str) else list(elements))
    mask = np.isin(numbers, wanted)
    if not mask.any():
        have = ", ".join(chemical_symbols[z] for z in np.unique(numbers))
        raise ValueError(f"system {system_id} has no atom of {elements!r} (it holds {have})")
    return mask


def fit_diffusion(result: MSD, fit_fs=None) -> tuple[float, float, tuple]:
    """``(slope Å^2/fs, intercept Å^2, (t0, t1) fs)`` of the least-squares line through ``result`` over the window.

    ``fit_fs`` = ``(t0, t1)`` lags in fs (inclusive); default 20% to 60% of the longest lag.
    ``ValueError`` when the window holds fewer than 2 lags.
    """
    lags, values = result.lag_fs, result.msd_A2
    longest = float(lags[-1])
    if fit_fs is None:
        fit_fs = (0.2 * longest, 0.6 * longest)
    t0, t1 = (float(v) for v in fit_fs)
    if not t0 < t1:
        raise ValueError(f"fit window ({t0:g}, {t1:g}) fs: the start must be before the end")
    inside = (lags >= t0) & (lags <= t1)
    if inside.sum() < 2:
        raise ValueError(f"system {result.system_id}: the fit window ({t0:g}, {t1:g}) fs holds {int(inside.sum())} "
                         f"MSD points (lags 0..{longest:g} fs every {lags[1]:g} fs); widen it or record more frames")
    slope, intercept = np.polyfit(lags[inside], values[inside], 1)
    return float(slope), float(intercept), (t0, t1)


def diffusion_coefficient(store, system_ids, fit_fs=None, frames=None, stage=-1, elements=None,
                          remove_com: bool = False) -> Diffusion:
    """Self-diffusion coefficient ``D = slope / 6`` of the MSD (Einstein relation), over one or several systems.

    Parameters
    ----------
    store : path
        A trajectory store.
    system_ids : int or sequence of int
        One system, or independent replicas of one state point (D is their mean, with the
        standard error over them).
    fit_fs : (float, float), optional
        Fit window of lags, fs (inclusive); default 20% to 60% of the longest lag.
    frames, stage, elements, remove_com
        As :func:`msd`.

    Returns
    -------
    Diffusion
        ``D_A2_fs``, ``D_cm2_s``, ``sem_A2_fs``, ``sem_cm2_s`` (NaN for one system),
        ``per_system_A2_fs``, ``fit_fs``.

    Raises
    ------
    ValueError
        As :func:`msd`, or a fit window holding fewer than 2 MSD points.

    Notes
    -----
    Einstein relation (A. Einstein, Ann. Phys. 17, 549 (1905)); 1 Å^2/fs = 0.1 cm^2/s.
    """
    ids = [int(system_ids)] if np.ndim(system_ids) == 0 else [int(s) for s in system_ids]
    if not ids:
        raise ValueError("system_ids is empty")
    slopes, intercepts, window = [], [], None
    for system_id in ids:
        result = msd(store, system_id, frames=frames, stage=stage, elements=elements, remove_com=remove_com)
        slope, intercept, window = fit_diffusion(result, fit_fs if fit_fs is not None else window)
        slopes.append(slope)
        intercepts.append(intercept)
    per_system = np.asarray(slopes) / 6.0
    mean = float(per_system.mean())
    sem = float(per_system.std(ddof=1) / np.sqrt(len(ids))) if len(ids) > 1 else float("nan")
    return Diffusion(D_A2_fs=mean, D_cm2_s=mean * A2_FS_TO_CM2_S, sem_A2_fs=sem, sem_cm2_s=sem * A2_FS_TO_CM2_S,
                     per_system_A2_fs=per_system, fit_fs=window, slope_A2_fs=np.asarray(slopes),
                     intercept_A2=np.asarray(intercepts), system_ids=ids)
