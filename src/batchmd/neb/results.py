"""Per-band results: :class:`BandResult` (energies, barriers, transition state), plots, image files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["BandResult", "plot_band", "write_images"]


@dataclass
class BandResult:
    """The outcome of one band.

    Attributes
    ----------
    band_id : object
        The band's name (its index in the input unless given).
    index : int
        Its position in the input list.
    images : list of ase.Atoms
        Every image, endpoints included, at the final positions; each with a single-point
        calculator holding its energy (eV) and, for moving images, its unconstrained forces
        (eV/Å) (endpoints: the energy evaluated once), and ``info["neb_band"]``,
        ``info["neb_image"]``.
    energies : numpy.ndarray
        ``[n_images]`` image energies along the path, eV.
    status : str
        ``"converged"``, ``"out_of_steps"`` or ``"failed"``.
    n_steps : int
        Optimizer steps taken (ASE's ``opt.nsteps``).
    fmax : float
        Largest NEB force on any atom of the band at the end, eV/Å (NaN if unknown).
    error : str or None
        Why the band failed (one line), else None.
    """

    band_id: object
    index: int
    images: list
    energies: np.ndarray
    status: str
    n_steps: int
    fmax: float
    error: str | None = None
    params: dict = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    @property
    def ts_index(self) -> int | None:
        """Index of the highest-energy image (the transition-state estimate), or None."""
        e = np.asarray(self.energies, dtype=float)
        if e.size == 0 or not np.isfinite(e).all():
            return None
        return int(np.argmax(e))

    @property
    def barrier_forward(self) -> float:
        """``max(E) - E[0]``, eV (NaN when the energies are not all finite)."""
        e = np.asarray(self.energies, dtype=float)
        return float(e.max() - e[0]) if e.size and np.isfinite(e).all() else float("nan")

    @property
    def barrier_backward(self) -> float:
        """``max(E) - E[-1]``, eV."""
        e = np.asarray(self.energies, dtype=float)
        return float(e.max() - e[-1]) if e.size and np.isfinite(e).all() else float("nan")

    @property
    def reaction_energy(self) -> float:
        """``E[-1] - E[0]``, eV."""
        e = np.asarray(self.energies, dtype=float)
        return float(e[-1] - e[0]) if e.size and np.isfinite(e[[0, -1]]).all() else float("nan")

    def row(self) -> dict:
        """A flat row (units in the column names) for CSV/JSON."""
        def num(x):
            return None if x is None or not np.isfinite(x) else float(x)

        return {"band": str(self.band_id), "index": int(self.index), "status": self.status,
                "converged": self.converged, "n_steps": int(self.n_steps), "n_images": len(self.energies),
                "barrier_forward_eV": num(self.barrier_forward), "barrier_backward_eV": num(self.barrier_backward),
                "reaction_energy_eV": num(self.reaction_energy), "ts_image": self.ts_index,
                "fmax_eV_A": num(self.fmax),
                "energies_eV": " ".join(f"{x:.10g}" for x in np.asarray(self.energies, dtype=float)),
                **{k: v for k, v in self.params.items()}, "error": self.error}


def plot_band(result: BandResult, path) -> None:
    """Write the energy profile of ``result`` (relative to the initial image, eV) as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = np.asarray(result.energies, dtype=float)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    if e.size and np.isfinite(e[0]):
        ax.plot(np.arange(e.size), e - e[0], "o-")
        ts = result.ts_index
        if ts is not None:
            ax.plot([ts], [e[ts] - e[0]], "r*", ms=12, label=f"barrier {result.barrier_forward:.3f} eV")
            ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("image")
    ax.set_ylabel("E - E(initial) (eV)")
    ax.set_title(f"band {result.band_id} ({result.status})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_images(results, path, append: bool = False) -> None:
    """Write every image of every result to one file (format from the extension: extxyz, traj, ...)."""
    from ase.io import write

    frames = [atoms for r in results for atoms in r.images]
    if frames:
        write(str(Path(path)), frames, append=append)
