"""Up-front checks of input frames for :func:`batchmd.ase.run_frames` and the CLI.

Everything that can be known before a run starts is checked before it starts, with one-line
errors naming the input frame: the structure itself (:func:`~batchmd.ase.check_frames`), the species each
stage's model covers, per-frame temperatures and pressures (:func:`~batchmd.ase.frame_targets`). Imported
by :mod:`batchmd.ase`, which re-exports the public names.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ase import Atoms

__all__ = ["check_frames", "frame_problems", "frame_targets"]

def frame_problems(frames: Sequence[Atoms], min_distance: float = 0.1,
                   ignore_constraints: bool = False) -> dict[int, str]:
    """``{frame index: phrase}`` for every frame that cannot be run (see :func:`check_frames`)."""
    from batchmd.data.validate import atoms_problem

    problems = {}
    for index, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            problems[index] = f"is a {type(atoms).__name__}, not ase.Atoms"
            continue
        problem = atoms_problem(atoms, min_distance=min_distance, ignore_constraints=ignore_constraints)
        if problem is not None:
            problems[index] = problem
    return problems


def check_frames(frames: Sequence[Atoms], source: str = "input", min_distance: float = 0.1,
                 ignore_constraints: bool = False) -> None:
    """Raise ``ValueError`` naming the first bad frame and atom, in one line.

    The rules of :func:`batchmd.data.validate.atoms_problem` (shared with ``batchmd
    shard``): not Atoms, no atoms, unknown elements, NaN/inf coordinates, cell or momenta,
    bad masses, periodic directions without a lattice vector, zero-volume periodic cells,
    atoms closer than ``min_distance`` (Å; 0 disables), unsupported ASE constraints.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The structures to check.
    source : str
        Name used in the message (e.g. the file name).
    min_distance : float
        Smallest allowed interatomic distance, Å.
    ignore_constraints : bool
        Accept (and later drop) ASE constraints other than ``FixAtoms``.

    Example: ``"input: frame 1 has non-finite (NaN/inf) momenta (atom 5) (and 2 more bad frames)"``.
    """
    if len(frames) == 0:
        raise ValueError(f"{source}: no frames")
    problems = frame_problems(frames, min_distance, ignore_constraints)
    if problems:
        first = min(problems)
        more = f" (and {len(problems) - 1} more bad frames)" if len(problems) > 1 else ""
        raise ValueError(f"{source}: frame {first} {problems[first]}{more}")


def _check_species_up_front(frames, stages) -> None:
    """Every stage's model covers every element of ``frames``, checked before anything runs.

    Raises :class:`~batchmd.models.base.UnsupportedSpeciesError` naming the elements and the
    first frame holding one (``input_index``), so no result is computed only to be lost.
    """
    import numpy as np

    for stage in stages:
        model = getattr(stage, "model", None)
        if getattr(model, "supported_numbers", None) is None or not hasattr(model, "check_species"):
            continue
        try:
            model.check_species(np.unique(np.concatenate([a.numbers for a in frames])))
        except ValueError as error:
            bad = set(getattr(error, "unsupported", ()))
            first = next((i for i, a in enumerate(frames) if bad & set(a.numbers.tolist())), None)
            if first is not None:
                error.args = (f"{error.args[0]} (frame {first})", *error.args[1:])
            raise


def frame_targets(frames: Sequence[Atoms], temperature=None, pressure=None) -> tuple:
    """Each frame's own thermostat and barostat targets: ``(temperatures K [n], pressures eV/Å^3 [n])``.

    A frame's target is ``temperature[i]`` / ``pressure[i]`` when given, else its
    ``atoms.info["temperature_K"]`` (K) / ``atoms.info["pressure_GPa"]`` (GPa), else NaN
    (none: the stages' own temperature and pressure apply).

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The structures.
    temperature : sequence of float, optional
        One temperature per frame, K (> 0; NaN or None: the frame's info key, else the stage's).
    pressure : sequence of float, optional
        One pressure per frame, **eV/Å^3** (``ase.units.GPa`` per GPa; NaN or None as above).

    Returns
    -------
    tuple of numpy.ndarray
        ``(temperatures, pressures)``, float64 ``[len(frames)]`` each, NaN where none.

    Raises
    ------
    ValueError
        One line naming the frame: a sequence whose length is not ``len(frames)``, a value
        that is not a number (a string), an infinite value, a temperature <= 0, or a bad
        info key (see :func:`batchmd.data.ase_convert.info_targets`).
    """
    from batchmd.data.ase_convert import info_targets

    n = len(frames)
    out = []
    for name, values, unit, positive in (("temperature", temperature, "K", True),
                                         ("pressure", pressure, "eV/Å^3", False)):
        column = np.full(n, np.nan)
        if values is not None:
            if isinstance(values, torch.Tensor):
                values = values.detach().cpu().reshape(-1).tolist()
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
                raise ValueError(f"run_frames: {name} must be a sequence of {n} numbers ({unit}), one per frame, "
                                 f"got {values!r}")
            if len(values) != n:
                raise ValueError(f"run_frames: {name} has {len(values)} values for {n} frames (one per frame, {unit})")
            for i, value in enumerate(values):
                if value is None:
                    continue
                if isinstance(value, (bool, np.bool_, str, bytes)) or not isinstance(value, (int, float, np.number)):
                    raise ValueError(f"run_frames: {name} of frame {i} is {value!r}, not a number ({unit})")
                value = float(value)
                if np.isinf(value) or (positive and value <= 0):
                    raise ValueError(f"run_frames: {name} of frame {i} is {value!r}, not a finite number"
                                     f"{' > 0' if positive else ''} ({unit})")
                column[i] = value
        out.append(column)
    for i, atoms in enumerate(frames):
        try:
            own = info_targets(atoms.info)
        except ValueError as error:
            raise ValueError(f"frame {i}: {error}") from None
        for column, value in zip(out, own):
            if value is not None and np.isnan(column[i]):
                column[i] = value
    return out[0], out[1]


def _refuse_slot_tensors(stages) -> None:
    """Stage parameters given as tensors are indexed by live-batch slot, which run_frames chooses: refuse them."""
    for k, stage in enumerate(stages):
        owners = [stage] + ([stage.cell_filter] if getattr(stage, "cell_filter", None) is not None else [])
        for owner in owners:
            for name in ("temperature", "pressure", "scalar_pressure"):
                if isinstance(getattr(owner, name, None), torch.Tensor):
                    plain = name.replace("scalar_", "")
                    raise ValueError(
                        f"run_frames: stage {k} ({type(stage).__name__}) has {name} as a tensor, which is indexed by "
                        f"live-batch slot, not by frame; give one value per frame as run_frames({plain}=[...]) or "
                        "in atoms.info['temperature_K'] (K) / atoms.info['pressure_GPa'] (GPa)")

