"""Averages of thermo-log columns with error bars from the statistical inefficiency (pymbar).

For a correlated series ``x_1..x_n`` (one system's rows of one column), the standard
error of the mean is ``sqrt(var(x) g / n)``, where ``g = 1 + 2 tau`` is the statistical
inefficiency (``tau``: integrated autocorrelation time in samples), estimated with
:func:`pymbar.timeseries.statistical_inefficiency` (J. D. Chodera et al., J. Chem. Theory
Comput. 3, 26 (2007); Flyvbjerg and Petersen, J. Chem. Phys. 91, 461 (1989) for the idea).
``discard="auto"`` drops the leading non-equilibrated rows with pymbar's
:func:`~pymbar.timeseries.detect_equilibration` (J. D. Chodera, J. Chem. Theory Comput.
12, 1799 (2016): the start that maximises the number of uncorrelated samples).

pymbar was chosen because it is the maintained reference implementation of both
estimators (used by OpenMM, openmmtools and alchemlyb), with the tested fallbacks for
short and constant series that a hand-written autocorrelation sum lacks.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Average", "average", "series", "timeseries"]


@dataclass
class Average:
    """Mean of a thermo-log column with its standard error.

    Attributes
    ----------
    mean, sem : float
        In the column's unit (its name says it: ``_K``, ``_eV``, ``_GPa``, ``_A3``, ``_g_cm3``).
    statistical_inefficiency : float
        ``g >= 1``: the number of rows per uncorrelated sample.
    n_samples : int
        Rows averaged (after ``discard``).
    n_discarded : int
        Leading rows dropped.
    column : str
    system_id : int
    stage : int or None
    """

    mean: float
    sem: float
    statistical_inefficiency: float
    n_samples: int
    n_discarded: int
    column: str
    system_id: int
    stage: int | None

    @property
    def n_effective(self) -> float:
        """Uncorrelated samples ``n / g``."""
        return self.n_samples / self.statistical_inefficiency

    def __str__(self) -> str:
        return (f"{self.column} of system {self.system_id}: {self.mean:.6g} +/- {self.sem:.2g} "
                f"({self.n_samples} rows, g = {self.statistical_inefficiency:.3g})")


def timeseries():
    """``pymbar.timeseries``, imported with pymbar's import-time notices (JAX, timeseries caveat) silenced."""
    logger = logging.getLogger("pymbar")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(None):
            from pymbar import timeseries as module
    finally:
        logger.setLevel(level)
    return module


def _table(log):
    if isinstance(log, (str, Path)):
        from batchmd.trajectory import read_thermo

        return read_thermo(log)
    if hasattr(log, "column_names"):
        return log
    raise ValueError(f"log must be a thermo log path or a pyarrow.Table (read_thermo), got {type(log).__name__}")


def series(log, system_id: int, column: str, stage=-1) -> dict:
    """One system's rows of a thermo log: ``{"step", "time_fs", "stage", column}`` as numpy arrays.

    ``stage``: -1 (default) the last stage logged for the system, an int that stage, None
    every row. ``ValueError`` for an unknown column, a system not in the log or a stage
    without rows.
    """
    table = _table(log)
    if column not in table.column_names:
        raise ValueError(f"no column {column!r} in the thermo log: choose from {', '.join(table.column_names)}")
    ids = table.column("system_id").to_numpy()
    rows = np.nonzero(ids == int(system_id))[0]
    if not len(rows):
        present = np.unique(ids)
        span = f"ids {present[0]}..{present[-1]}" if len(present) else "no rows"
        raise ValueError(f"system {system_id} is not in the thermo log ({len(present)} systems, {span})")
    stages = table.column("stage").to_numpy()[rows]
    if stage is not None:
        chosen = int(stages.max()) if stage == -1 else int(stage)
        keep = stages == chosen
        if not keep.any():
            raise ValueError(f"system {system_id} has no row of stage {chosen} in the thermo log "
                             f"(stages {', '.join(str(s) for s in np.unique(stages))})")
        rows = rows[keep]
    order = np.lexsort((table.column("stage").to_numpy()[rows], table.column("step").to_numpy()[rows]))
    rows = rows[order]
    out = {name: table.column(name).to_numpy()[rows] for name in ("step", "time_fs", "stage")}
    out[column] = table.column(column).to_numpy()[rows].astype(np.float64)
    return out


def average(log, system_id: int, column: str, discard=0, stage=-1) -> Average:
    """Mean and standard error of one system's thermo-log column.

    Parameters
    ----------
    log : path or pyarrow.Table
        A thermo log (:class:`batchmd.trajectory.ThermoLogHook`, ``batchmd md --log-every``)
        or its table (:func:`batchmd.trajectory.read_thermo`).
    system_id : int
        The system.
    column : str
        E.g. ``temperature_K``, ``potential_energy_eV``, ``pressure_GPa``, ``volume_A3``.
    discard : int, float or "auto"
        Leading rows dropped (equilibration): an int is a number of rows, a float in
        [0, 1) a fraction of the rows, ``"auto"`` pymbar's ``detect_equilibration``.
    stage : int or None
        -1 (default) the last stage logged for the system; an int that stage; None every row.

    Returns
    -------
    Average
        ``mean``, ``sem``, ``statistical_inefficiency``, ``n_samples``, ``n_discarded``.

    Raises
    ------
    ValueError
        Unknown column, a system not in the log, NaN values (a column not defined for this
        run, e.g. pressure without stress), fewer than 2 rows after ``discard``, bad ``discard``.

    Notes
    -----
    ``sem = std(x, ddof=1) sqrt(g / n)`` with ``g`` from
    :func:`pymbar.timeseries.statistical_inefficiency` (a constant series: g = 1, sem = 0).
    """
    data = series(log, system_id, column, stage)
    x = data[column]
    if np.isnan(x).any():
        raise ValueError(f"{column} of system {system_id} is NaN in {int(np.isnan(x).sum())} of {len(x)} rows "
                         "(not defined for this stage: e.g. pressure without stress, temperature in an optimizer)")
    ts = timeseries()
    n = len(x)
    if discard == "auto":
        if n < 3:
            raise ValueError(f"{column} of system {system_id}: {n} rows; discard='auto' needs at least 3")
        start = int(ts.detect_equilibration(x)[0]) if np.ptp(x) > 0 else 0
    elif isinstance(discard, (bool, np.bool_)) or not isinstance(discard, (int, float, np.integer, np.floating)):
        raise ValueError(f"discard must be a number of rows (int), a fraction in [0, 1) (float) or 'auto', "
                         f"got {discard!r}")
    elif isinstance(discard, (float, np.floating)):
        if not 0.0 <= discard < 1.0:
            raise ValueError(f"discard={discard!r}: a float is a fraction of the rows, in [0, 1)")
        start = int(np.floor(discard * n))
    else:
        if discard < 0:
            raise ValueError(f"discard={discard!r}: a number of rows must be >= 0")
        start = int(discard)
    kept = x[start:]
    if len(kept) < 2:
        raise ValueError(f"{column} of system {system_id}: {len(kept)} rows left after discarding {start} of {n}; "
                         "an average with an error bar needs at least 2 (log more often, or discard less)")
    if np.ptp(kept) == 0:
        g, sem = 1.0, 0.0
    else:
        g = float(ts.statistical_inefficiency(kept))
        sem = float(np.std(kept, ddof=1) * np.sqrt(g / len(kept)))
    chosen = None if stage is None else int(np.unique(data["stage"])[0])
    return Average(mean=float(kept.mean()), sem=sem, statistical_inefficiency=g, n_samples=len(kept),
                   n_discarded=start, column=column, system_id=int(system_id), stage=chosen)
