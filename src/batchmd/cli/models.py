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

from batchmd.cli.errors import CLIError

__all__ = ["add_model_arguments", "build_model", "model_text", "neighbor_capacity"]

from batchmd.workflows.models import model_info, neighbor_capacity  # noqa: E402  (moved there; kept importable here)

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

    The model spec is :mod:`batchmd.workflows.models`' (shared with pipeline files and
    campaigns); this adds the command line's messages.

    Raises
    ------
    CLIError
        Unknown model, missing package, bad parameter, or elements the model does not cover.
    """
    from batchmd.workflows.errors import SpecError
    from batchmd.workflows.models import SpeciesError
    from batchmd.workflows.models import build_model as build

    spec = {"name": name, "sigma": sigma, "epsilon": epsilon, "cutoff": cutoff}
    try:
        model = build(spec, frames, device=device, dtype=dtype)
    except SpeciesError as error:
        raise species_error(error.name, error.bad, error.covered, frames) from None
    except SpecError as error:
        raise CLIError(str(error)) from None
    if frames is not None and hasattr(model, "check_species"):
        import numpy as np

        from batchmd.models.base import UnsupportedSpeciesError

        present = {int(z) for atoms in frames for z in np.unique(atoms.numbers)}
        try:
            model.check_species(sorted(present))
        except UnsupportedSpeciesError as error:
            raise species_error(name, error.unsupported, getattr(model, "supported_numbers", None), frames) from error
    return model


def model_text(info: dict) -> str:
    """The model for the end-of-run summary: ``lj (lj_sigma=Ar:3.405, ...)``."""
    rest = ", ".join(f"{k}={v}" for k, v in info.items() if k != "model")
    return f"{info.get('model', '?')}" + (f" ({rest})" if rest else "")
