"""Model specs: the model registry's names and the Lennard-Jones parameters, checked and built.

A *model spec* is a dict (the ``[model]`` table of a pipeline file, a campaign config's
``model``, or ``batchmd relax``/``md``'s ``--model``/``--sigma``/``--epsilon``/``--cutoff``)::

    {"name": "sevennet-0"}                       # any spec of batchmd.models.registry
    {"name": "mace:/models/mace-mp-0.model"}
    {"name": "lj"}                               # noble-gas presets for the elements present
    {"name": "lj", "sigma": 3.405, "epsilon": 0.0104, "cutoff": 8.5125}   # one pair, every element

``name`` is any name of :func:`batchmd.models.registry.available_models` (``lj``, ``emt``,
``sevennet-0``, ``sevennet:PATH``, ``mace:PATH``, ``metatomic:PATH`` and whatever is
registered with :func:`~batchmd.models.registry.register_model`). ``lj`` without
``sigma``/``epsilon`` is Lennard-Jones with the presets of
:data:`batchmd.models.lj.LJ_PRESETS` for the elements of the structures it will run
(Lorentz-Berthelot mixing, cutoff 3 x the largest sigma): exactly
``LennardJones(species=[elements present])``. ``sigma`` (Å), ``epsilon`` (eV) and
``cutoff`` (Å) apply to ``lj`` only.

Errors are one :class:`~batchmd.workflows.errors.SpecError` line. Messages name the
command-line options (``--sigma``) unless ``where`` names a file (``"run.toml: [model]"``).
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import contextlib
import math

from batchmd.workflows.errors import SpecError

__all__ = ["LJ_KEYS", "MLIP_PREFIXES", "SpeciesError", "build_model", "check_model_spec", "default_dtype_name",
           "model_info", "neighbor_capacity"]

#: Keys of a model spec besides ``name`` (Lennard-Jones only): sigma Å, epsilon eV, cutoff Å.
LJ_KEYS = ("sigma", "epsilon", "cutoff")

#: Model-name prefixes of machine-learned potentials, whose default dtype is float32.
MLIP_PREFIXES = ("sevennet", "mace", "metatomic")


class SpeciesError(SpecError):
    """The structures hold elements model ``name`` has no parameters for.

    Attributes: ``name`` (the model spec), ``bad`` (atomic numbers), ``covered`` (those it
    covers, or None).
    """

    def __init__(self, name: str, bad, covered) -> None:
        from ase.data import chemical_symbols

        self.name, self.bad, self.covered = name, sorted(bad), covered
        super().__init__(f"model {name} has no parameters for {' '.join(chemical_symbols[z] for z in self.bad)}")


def default_dtype_name(model_name: str | None) -> str:
    """The default floating precision for a model: ``"float32"`` for an MLIP, ``"float64"`` otherwise."""
    name = (model_name or "lj").lower()
    return "float32" if name.startswith(MLIP_PREFIXES) else "float64"


def _label(where: str | None, key: str) -> str:
    return f"--{key}" if where is None else f"{where}: {key}"


def check_model_spec(spec: dict, where: str | None = None) -> dict:
    """Check a model spec; returns it with ``name`` stripped and ``None`` values dropped.

    Raises
    ------
    SpecError
        Not a dict, no ``name``, an unknown key, a model name the registry does not know
        (listing the choices), a non-positive or non-finite sigma/epsilon/cutoff, sigma
        without epsilon, or Lennard-Jones parameters given to another model.
    """
    place = where or "model"
    if not isinstance(spec, dict):
        raise SpecError(f"{place} must be a table with a name (lj, emt, sevennet-0, mace:PATH, metatomic:PATH, ...)")
    unknown = sorted(set(spec) - {"name", *LJ_KEYS})
    if unknown:
        raise SpecError(f"{place}: unknown key {unknown[0]!r}; expected {', '.join(['name', *LJ_KEYS])}")
    name = spec.get("name", "lj")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"{place}: name must be a model name (lj, emt, sevennet-0, mace:PATH, ...), got {name!r}")
    name = name.strip()
    params = {key: spec[key] for key in LJ_KEYS if spec.get(key) is not None}
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise SpecError(f"{_label(where, key)} must be a positive finite number, got {value}")
    if name.lower() == "lj":
        if ("sigma" in params) != ("epsilon" in params):
            raise SpecError(f"{_label(where, 'sigma')} and {_label(where, 'epsilon')} go together (one pair for every "
                            "element); give both or neither")
    else:
        given = [key for key in LJ_KEYS if key in params]
        if given:
            what = "--sigma/--epsilon are Lennard-Jones parameters" if where is None and given[0] != "cutoff" else \
                f"{_label(where, given[0])} is a Lennard-Jones parameter"
            raise SpecError(f"{what}; {'they do' if what.endswith('parameters') else 'it does'} not apply to "
                            f"{'--model ' if where is None else 'model '}{name}")
        from batchmd.models.registry import check_spec

        try:
            check_spec(name)
        except ValueError as error:
            raise SpecError(f"{'' if where is None else where + ': '}{str(error).removeprefix('batchmd: ')}") from None
    return {"name": name, **params}


def model_info(model, name: str) -> dict:
    """``atoms.info`` entries identifying ``model``: its ``model_info()`` (e.g. ``lj_sigma``,
    ``lj_epsilon``, ``lj_cutoff`` for Lennard-Jones), or at least ``model`` (its name); values as text.

    Every output path writes these (the CLI's result files, a campaign's exported frames).
    """
    info = dict(model.model_info()) if hasattr(model, "model_info") else {}
    info.setdefault("model", name)
    return {key: str(value) for key, value in info.items()}


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


def build_model(spec: dict, frames=None, *, numbers=None, device=None, dtype=None, where: str | None = None,
                strict_species: bool = True):
    """The model of ``spec`` (see the module docstring), for ``frames`` or the elements ``numbers``.

    Parameters
    ----------
    spec : dict
        ``{"name": ..., "sigma": ..., "epsilon": ..., "cutoff": ...}`` (checked with
        :func:`check_model_spec`).
    frames : list of ase.Atoms, optional
        The structures it will run: Lennard-Jones presets are chosen for their elements and
        the neighbor capacity sized for them.
    numbers : iterable of int, optional
        The atomic numbers present, when ``frames`` are not at hand (a sharded dataset).
    device, dtype
        Passed to :func:`batchmd.models.registry.load_model`.
    where : str, optional
        Prefix of messages (default: the command-line options' names).
    strict_species : bool
        Raise :class:`SpeciesError` when Lennard-Jones presets do not cover an element
        present (default). False: take the presets of the elements covered and leave the
        others to the admission check, which names the structure (campaigns).

    Raises
    ------
    SpeciesError
        Lennard-Jones presets do not cover an element present.
    SpecError
        A bad spec, a missing package (what to ``pip install``), a model file that is
        missing or not a model of the kind named.
    """
    import numpy as np

    spec = check_model_spec(spec, where)
    name = spec.pop("name")
    present = set() if numbers is None else {int(z) for z in numbers}
    if frames is not None:
        present |= {int(z) for atoms in frames for z in np.unique(atoms.numbers)}
    if name.lower() == "lj":
        from batchmd.models.lj import LJ_PRESETS, LennardJones

        cutoff = spec.get("cutoff")
        if "sigma" in spec:
            capacity = None if frames is None else neighbor_capacity(frames, cutoff or 3 * spec["sigma"])
            return LennardJones(sigma=spec["sigma"], epsilon=spec["epsilon"], cutoff=cutoff, capacity=capacity)
        from ase.data import atomic_numbers

        covered = {atomic_numbers[s] for s in LJ_PRESETS}
        if present - covered and strict_species:
            raise SpeciesError("lj", present - covered, covered)
        symbols = [s for s in LJ_PRESETS if atomic_numbers[s] in present] or ["Ar"]
        probe = LennardJones(species=symbols, cutoff=cutoff)
        capacity = None if frames is None else neighbor_capacity(frames, probe.cutoff)
        return LennardJones(species=symbols, cutoff=cutoff, capacity=capacity)
    from batchmd.models.registry import MissingExtraError, load_model

    try:
        with _stdout_to_log(name):
            return load_model(name, device=device, dtype=dtype)
    except (ValueError, MissingExtraError, FileNotFoundError, OSError) as error:
        raise SpecError(str(error).removeprefix("batchmd: ")) from error
    except ImportError as error:  # a model module or package that cannot be imported
        raise SpecError(f"{'--model' if where is None else where + ': model'} {name}: cannot be loaded here "
                        f"({error})") from error


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
