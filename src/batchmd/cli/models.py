"""The ``--model`` option: building the model a command runs, and checking it fits the input.

``--model`` takes any spec of :mod:`batchmd.models.registry` (``lj``, ``emt``,
``sevennet-0``, ``mace:PATH``, ``metatomic:PATH``, ...). The default, ``lj``, is
Lennard-Jones with per-element presets (:data:`batchmd.models.lj.LJ_PRESETS`: the noble
gases), Lorentz-Berthelot mixing and a cutoff of 3 x the largest sigma -- exactly
``LennardJones(species=[elements of the input])``. ``--sigma``/``--epsilon`` instead give
one parameter pair for every element (your choice, not checked).

A model is only applied to elements it has parameters for: otherwise the command stops
before running with one line naming the elements and the models that cover them (exit 2).
Every output frame records the model (``model`` and its parameters, or its file and
checksum) in its info, and the end-of-run summary names it.

What a model package prints while it is imported or loaded (MACE's "cuequivariance ... is
not available" line) is logged at INFO level (shown with ``-v``), never printed otherwise.
A file that is not a model of the kind named (``--model mace:structure.cif``,
``--model sevennet:mace.model``) is one error line naming the file (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import math

from batchmd.cli.errors import CLIError

__all__ = ["add_model_arguments", "build_model", "model_text", "neighbor_capacity"]

#: Built-in models and the elements they cover, for the "models covering ..." hint.


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--sigma``, ``--epsilon``, ``--cutoff``."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="lj",
                       help="lj (noble-gas Lennard-Jones presets), emt (ASE's EMT), sevennet-0, mace:PATH, "
                            "metatomic:PATH, ... (default: lj)")
    group.add_argument("--sigma", type=float, default=None,
                       help="LJ sigma, Å, one value for every element (default: per-element presets)")
    group.add_argument("--epsilon", type=float, default=None,
                       help="LJ epsilon, eV, one value for every element (default: per-element presets)")
    group.add_argument("--cutoff", type=float, default=None, help="LJ cutoff, Å (default: 3 x the largest sigma)")


def neighbor_capacity(frames, cutoff: float, skin: float = 1.0) -> int:
    """Neighbors per atom to allocate for ``frames`` (1.5x the densest frame's estimate + 16)."""
    reach = 4.0 / 3.0 * math.pi * (cutoff + skin) ** 3
    worst = 1
    for atoms in frames:
        if atoms.pbc.all() and atoms.cell.rank == 3:
            worst = max(worst, int(len(atoms) / atoms.cell.volume * reach) + 1)
        else:
            worst = max(worst, len(atoms) * (1 + int(atoms.pbc.sum()) * 8))
    return int(1.5 * worst) + 16


def _symbols(numbers) -> str:
    from ase.data import chemical_symbols

    return " ".join(chemical_symbols[z] for z in sorted(numbers))


def _coverage() -> dict:
    """Built-in models by name -> atomic numbers covered."""
    from ase.calculators.emt import parameters
    from ase.data import atomic_numbers

    from batchmd.models.lj import LJ_PRESETS

    return {"lj": {atomic_numbers[s] for s in LJ_PRESETS}, "emt": {atomic_numbers[s] for s in parameters}}


def species_error(name: str, bad, covered, frames=None) -> CLIError:
    """One line: the elements ``bad`` model ``name`` has no parameters for, the first frame
    holding one (when ``frames`` are given), and who covers them."""
    covering = [model for model, zs in _coverage().items() if set(bad) <= zs and model != name]
    family = name.lower().split(":")[0].split("-")[0]  # sevennet-0 -> sevennet, mace:PATH -> mace
    mlips = [m for m in ("sevennet-0", "mace:PATH", "metatomic:PATH") if not m.startswith(family)]
    listed = f"{', '.join(mlips[:-1])} or {mlips[-1]}" if len(mlips) > 1 else mlips[0]
    mlip_hint = f"{'another MLIP' if len(mlips) < 3 else 'an MLIP'}: --model {listed}"
    hint = f"use --model {' or '.join(covering)}, or {mlip_hint}" if covering else f"use {mlip_hint}"
    cover = f" (it covers {_symbols(covered)})" if covered is not None and len(covered) <= 20 else ""
    first = next((i for i, atoms in enumerate(frames or ()) if set(bad) & set(atoms.numbers.tolist())), None)
    where = f" (frame {first})" if first is not None else ""
    return CLIError(f"model {name} has no parameters for {_symbols(bad)}{cover}{where}; {hint}")


def build_model(name: str, frames=None, *, sigma=None, epsilon=None, cutoff=None, device=None, dtype=None):
    """The model ``name`` for ``frames``, checked to cover every element in them.

    Raises
    ------
    CLIError
        Unknown model, missing package, bad parameter, or elements the model does not cover.
    """
    import numpy as np

    for option, value in (("--sigma", sigma), ("--epsilon", epsilon), ("--cutoff", cutoff)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise CLIError(f"{option} must be a positive finite number, got {value}")
    present = set() if frames is None else {int(z) for atoms in frames for z in np.unique(atoms.numbers)}
    key = name.strip().lower() if isinstance(name, str) else name
    if key != "lj" and (sigma is not None or epsilon is not None):
        raise CLIError(f"--sigma/--epsilon are Lennard-Jones parameters; they do not apply to --model {name}")
    if key == "lj":
        from batchmd.models.lj import LJ_PRESETS, LennardJones

        if (sigma is None) != (epsilon is None):
            raise CLIError("--sigma and --epsilon go together (one pair for every element); give both or neither")
        if sigma is not None:
            model = LennardJones(sigma=sigma, epsilon=epsilon, cutoff=cutoff,
                                 capacity=None if frames is None else neighbor_capacity(frames, cutoff or 3 * sigma))
        else:
            from ase.data import atomic_numbers

            covered = {atomic_numbers[s] for s in LJ_PRESETS}
            bad = present - covered
            if bad:
                raise species_error("lj", bad, covered, frames)
            symbols = [s for s in LJ_PRESETS if atomic_numbers[s] in present] or ["Ar"]
            probe = LennardJones(species=symbols, cutoff=cutoff)
            capacity = None if frames is None else neighbor_capacity(frames, probe.cutoff)
            model = LennardJones(species=symbols, cutoff=cutoff, capacity=capacity)
        return model
    if cutoff is not None:
        raise CLIError(f"--cutoff is a Lennard-Jones parameter; it does not apply to --model {name}")
    from batchmd.models.base import UnsupportedSpeciesError
    from batchmd.models.registry import MissingExtraError, load_model

    try:
        with _stdout_to_log(name):
            model = load_model(name, device=device, dtype=dtype)
    except (ValueError, MissingExtraError, FileNotFoundError, OSError) as error:
        raise CLIError(str(error).removeprefix("batchmd: ")) from error
    except ImportError as error:  # a model module or package that cannot be imported
        raise CLIError(f"--model {name}: cannot be loaded here ({error})") from error
    if frames is not None and hasattr(model, "check_species"):
        try:
            model.check_species(sorted(present))
        except UnsupportedSpeciesError as error:
            raise species_error(name, error.unsupported, getattr(model, "supported_numbers", None), frames) from error
    return model


@contextlib.contextmanager
def _stdout_to_log(name: str):
    """What a model package prints on import or load (e.g. MACE's "cuequivariance ... is not available"
    line) goes to the ``batchmd`` logger at INFO level (shown with ``-v``), not to stdout."""
    import io
    import logging

    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        log = logging.getLogger("batchmd")
        for line in filter(None, (line.strip() for line in captured.getvalue().splitlines())):
            log.info("%s: %s", name.split(":")[0], line)


def model_info(model, name: str) -> dict:
    """``atoms.info`` entries identifying ``model`` (its ``model_info()``, or at least its name)."""
    info = dict(model.model_info()) if hasattr(model, "model_info") else {}
    info.setdefault("model", name)
    return {key: str(value) for key, value in info.items()}


def model_text(info: dict) -> str:
    """The model for the end-of-run summary: ``lj (lj_sigma=Ar:3.405, ...)``."""
    rest = ", ".join(f"{k}={v}" for k, v in info.items() if k != "model")
    return f"{info.get('model', '?')}" + (f" ({rest})" if rest else "")
