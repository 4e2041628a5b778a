"""Models by name: ``load_model("sevennet-0")``, ``load_model("mace:PATH")``, ``load_model("metatomic:PATH")``.

One registry serves Python and the command line (``batchmd relax --model NAME``). A *spec*
is either a plain name (``"sevennet-0"``) or ``prefix:argument`` (``"mace:/path/to/file.model"``;
the argument is everything after the first colon). Names and prefixes are case-insensitive.

This module imports nothing heavy: every factory imports its package (torch modules of
``sevenn``, ``mace``, ``metatomic``) only when called, so listing models or parsing a
command line stays fast. A factory whose optional package is missing raises
:class:`MissingExtraError`, one line saying what to ``pip install``.

Built-in entries
----------------
=====================  ==========================================================  ==================
spec                   model                                                       extra
=====================  ==========================================================  ==================
``sevennet-0``         SevenNet-0 (``7net-0``), universal, 89 elements; weights     ``batchmd[sevennet]``
                       ship inside the ``sevenn`` package (no download)
``sevennet:PATH``      a SevenNet checkpoint file, or a pretrained name known to    ``batchmd[sevennet]``
                       ``sevenn`` (e.g. ``sevennet:7net-0``)
``mace:PATH``          any MACE ``.model`` file (e.g. MACE-MP-0 downloaded          ``batchmd[mace]``
                       elsewhere)
``metatomic:PATH``     an exported metatomic model (``.pt``)                        ``batchmd[metatomic]``
``chgnet``             CHGNet 0.3.0 (MPtrj), 94 elements; weights ship inside the   ``batchmd[chgnet]``
                       ``chgnet`` package (no download)
``chgnet:NAME|PATH``   a CHGNet shipped with ``chgnet`` (``0.3.0``, ``0.2.0``,      ``batchmd[chgnet]``
                       ``r2scan``) or a saved CHGNet file
``orb:PATH``           an ORB v3 conservative checkpoint file (``.ckpt`` as         ``batchmd[orb]``
                       Orbital distributes it; architecture from the file name,
                       or ``orb:NAME=PATH``); batchmd never downloads it; the
                       plain names (``orb-v3-conservative-inf-omat``, ...) say
                       where to fetch the file
``torchsim:MOD:FACT``  any TorchSim ``ModelInterface`` returned by ``MOD.FACT()``     ``batchmd[torchsim]``
                       (:mod:`batchmd.models.torchsim`; Python >= 3.12)
``fairchem:PATH``      a fairchem inference checkpoint (UMA, eSEN); ``PATH?task=``  ``batchmd[fairchem]``
                       ``omat``/``omol``/... picks a UMA task
``mattersim:PATH``     a MatterSim checkpoint (``.pth``; float32 network)            ``batchmd[mattersim]``
``nequip:PATH``        a NequIP/Allegro packaged model (``.nequip.zip``)            ``batchmd[nequip]``
``matgl:DIR``          a saved matgl TensorNet/M3GNet potential (directory, or a    ``batchmd[matgl]``
                       pretrained name already in matgl's cache); ``tensornet:DIR``
                       and ``m3gnet:DIR`` also check the architecture
``pet:PATH``           a PET model (PET-MAD, ...): exported ``.pt`` or metatrain    ``batchmd[pet]``
                       ``.ckpt``
``upet:NAME``          a UPET model by name (``upet:pet-mad-s``) whose checkpoint   ``batchmd[pet]``
                       is already in the local Hugging Face cache
=====================  ==========================================================  ==================

Other parts of batchmd (the CLI's Lennard-Jones presets, EMT) and users add their own with
:func:`register_model`.

Example
-------
>>> from batchmd.models.registry import available_models, register_model
>>> from batchmd.models import LennardJones
>>> register_model("lj-demo", lambda arg, *, device=None, dtype=None: LennardJones(), "LJ, sigma=epsilon=1",
...                overwrite=True)
>>> "lj-demo" in available_models()
True
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "MissingExtraError",
    "available_models",
    "check_spec",
    "load_model",
    "register_model",
    "require_package",
]


class MissingExtraError(ImportError):
    """An optional package a model needs is not installed (one-line message with the pip command)."""


@dataclass(frozen=True)
class _Entry:
    key: str          # lower-case name, or prefix (without the colon)
    display: str      # how it is listed: "sevennet-0" or "mace:PATH"
    factory: Callable
    description: str
    is_prefix: bool


_REGISTRY: dict[tuple[str, bool], _Entry] = {}


def require_package(module: str, extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` can be imported (checked without importing it).

    Parameters
    ----------
    module : str
        Top-level module name, e.g. ``"sevenn"``.
    extra : str
        The batchmd extra that installs it, e.g. ``"sevennet"``.
    what : str
        What needs it, for the message (e.g. ``"model 'sevennet-0'"``).

    Example
    -------
    >>> require_package("numpy", "test", "this example")
    """
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"batchmd: {what} needs the '{module}' package, which is not installed: "
            f"pip install 'batchmd[{extra}]'")


def register_model(name_or_prefix: str, factory: Callable, description: str, *, overwrite: bool = False) -> None:
    """Add a model to the registry.

    Parameters
    ----------
    name_or_prefix : str
        A plain name (``"lj-argon"``) or a prefix with a placeholder for its argument
        (``"mace:PATH"``; ``"mace:"`` is the same with no placeholder shown). Case-insensitive.
    factory : callable
        ``factory(argument, *, device=None, dtype=None) -> Model``. ``argument`` is None for
        plain names and the text after the colon for prefixes; ``device`` (``torch.device``
        or str) and ``dtype`` (``torch.float32``/``torch.float64``) are what the caller asked
        for, None meaning the model's default. Import heavy packages inside the factory,
        not at module level.
    description : str
        One line shown by :func:`available_models` and the CLI's help.
    overwrite : bool
        Replace an existing entry of the same name (otherwise ``ValueError``).

    Raises
    ------
    ValueError
        Empty name, or the name is taken and ``overwrite`` is False.
    """
    if not isinstance(name_or_prefix, str) or not name_or_prefix.strip(":").strip():
        raise ValueError(f"batchmd: register_model needs a non-empty name, got {name_or_prefix!r}")
    if not callable(factory):
        raise TypeError(f"batchmd: register_model({name_or_prefix!r}): factory must be callable")
    text = name_or_prefix.strip()
    is_prefix = ":" in text
    key = text.split(":", 1)[0].lower()
    placeholder = text.split(":", 1)[1] if is_prefix else ""
    display = f"{key}:{placeholder or 'ARG'}" if is_prefix else key
    if (key, is_prefix) in _REGISTRY and not overwrite:
        raise ValueError(f"batchmd: model {display!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[(key, is_prefix)] = _Entry(key, display, factory, " ".join(str(description).split()), is_prefix)


def available_models() -> dict[str, str]:
    """Registered specs and their one-line descriptions, e.g. ``{"sevennet-0": "...", "mace:PATH": "..."}``."""
    return {e.display: e.description for e in sorted(_REGISTRY.values(), key=lambda e: (e.is_prefix, e.key))}


def _resolve(spec: str) -> tuple[_Entry, str | None]:
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"batchmd: a model spec must be a non-empty string, got {spec!r}")
    text = spec.strip()
    entry = _REGISTRY.get((text.lower(), False))
    if entry is not None:
        return entry, None
    if ":" in text:
        prefix, argument = text.split(":", 1)
        entry = _REGISTRY.get((prefix.lower(), True))
        if entry is not None:
            if not argument:
                raise ValueError(f"batchmd: model spec {spec!r} needs an argument after the colon ({entry.display})")
            return entry, argument
    choices = ", ".join(available_models())
    raise ValueError(f"batchmd: unknown model {spec!r}; choose one of: {choices}")


def check_spec(spec: str) -> str:
    """Check that ``spec`` names a registered model, without building it; returns its listed form.

    Raises
    ------
    ValueError
        Unknown name (one line listing the choices) or a malformed spec (as :func:`load_model`).

    Example
    -------
    >>> check_spec("mace:/models/mp.model")
    'mace:PATH'
    """
    return _resolve(spec)[0].display


def load_model(spec: str, *, device=None, dtype=None):
    """Build the model named by ``spec``.

    Parameters
    ----------
    spec : str
        A registered name or ``prefix:argument`` (see :func:`available_models`).
    device : torch.device or str, optional
        Where the model's parameters live (default: the model's choice, CPU for MLIPs; the
        adapters also follow the batch's device on first use).
    dtype : torch.dtype, optional
        Parameter dtype (default: follow the batch's dtype on first use).

    Returns
    -------
    batchmd.models.Model

    Raises
    ------
    ValueError
        Unknown name (one line listing the choices) or a malformed spec.
    MissingExtraError
        The optional package is not installed (one line: what to ``pip install``).
    FileNotFoundError
        A ``prefix:PATH`` spec whose file does not exist.

    Example
    -------
    >>> model = load_model("sevennet-0", dtype=torch.float64)   # doctest: +SKIP
    """
    entry, argument = _resolve(spec)
    model = entry.factory(argument, device=device, dtype=dtype)
    if getattr(model, "_model_spec", None) is None:
        try:
            model._model_spec = spec.strip()
        except (AttributeError, TypeError):  # pragma: no cover - exotic objects
            pass
    return model


# ---------------------------------------------------------------------------- built-ins
def _sevennet(argument: str | None, *, device=None, dtype=None):
    what = f"model 'sevennet:{argument}'" if argument else "model 'sevennet-0'"
    require_package("sevenn", "sevennet", what)
    from batchmd.models.mlip.sevennet import SevenNetModel

    return SevenNetModel.from_checkpoint(argument or "7net-0", device=device, dtype=dtype)


def _mace(argument: str | None, *, device=None, dtype=None):
    require_package("mace", "mace", f"model 'mace:{argument}'")
    from batchmd.models.mlip.mace import MACEModel

    return MACEModel.from_file(argument, device=device, dtype=dtype)


def _metatomic(argument: str | None, *, device=None, dtype=None):
    require_package("metatomic", "metatomic", f"model 'metatomic:{argument}'")
    from batchmd.models.mlip.metatomic import MetatomicModel

    return MetatomicModel.from_file(argument, device=device, dtype=dtype)


def _chgnet(argument: str | None, *, device=None, dtype=None):
    require_package("chgnet", "chgnet", f"model 'chgnet:{argument}'" if argument else "model 'chgnet'")
    from batchmd.models.mlip.chgnet import CHGNetModel

    return CHGNetModel.from_pretrained(argument or "0.3.0", device=device, dtype=dtype)


def _orb(argument: str | None, *, device=None, dtype=None):
    require_package("orb_models", "orb", f"model 'orb:{argument}'")
    from batchmd.models.mlip.orb import ORBModel

    return ORBModel.from_file(argument, device=device, dtype=dtype)
def _fairchem(argument: str | None, *, device=None, dtype=None):
    require_package("fairchem", "fairchem", f"model 'fairchem:{argument}'")
    from batchmd.models.mlip.fairchem import FAIRChemModel, parse_fairchem_spec

    path, options = parse_fairchem_spec(argument)
    return FAIRChemModel.from_file(path, task=options.get("task"), device=device, dtype=dtype)


def _mattersim(argument: str | None, *, device=None, dtype=None):
    require_package("mattersim", "mattersim", f"model 'mattersim:{argument}'")
    from batchmd.models.mlip.mattersim import MatterSimModel

    return MatterSimModel.from_file(argument, device=device, dtype=dtype)


def _nequip(argument: str | None, *, device=None, dtype=None):
    require_package("nequip", "nequip", f"model 'nequip:{argument}'")
    from batchmd.models.mlip.nequip import NequIPModel

    return NequIPModel.from_file(argument, device=device, dtype=dtype)


register_model("sevennet-0", lambda argument, **kw: _sevennet(None, **kw),
               "SevenNet-0 (7net-0) universal potential, 89 elements; weights ship with the sevenn package")
register_model("sevennet:PATH", _sevennet, "a SevenNet checkpoint file or a pretrained name known to sevenn")
register_model("mace:PATH", _mace, "a MACE .model file (e.g. MACE-MP-0 downloaded elsewhere)")
register_model("metatomic:PATH", _metatomic, "an exported metatomic model file (.pt)")
register_model("chgnet", lambda argument, **kw: _chgnet(None, **kw),
               "CHGNet 0.3.0 universal potential (MPtrj), 94 elements; weights ship with the chgnet package")
register_model("chgnet:NAME", _chgnet, "a CHGNet shipped with chgnet (0.3.0, 0.2.0, r2scan) or a saved CHGNet file")
for _name in ("orb-v3-conservative-20-omat", "orb-v3-conservative-inf-omat", "orb-v3-conservative-20-mpa",
              "orb-v3-conservative-inf-mpa"):
    register_model(_name, lambda argument, _n=_name, **kw: _orb(_n, **kw),
                   "ORB v3 conservative: its weights file must be present locally (batchmd never downloads); "
                   "the error gives the URL, then use orb:PATH")
register_model("orb:PATH", _orb, "an ORB v3 conservative checkpoint file (orb-v3-conservative-*.ckpt, downloaded "
               "elsewhere), or orb:NAME=PATH")


def _torchsim(argument: str | None, *, device=None, dtype=None):
    require_package("torch_sim", "torchsim", f"model 'torchsim:{argument}' (torch-sim-atomistic >= 0.6, Python >= 3.12)")
    from batchmd.models.torchsim import load_torchsim_factory

    return load_torchsim_factory(argument, device=device, dtype=dtype)


register_model("torchsim:MODULE:FACTORY", _torchsim,
               "any TorchSim ModelInterface built by a factory, e.g. "
               "torchsim:torch_sim.models.lennard_jones:LennardJonesModel (batchmd.models.torchsim)")
register_model("fairchem:PATH", _fairchem,
               "a fairchem inference checkpoint (UMA, eSEN); PATH?task=omat|omol|... picks a UMA task")

register_model("mattersim:PATH", _mattersim, "a MatterSim checkpoint (M3GNet potential, .pth)")
register_model("nequip:PATH", _nequip, "a NequIP/Allegro packaged model (.nequip.zip) or a saved module")


def _matgl(architecture: str | None):
    def factory(argument: str | None, *, device=None, dtype=None):
        prefix = (architecture or "matgl").lower()
        require_package("matgl", "matgl", f"model '{prefix}:{argument}'")
        from batchmd.models.mlip.matgl import MatGLModel

        return MatGLModel.from_path(argument, architecture=architecture, device=device, dtype=dtype)

    return factory


register_model("matgl:DIR", _matgl(None),
               "a saved matgl potential (TensorNet or M3GNet): a directory, or a pretrained name already in "
               "matgl's cache (never downloaded)")
register_model("tensornet:DIR", _matgl("TensorNet"), "a saved matgl TensorNet potential (as matgl:DIR)")
register_model("m3gnet:DIR", _matgl("M3GNet"), "a saved matgl M3GNet potential (as matgl:DIR)")


def _pet(upet_name: bool):
    def factory(argument: str | None, *, device=None, dtype=None):
        require_package("metatomic", "pet", f"model '{'upet' if upet_name else 'pet'}:{argument}'")
        from batchmd.models.mlip.pet import PETModel

        return PETModel.from_spec(argument, upet_name=upet_name, device=device, dtype=dtype)

    return factory


register_model("pet:PATH", _pet(False),
               "a PET model (PET-MAD, PET-OMat, ...): an exported metatomic .pt file or a metatrain .ckpt checkpoint")
register_model("upet:NAME", _pet(True),
               "a UPET model by name (e.g. upet:pet-mad-s), if its checkpoint is in the local Hugging Face cache "
               "(never downloaded)")


def _lennard_jones(argument: str | None, *, device=None, dtype=None):
    from batchmd.models.lj import LJ_PRESETS, LennardJones

    symbols = list(LJ_PRESETS) if not argument else [s.strip() for s in argument.split(",") if s.strip()]
    return LennardJones(species=symbols)


def _emt(argument: str | None, *, device=None, dtype=None):
    from ase.calculators.emt import EMT, parameters
    from ase.data import atomic_numbers

    from batchmd.models.ase_calculator import ASECalculatorModel

    # EMT has an analytic stress (cells and NPT work); one EMT per system keeps its neighbor list between steps
    model = ASECalculatorModel(EMT(), compute_stress=True, per_system=True)
    model.supported_numbers = frozenset(atomic_numbers[sym] for sym in parameters)
    model._model_name = "emt"
    return model


register_model("lj", _lennard_jones,
               "Lennard-Jones presets for the noble gases He Ne Ar Kr Xe (batchmd.models.lj.LJ_PRESETS), "
               "Lorentz-Berthelot mixing, cutoff 3 x largest sigma")
register_model("lj:ELEMENTS", _lennard_jones, "Lennard-Jones presets for some noble gases, e.g. lj:Ar,Kr")
register_model("emt", _emt, "ASE's EMT (Al Cu Ag Au Ni Pd Pt, H C N O), through ASECalculatorModel (slow)")
