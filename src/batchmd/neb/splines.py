"""ASE's ``spline`` and ``string`` NEB methods, per band on the host (used by :class:`~batchmd.neb.forces.NEBForces`).

Both methods of ``ase.mep.NEB`` (ASE 3.29, ``BaseSplineMethod``, ``SplineMethod``,
``StringMethod``; without preconditioning, ``precon=None``) fit a cubic spline
(``scipy.interpolate.CubicSpline``, not-a-knot) of the image positions over the cumulative
minimum-image path length scaled to [0, 1] (``ase.optimize.precon.PreconImages`` with the
identity preconditioner; Makri, Ortner and Kermode, J. Chem. Phys. 150, 094109 (2019)):

- the tangent of image ``i`` is the spline's derivative at its knot ``s_i``, normalised;
- ``spline`` adds the spring force ``k / n_images^2 * (x''(s_i) . tau) tau`` (Eq. 9 of
  that paper) to the perpendicular force;
- ``string`` has no spring: after every optimizer step, ASE's ``NEB.set_positions`` calls
  ``StringMethod.adjust_positions``, which re-places the moving images equispaced along
  the spline through the stepped images (FixAtoms atoms keep their positions, as
  ``Atoms.set_positions`` applies the constraint).

This module calls ASE's own code for all of it: one ``PreconImages(None, images)`` per band
(kept across calls, so its spline cache -- refit only when ``s`` or the positions moved by
1e-6 or more -- behaves as in ASE), its ``spline`` / ``spline_fit`` and its per-image
identity preconditioners' ``norm`` / ``vdot`` (128-bit sums, as ASE), with the arithmetic of
``PreconImages.get_tangent`` / ``get_spring_force`` evaluated for all images of a band from
one spline lookup. It runs per band on the host (a Python loop over the spline/string bands
of the batch, one device-to-host copy of their positions per call); the other methods stay
fully vectorised.

Engine hook for ``string``: batchmd's optimizer writes the stepped positions into the band
batch and calls the model; :meth:`SplineBands.adjust` (called by ``NEBForces.forward``
before the potential is evaluated) re-places the images of every live string band whose
positions changed since its last evaluation (atom field ``neb_last_positions``) in place,
so the next optimizer step reads the adjusted positions, as ASE's optimizer reads
``NEB.get_positions()`` after ``set_positions`` adjusted them. The first evaluation (the
interpolated band, before any step) is not adjusted, as in ASE.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SPLINE", "STRING", "SplineBands"]

#: Method codes (indices into :data:`batchmd.neb.forces.METHODS`).
SPLINE, STRING = 3, 4


class SplineBands:
    """Per-band ASE ``PreconImages`` (identity preconditioner) for the spline and string methods."""

    def __init__(self) -> None:
        self._cache: dict = {}

    def prune(self, keys) -> None:
        """Forget the bands that left the batch."""
        keep = set(keys)
        for key in list(self._cache):
            if key not in keep:
                del self._cache[key]

    def _precon(self, key, batch, lay, s: int):
        """The band's ``PreconImages`` (built on first use; rebuilt if the band under ``key`` changed)."""
        from ase import Atoms
        from ase.optimize.precon.precon import PreconImages

        lo, hi = lay.band_rows[s]
        m = lay.n_moving[s]
        n = (hi - lo) // m
        first = batch["neb_initial"][lo:lo + n].detach().cpu().numpy()
        last = batch["neb_final"][lo:lo + n].detach().cpu().numpy()
        entry = self._cache.get(key)
        if entry is not None:
            images = entry.images
            if (len(images) == m + 2 and len(images[0]) == n and np.array_equal(images[0].positions, first)
                    and np.array_equal(images[-1].positions, last)):
                return entry
        numbers = batch.atomic_numbers[lo:lo + n].detach().cpu().numpy().reshape(-1)
        cell = batch.cell[s].detach().cpu().numpy()
        pbc = batch.pbc[s].detach().cpu().numpy()
        pos = batch.positions[lo:hi].detach().cpu().numpy().reshape(m, n, 3)
        images = [Atoms(numbers=numbers, positions=p, cell=cell, pbc=pbc) for p in [first, *pos, last]]
        entry = self._cache[key] = PreconImages(None, images)
        return entry

    def adjust(self, batch, lay, live: torch.Tensor) -> None:
        """String bands: re-place stepped images equispaced along their spline (in place; see the module docstring)."""
        rows = [s for s in lay.string_bands if bool(live[s])]
        if not rows:
            return
        pos_all = batch.positions
        last_all = batch["neb_last_positions"]
        fixed_all = batch["fixed"].reshape(-1) if batch.has_field("fixed") else None
        for s in rows:
            lo, hi = lay.band_rows[s]
            pos = pos_all[lo:hi].detach().cpu().numpy()
            if np.array_equal(pos, last_all[lo:hi].detach().cpu().numpy()):
                continue  # not stepped since the last evaluation
            pre = self._precon(lay.band_keys[s], batch, lay, s)
            fit = pre.spline_fit(pos)  # ASE's StringMethod.adjust_positions
            new = fit.x(np.linspace(0.0, 1.0, lay.n_moving[s] + 2)[1:-1]).reshape(-1, 3)
            if fixed_all is not None:
                fixed = fixed_all[lo:hi].detach().cpu().numpy().astype(bool)
                new[fixed] = pos[fixed]  # FixAtoms, as Atoms.set_positions applies it
            new_t = torch.as_tensor(new, dtype=pos_all.dtype, device=pos_all.device)
            pos_all[lo:hi] = new_t
            last_all[lo:hi] = new_t

    def tangents(self, batch, lay, live: torch.Tensor):
        """Unit tangents and spline spring forces of the spline/string bands' rows.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            ``[N, 3]`` tangents (``PreconImages.get_tangent``) and ``[N, 3]`` spring forces
            (``PreconImages.get_spring_force`` for ``spline``; zero for ``string``); rows of
            other bands are zero.
        """
        pos_all = batch.positions
        tau = np.zeros(tuple(pos_all.shape))
        eta = np.zeros(tuple(pos_all.shape))
        k_all = batch["neb_k"].reshape(-1)
        for s in lay.spline_bands:
            if not bool(live[s]):
                continue
            lo, hi = lay.band_rows[s]
            m = lay.n_moving[s]
            n = (hi - lo) // m
            pre = self._precon(lay.band_keys[s], batch, lay, s)
            pos = pos_all[lo:hi].detach().cpu().numpy().reshape(m, n, 3)
            for j in range(m):
                pre.images[j + 1].positions[:] = pos[j]
            k = float(k_all[s])
            # PreconImages.get_tangent / get_spring_force for every image at once: one spline (cache) lookup
            # per band instead of one per image; the same arithmetic, image by image
            fit = pre.spline
            knots = fit.s[1:-1]
            d1 = fit.dx_ds(knots)
            d2 = fit.d2x_ds2(knots) if lay.methods[s] == SPLINE else None
            k_eff = 0.5 * (k + k) / ((m + 2) ** 2)
            for j in range(1, m + 1):
                precon = pre.precon[j]
                t = d1[j - 1].copy()
                t /= precon.norm(t)
                r = slice(lo + (j - 1) * n, lo + j * n)
                tau[r] = t.reshape(-1, 3)
                if d2 is not None:
                    eta[r] = (k_eff * precon.vdot(d2[j - 1].reshape(-1, 3), t.reshape(-1, 3)) * t).reshape(-1, 3)
        return (torch.as_tensor(tau, dtype=pos_all.dtype, device=pos_all.device),
                torch.as_tensor(eta, dtype=pos_all.dtype, device=pos_all.device))
