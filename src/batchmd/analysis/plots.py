"""PNG plots of thermo logs, RDFs and MSDs (matplotlib, no display needed).

Figures are built as :class:`matplotlib.figure.Figure` objects (no pyplot state, the Agg
canvas when saved), or drawn into axes you pass (``ax=``), so they work headless (CI,
ssh, the docs build) and inside your own figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_thermo", "plot_rdf", "plot_msd", "THERMO_PANELS"]

#: Panels of :func:`plot_thermo`: (label, columns drawn in it).
THERMO_PANELS = (
    ("temperature (K)", ("temperature_K",)),
    ("potential energy (eV)", ("potential_energy_eV",)),
    ("total energy (eV)", ("total_energy_eV", "conserved_energy_eV")),
    ("pressure (GPa)", ("pressure_GPa",)),
    ("volume (Å$^3$)", ("volume_A3",)),
)


def _figure(rows: int = 1, height: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, max(height, 1.9 * rows)), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, axes


def _axes(ax):
    """``(figure, axes)``: a new one-panel figure, or ``ax`` and its figure."""
    if ax is None:
        fig, (ax,) = _figure(1)
        return fig, ax
    return ax.figure, ax


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def _systems(systems) -> list:
    ids = [int(systems)] if np.ndim(systems) == 0 else [int(s) for s in systems]
    if not ids:
        raise ValueError("no system to plot (systems is empty)")
    return ids


def plot_thermo(log, systems, path=None, panels=THERMO_PANELS, stage=None):
    """T, energies, P and V against time for chosen systems of a thermo log.

    Parameters
    ----------
    log : path or pyarrow.Table
        A thermo log (:func:`batchmd.trajectory.read_thermo`).
    systems : int or sequence of int
        System ids, one line each.
    path : path, optional
        Write a PNG there.
    panels : sequence of (label, columns)
        Default :data:`THERMO_PANELS` (T; potential energy; total and conserved energy; P; V);
        a panel whose columns are NaN for every chosen system is left out.
    stage : int or None
        None (default): every row, against time (ps) when the log holds one stage, against
        the step otherwise (``time_fs`` restarts at every stage; stage starts dotted); -1:
        the last stage; an int: that stage.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        A system not in the log, or nothing to plot.
    """
    from batchmd.analysis.averages import _table, series

    table = _table(log)
    ids = _systems(systems)
    data = {s: {} for s in ids}
    for label, columns in panels:
        for column in columns:
            if column in table.column_names:
                for s in ids:
                    data[s][column] = series(table, s, column, stage)
    shown = []
    for label, cols in panels:
        keep = [c for c in cols if any(c in data[s] and np.isfinite(data[s][c][c]).any() for s in ids)]
        if keep:
            shown.append((label, keep))
    if not shown:
        raise ValueError("nothing to plot: every chosen column is NaN for these systems")
    first = data[ids[0]][shown[0][1][0]]
    multi_stage = any(len(np.unique(data[s][shown[0][1][0]]["stage"])) > 1 for s in ids)
    use_time = not multi_stage and np.isfinite(first["time_fs"]).all()
    fig, axes = _figure(len(shown))
    for ax, (label, cols) in zip(axes, shown):
        for s in ids:
            for column in cols:
                rows = data[s][column]
                x = rows["time_fs"] / 1000.0 if use_time else rows["step"]
                style = "--" if column == "conserved_energy_eV" else "-"
                name = f"system {s}" + (" (conserved)" if column == "conserved_energy_eV" else "")
                ax.plot(x, rows[column], style, label=name, lw=1.2)
        if multi_stage:
            rows = data[ids[0]][cols[0]]
            for k in np.nonzero(np.diff(rows["stage"]))[0]:
                ax.axvline(rows["step"][k + 1], color="0.6", ls=":", lw=1)
        ax.set_ylabel(label)
    axes[0].legend(fontsize="small", ncols=min(len(ids), 4))
    axes[-1].set_xlabel("time (ps)" if use_time else "step")
    return _save(fig, path)


def plot_rdf(results, path=None, ax=None):
    """g(r) curves (:func:`batchmd.analysis.rdf` results) on one axes.

    Parameters
    ----------
    results : RDF or sequence of RDF
    path : path, optional
        Write a PNG there (with ``ax``: its figure).
    ax : matplotlib.axes.Axes, optional
        Draw there instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    results = [results] if hasattr(results, "g") else list(results)
    fig, ax = _axes(ax)
    for res in results:
        pair = f" {res.elements[0]}-{res.elements[1]}" if res.elements else ""
        ax.plot(res.r, res.g, label=f"system {res.system_id}{pair} ({res.n_frames} frames)", lw=1.2)
    ax.axhline(1.0, color="0.6", ls=":", lw=1)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_msd(results, path=None, ax=None, diffusion=None):
    """MSD curves (:func:`batchmd.analysis.msd` results) against lag time (ps), with fitted lines.

    Parameters
    ----------
    results : MSD or sequence of MSD
    path : path, optional
        Write a PNG there.
    ax : matplotlib.axes.Axes, optional
        Draw there instead of a new figure.
    diffusion : Diffusion, optional
        :func:`batchmd.analysis.diffusion_coefficient` of the same systems: its fitted lines
        are drawn dashed over the fit window, D in the legend.

    Returns
    -------
    matplotlib.figure.Figure
    """
    results = [results] if hasattr(results, "msd_A2") else list(results)
    fig, ax = _axes(ax)
    fits = {}
    if diffusion is not None:
        fits = {s: (m, c) for s, m, c in zip(diffusion.system_ids, diffusion.slope_A2_fs, diffusion.intercept_A2)}
    for res in results:
        (line,) = ax.plot(res.lag_fs / 1000.0, res.msd_A2, lw=1.2, label=f"system {res.system_id}")
        if res.system_id in fits:
            slope, intercept = fits[res.system_id]
            t = np.linspace(*diffusion.fit_fs, 20)
            ax.plot(t / 1000.0, slope * t + intercept, "--", color=line.get_color(), lw=1,
                    label=f"D = {slope / 6 * 0.1:.3g} cm$^2$/s")
    ax.set_xlabel("lag (ps)")
    ax.set_ylabel("MSD (Å$^2$)")
    ax.legend(fontsize="small")
    return _save(fig, path)
