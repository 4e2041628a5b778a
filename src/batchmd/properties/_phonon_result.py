"""The result of :func:`batchmd.properties.phonons.compute_phonons`: :class:`PhononResult` (row and plot)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PhononResult", "supercell_label"]


def supercell_label(matrix) -> str:
    """``"2x2x2"`` for a diagonal supercell matrix, else its 9 entries (row by row) joined by spaces."""
    if matrix is None:
        return ""
    matrix = np.asarray(matrix)
    if np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0:
        return "x".join(str(int(n)) for n in np.diag(matrix))
    return " ".join(str(int(n)) for n in matrix.reshape(-1))


@dataclass
class PhononResult:
    """Phonons of one structure (phonopy's finite displacements, forces from batchmd).

    Attributes
    ----------
    index : int
        Position of the structure in the input.
    formula : str
        Chemical formula of the input structure.
    ok : bool
        False when its relaxation, a supercell evaluation (non-finite) or phonopy failed.
    error : str or None
        One line naming what failed (e.g. ``"displacement 3 of 6: non-finite forces"``).
    n_atoms, n_supercell_atoms, n_displacements : int
        Atoms of the unit cell and of the supercell; displaced supercells phonopy generated.
    supercell_matrix : ndarray (3, 3) int
        The supercell of the unit cell.
    force_constants : ndarray (n_sc, n_sc, 3, 3)
        eV/Å^2, phonopy's full force constants (``Phonopy.force_constants``).
    residual_force_max_eV_A : float
        Largest atomic force of the perfect supercell (eV/Å), subtracted from the displaced
        forces (NaN when not evaluated).
    gamma_frequencies : ndarray (3 n_prim,)
        THz at Γ (negative: imaginary).
    mesh_numbers : ndarray (3,); mesh_qpoints (n_q, 3); mesh_weights (n_q,); mesh_frequencies (n_q, 3 n_prim)
        phonopy's irreducible mesh, frequencies THz.
    dos_frequencies, dos : ndarray (n_f,)
        Total DOS (phonopy's tetrahedron method): THz and states/THz per primitive cell
        (integrates to 3 n_prim).
    band_qpoints, band_distances, band_frequencies : list of ndarray, one per segment
        Reduced q-points (n, 3), path distance (n,), frequencies (n, 3 n_prim) THz.
    band_labels : list of (str, str)
        Start and end label of each segment; ``band_connections`` whether a segment joins
        the next; ``band_path_source`` "seekpath", "ase" or "given".
    temperatures : ndarray (n_T,)
        K.
    free_energy_kJ_mol, entropy_J_K_mol, heat_capacity_J_K_mol : ndarray (n_T,)
        Harmonic Helmholtz free energy (kJ/mol), entropy and Cv (J/K/mol), per mole of
        primitive cells, as phonopy's ``get_thermal_properties_dict`` reports them.
    min_freq_THz : float
        Lowest frequency at Γ, on the mesh and along the bands.
    n_imaginary, n_imaginary_gamma : int
        Modes below ``-imaginary_tol_THz`` on the full mesh (weights counted) and at Γ.
    imaginary_tol_THz : float
        The tolerance used.
    phonopy : phonopy.Phonopy
        The object itself (force constants set) for further phonopy calls.
    """

    index: int
    formula: str
    ok: bool = True
    error: str | None = None
    n_atoms: int = 0
    n_supercell_atoms: int = 0
    n_displacements: int = 0
    supercell_matrix: Any = None
    force_constants: Any = None
    residual_force_max_eV_A: float = float("nan")
    gamma_frequencies: Any = None
    mesh_numbers: Any = None
    mesh_qpoints: Any = None
    mesh_weights: Any = None
    mesh_frequencies: Any = None
    dos_frequencies: Any = None
    dos: Any = None
    band_qpoints: list = field(default_factory=list)
    band_distances: list = field(default_factory=list)
    band_frequencies: list = field(default_factory=list)
    band_labels: list = field(default_factory=list)
    band_connections: list = field(default_factory=list)
    band_path_source: str | None = None
    temperatures: Any = None
    free_energy_kJ_mol: Any = None
    entropy_J_K_mol: Any = None
    heat_capacity_J_K_mol: Any = None
    min_freq_THz: float = float("nan")
    n_imaginary: int | None = None
    n_imaginary_gamma: int | None = None
    imaginary_tol_THz: float = float("nan")
    phonopy: Any = field(default=None, repr=False)

    def thermal_rows(self) -> list[dict]:
        """The thermal properties as rows, one per temperature: ``T_K``, ``F_kJ_mol``, ``S_J_K_mol``,
        ``Cv_J_K_mol`` (per mole of primitive cells, as phonopy reports them); empty for a failed result."""
        if not self.ok or self.temperatures is None:
            return []
        return [{"T_K": float(t), "F_kJ_mol": float(f), "S_J_K_mol": float(s), "Cv_J_K_mol": float(cv)}
                for t, f, s, cv in zip(self.temperatures, self.free_energy_kJ_mol, self.entropy_J_K_mol,
                                       self.heat_capacity_J_K_mol)]

    def at_temperature(self, temperature: float) -> tuple[float, float, float]:
        """``(F kJ/mol, S J/K/mol, Cv J/K/mol)`` at ``temperature`` K, linearly interpolated
        between the computed temperatures (NaN outside their range or for a failed result)."""
        if not self.ok or self.temperatures is None:
            return (float("nan"),) * 3
        t = self.temperatures
        if temperature < t.min() - 1e-9 or temperature > t.max() + 1e-9:
            return (float("nan"),) * 3
        return tuple(float(np.interp(temperature, t, y))
                     for y in (self.free_energy_kJ_mol, self.entropy_J_K_mol, self.heat_capacity_J_K_mol))

    def row(self) -> dict:
        """Flat columns, units in the names: identity, ``ok``, ``error``, supercell, frequencies
        (``min_freq_THz``, ``max_freq_THz``), imaginary-mode counts and the thermal properties
        at 300 K (``F_300K_kJ_mol``, ``S_300K_J_K_mol``, ``Cv_300K_J_K_mol``); NaN/None for a
        failed result."""
        f, s, cv = self.at_temperature(300.0)
        ok = self.ok and self.mesh_frequencies is not None
        return {
            "index": self.index,
            "formula": self.formula,
            "ok": self.ok,
            "error": self.error,
            "n_atoms": self.n_atoms,
            "supercell": supercell_label(self.supercell_matrix),
            "n_supercell_atoms": self.n_supercell_atoms,
            "n_displacements": self.n_displacements,
            "min_freq_THz": self.min_freq_THz if ok else float("nan"),
            "max_freq_THz": float(self.mesh_frequencies.max()) if ok else float("nan"),
            "n_imaginary": self.n_imaginary if ok else None,
            "n_imaginary_gamma": self.n_imaginary_gamma if ok else None,
            "imaginary_tol_THz": self.imaginary_tol_THz,
            "residual_force_max_eV_A": self.residual_force_max_eV_A,
            "F_300K_kJ_mol": f,
            "S_300K_J_K_mol": s,
            "Cv_300K_J_K_mol": cv,
        }

    def plot(self, path) -> None:
        """Write the band structure (left) and the total DOS (right) as a PNG (matplotlib, Agg).

        Raises
        ------
        ValueError
            A failed result (nothing to plot).
        """
        if not self.ok or self.dos is None:
            raise ValueError(f"PhononResult.plot: structure {self.index} ({self.formula}) has no phonons: {self.error}")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        has_bands = bool(self.band_frequencies)
        fig, axes = plt.subplots(1, 2 if has_bands else 1, figsize=(8 if has_bands else 4, 4), sharey=True,
                                 gridspec_kw={"width_ratios": [3, 1]} if has_bands else None, squeeze=False)
        axes = axes[0]
        if has_bands:
            ax = axes[0]
            ticks, labels, offset = [], [], 0.0
            for k, (dist, freq) in enumerate(zip(self.band_distances, self.band_frequencies)):
                x = dist - dist[0] + offset
                ax.plot(x, freq, color="C0", lw=1)
                start, end = self.band_labels[k] if k < len(self.band_labels) else (None, None)
                if not ticks or abs(ticks[-1] - x[0]) > 1e-12:
                    ticks.append(x[0])
                    labels.append(start or "")
                elif start and labels[-1] != start:
                    labels[-1] = f"{labels[-1]}|{start}"
                ticks.append(x[-1])
                labels.append(end or "")
                offset = x[-1]
            ax.set_xticks(ticks)
            ax.set_xticklabels(labels)
            for t in ticks:
                ax.axvline(t, color="0.8", lw=0.5)
            ax.axhline(0.0, color="0.5", lw=0.5, ls="--")
            ax.set_xlim(0, offset)
            ax.set_ylabel("frequency (THz)")
            ax.set_title(f"{self.formula}: phonon bands")
        ax = axes[-1]
        ax.plot(self.dos, self.dos_frequencies, color="C1")
        ax.set_xlabel("DOS (states/THz)")
        if not has_bands:
            ax.set_ylabel("frequency (THz)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
