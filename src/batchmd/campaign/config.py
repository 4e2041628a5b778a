"""Campaign configuration: what to run (physics) and how (batching, commits, intervals).

The physics speaks the command line's language: ``model`` is a model spec of
:mod:`batchmd.workflows.models` (any name of the model registry: ``lj``, ``emt``,
``sevennet-0``, ``mace:PATH``, ``metatomic:PATH``, ...) and ``stages`` are the stage specs
of :mod:`batchmd.workflows.stages` (the keys of ``batchmd pipeline``'s ``[[stages]]``
tables: ``fire``/``lbfgs`` with ``cell`` and ``pressure`` in GPa, ``nvt``, ``nve``,
``nvt-nose-hoover``, ``npt`` with their thermostat and barostat keys, ``velocities``),
checked with the same one-line errors when the config is read.

A campaign config is a JSON (or TOML) file::

    {
      "manifest": "dataset/",            # directory written by `batchmd shard`
      "output": "run/",                  # OUTDIR, on a filesystem every node sees
      "seed": 0,                         # ownership seed
      "dtype": "float64",                # default: float32 for MLIPs, else float64 (as the CLI)
      "model": {"name": "sevennet-0"},
      "stages": [{"method": "fire", "fmax": 0.01, "max_steps": 500, "cell": "full", "pressure": 0.0},
                 {"method": "npt", "temperature": 300.0, "pressure": 0.0, "dt": 2.0, "steps": 1000}],
      "max_atoms": 4096, "max_batch_size": null, "refill_frequency": 10, "device": null,
      "commit_every": 256, "commit_interval_s": 60, "checkpoint_interval_s": 60, "metrics_interval_s": 30
    }

or a **pipeline file** (:mod:`batchmd.workflows.pipeline`, the TOML of ``batchmd
pipeline``) as it is: its ``model``, ``stages``, ``dtype``, ``device``, ``max_atoms`` and
``refill_every`` are used, and an optional ``[campaign]`` table holds ``manifest``,
``output`` and the operational keys above (``--manifest``/``-o`` of ``batchmd campaign
run`` override them; without either, a pipeline ``input``/``output`` that is a dataset
directory is used). See :meth:`CampaignConfig.from_pipeline`.

Also accepted, for configs written before the shared vocabulary: models
``{"name": "lj", ...any LennardJones keyword}``, ``{"name": "demo", "init_seed": 0, ...}``
(:class:`~batchmd.models.demo.DemoModelWrapper`) and ``{"name": "factory", "target":
"package.module:function", "kwargs": {...}}`` (any model a function builds); stage method
names ``nvt_langevin``/``langevin`` (= ``nvt``) and ``n_steps`` (= ``max_steps`` or
``steps``). ``{"name": "lj"}`` without ``sigma``/``epsilon`` takes the noble-gas presets
for the elements of the dataset, as ``batchmd relax --model lj`` does for its input.

The *physics* (model, stages, dtype, seed) is part of the campaign's contract and may not
change on resume; the operational settings (batch budget, intervals, device) may.

Example
-------
>>> from batchmd.campaign.config import CampaignConfig
>>> cfg = CampaignConfig(manifest="ds", output="run", model={"name": "lj", "sigma": 3.4, "epsilon": 0.01},
...                      stages=[{"method": "fire", "fmax": 0.05, "max_steps": 200, "cell": "full"}])
>>> sorted(cfg.physics())
['dtype', 'model', 'seed', 'stages']
>>> CampaignConfig(manifest="ds", output="run", model={"name": "sevennet-0"}, stages=[{"method": "fire"}]).dtype
'float32'
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from dataclasses import dataclass

import torch

from batchmd.workflows.errors import SpecError
from batchmd.workflows.models import LJ_KEYS, check_model_spec, default_dtype_name
from batchmd.workflows.stages import build_stage, check_stage

__all__ = ["CampaignConfig", "build_model", "build_stages", "normalise_stage", "needs_elements"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class CampaignConfig:
    """Settings of a campaign (see the module docstring for the file format).

    Attributes
    ----------
    manifest, output : str
        Dataset directory (or its manifest.json) and output directory.
    model : dict
        Model spec (:mod:`batchmd.workflows.models`; also the older ``demo``/``factory``).
    stages : list of dict
        Stage specs (:mod:`batchmd.workflows.stages`), in order.
    seed : int
        Ownership seed (shards -> ranks).
    dtype : str or None
        ``"float64"`` or ``"float32"``; None: float32 for machine-learned potentials, else
        float64 (the CLI's ``--dtype`` default).
    max_atoms, max_batch_size, refill_frequency : int
        Inflight batching per rank (atoms in the live batch, systems, steps between refills).
    device : str or None
        ``"cpu"`` or ``"cuda"`` (each rank on ``cuda:LOCAL_RANK``); None: CUDA when available.
    commit_every : int
        Commit a result shard every this many finished systems...
    commit_interval_s : float
        ...or when the oldest buffered system waited this long (s).
    checkpoint_interval_s, metrics_interval_s : float
        Seconds between checkpoints and between metrics records.

    Raises
    ------
    SpecError
        (a ``ValueError``) One line naming the key: a bad model or stage spec (the CLI's
        checks and messages), an unknown dtype or device, a non-positive budget.
    """

    manifest: str
    output: str
    model: dict
    stages: list
    seed: int = 0
    dtype: str | None = None
    max_atoms: int = 4096
    max_batch_size: int | None = None
    refill_frequency: int = 10
    device: str | None = None
    commit_every: int = 256
    commit_interval_s: float = 60.0
    checkpoint_interval_s: float = 60.0
    metrics_interval_s: float = 30.0

    def __post_init__(self) -> None:
        check_campaign_model(self.model)
        if self.dtype is None:
            self.dtype = default_dtype_name(self.model["name"])
        if self.dtype not in _DTYPES:
            raise SpecError(f"campaign config: dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.stages, list) or not self.stages:
            raise SpecError("campaign config: 'stages' must be a non-empty list of stage tables with a 'method'")
        for i, spec in enumerate(self.stages):
            check_stage(normalise_stage(spec), where=f"stages[{i}]")
        if self.device not in (None, "cpu", "cuda"):
            raise SpecError(f"campaign config: device must be cpu or cuda, got {self.device!r}")
        for key in ("max_atoms", "refill_frequency", "commit_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"campaign config: {key} must be a positive integer, got {value!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The floating dtype as a torch dtype."""
        return _DTYPES[self.dtype]

    def physics(self) -> dict:
        """The part of the config that determines results (goes into the contract)."""
        return {"model": self.model, "stages": self.stages, "dtype": self.dtype, "seed": int(self.seed)}

    def as_dict(self) -> dict:
        """Every setting as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, **overrides) -> "CampaignConfig":
        """Build from a dict; ``overrides`` (not None) replace keys. Unknown keys are an error."""
        merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        if "refill_every" in merged:  # the pipeline file's and the CLI's name (--refill-every) for the same setting
            if "refill_frequency" in merged:
                raise SpecError("campaign config: give refill_every or refill_frequency, not both (the same setting)")
            merged["refill_frequency"] = merged.pop("refill_every")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise SpecError(f"campaign config: unknown key {unknown[0]!r}; expected {', '.join(sorted(names))}")
        missing = [k for k in ("manifest", "output", "model", "stages") if k not in merged]
        if missing:
            raise SpecError(f"campaign config: missing {', '.join(missing)}")
        return cls(**merged)

    @classmethod
    def from_file(cls, path, **overrides) -> "CampaignConfig":
        """Load a JSON (``.json``) or TOML (``.toml``) config file; relative paths are resolved against it.

        A TOML file with ``input`` or a ``[campaign]`` table is a pipeline file
        (:meth:`from_pipeline`); ``overrides`` ``output`` and ``manifest`` then name the
        campaign's output directory and dataset.
        """
        path = os.fspath(path)
        if path.endswith(".toml"):
            import tomllib

            try:
                with open(path, "rb") as handle:
                    data = tomllib.load(handle)
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
                raise SpecError(f"not valid TOML ({error})") from error
            if "input" in data or "campaign" in data:
                return cls.from_pipeline(path, **overrides)
        else:
            try:
                with open(path) as handle:
                    data = json.load(handle)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise SpecError(f"not valid JSON ({error})") from error
        if not isinstance(data, dict):
            raise SpecError("a campaign config must be a JSON object or a TOML table")
        base = os.path.dirname(os.path.abspath(path))
        for key in ("manifest", "output"):
            if isinstance(data.get(key), str) and not os.path.isabs(data[key]):
                data[key] = os.path.join(base, data[key])
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_pipeline(cls, path, output=None, manifest=None, **overrides) -> "CampaignConfig":
        """The campaign of a pipeline TOML file (``batchmd pipeline``'s, :mod:`batchmd.workflows.pipeline`).

        Physics from the file: ``model`` (default ``lj``), ``stages``, ``dtype``. Operational
        settings: ``max_atoms`` (default 4096), ``refill_every``, ``device`` and the
        ``[campaign]`` table (``seed``, ``commit_every``, intervals, ...). The dataset is
        ``manifest``, else ``[campaign] manifest``, else the file's ``input`` when it is a
        dataset directory (or its manifest.json); the output directory is ``output``, else
        ``[campaign] output``, else the file's ``output`` when ``input`` is a dataset.

        Raises
        ------
        SpecError
            A bad pipeline file (as ``batchmd pipeline`` says), or no dataset / output
            directory named (saying how to make and name one).
        """
        from batchmd.workflows.pipeline import load_pipeline

        table = load_pipeline(path, output_given=True)
        recorded = sorted(set(table) & {"trajectory", "traj_every", "traj_fields", "log_every"})
        if recorded:  # never drop a record the user asked for without saying so
            raise SpecError(f"{path}: {recorded[0]!r}: campaigns do not record trajectories or thermo logs yet; "
                            "remove the key to run this file as a campaign (or run it with batchmd pipeline)")
        section = dict(table.get("campaign", {}))
        source = table["input"]
        if isinstance(source, list):  # inputs (files, folders, globs): a campaign reads one sharded dataset
            source = source[0] if len(source) == 1 else " ".join(source)
        is_dataset = os.path.isdir(source) or os.path.basename(source) == "manifest.json"
        manifest = manifest or section.pop("manifest", None) or (source if is_dataset else None)
        section.pop("manifest", None)
        output = output or section.pop("output", None) or (table.get("output") if is_dataset else None)
        section.pop("output", None)
        if manifest is None:
            raise SpecError(f"{path}: input {source} is not a sharded dataset: make one with `batchmd shard "
                            f"{source} DATASET/` and name it with --manifest DATASET (or [campaign] manifest)")
        if output is None:
            raise SpecError(f"{path}: name the campaign's output directory with -o OUTDIR (or [campaign] output); "
                            f"output {table.get('output')} is the single-process run's file")
        settings = {"model": {"name": "lj", **table.get("model", {})}, "stages": table["stages"],
                    "dtype": table.get("dtype"), "max_atoms": table.get("max_atoms", 4096),
                    "refill_frequency": table.get("refill_every", 10), "device": table.get("device"), **section}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(settings, manifest=manifest, output=output)


#: Model names of configs written before the shared vocabulary (campaigns only).
_LEGACY_MODELS = ("demo", "factory")
#: Stage method names of older configs -> the stage vocabulary's.
_LEGACY_METHODS = {"nvt_langevin": "nvt", "langevin": "nvt"}


def normalise_stage(spec) -> dict:
    """A stage spec in the shared vocabulary: older method names (``nvt_langevin``, ``langevin``)
    and the step budget ``n_steps`` (= ``max_steps`` for optimizers, ``steps`` for MD) renamed."""
    if not isinstance(spec, dict):
        return spec
    spec = dict(spec)
    spec["method"] = _LEGACY_METHODS.get(spec.get("method"), spec.get("method"))
    if "n_steps" in spec:
        key = "max_steps" if spec["method"] in ("fire", "lbfgs") else "steps"
        if key not in spec:
            spec[key] = spec.pop("n_steps")
    return spec


def _lj_kwargs(spec: dict) -> bool:
    """An ``lj`` spec with LennardJones keywords beyond sigma, epsilon and cutoff (older configs)."""
    return str(spec.get("name", "")).strip().lower() == "lj" and bool(set(spec) - {"name", *LJ_KEYS})


def check_campaign_model(spec) -> None:
    """Check a campaign's model spec (:func:`batchmd.workflows.models.check_model_spec`, or an older form)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise SpecError("campaign config: 'model' must be a table with a name (lj, emt, sevennet-0, mace:PATH, "
                        "metatomic:PATH, ...)")
    if spec["name"] == "factory":
        if not isinstance(spec.get("target"), str) or ":" not in spec["target"]:
            raise SpecError("campaign config: model factory needs target = \"package.module:function\"")
    elif spec["name"] not in _LEGACY_MODELS and not _lj_kwargs(spec):
        check_model_spec(spec, where="campaign config: model")


def needs_elements(spec: dict) -> bool:
    """Whether building ``spec`` needs the dataset's elements (``lj`` with presets, no sigma/epsilon)."""
    return str(spec.get("name", "")).strip().lower() == "lj" and spec.get("sigma") is None


def build_model(spec: dict, device=None, dtype=None, numbers=None):
    """Instantiate the model of a spec (see the module docstring).

    Parameters
    ----------
    spec : dict
        The config's ``model``.
    device, dtype
        Where and in what precision (registry models load there; others are moved).
    numbers : iterable of int, optional
        Atomic numbers in the dataset (``lj`` presets; see :func:`needs_elements`).

    Raises
    ------
    SpecError
        One line: a bad spec, a missing package or model file, a factory that fails.
    """
    check_campaign_model(spec)
    params = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    try:
        if name == "demo":
            from batchmd.models.demo import DemoModelWrapper

            generator_state = torch.random.get_rng_state()
            torch.manual_seed(int(params.pop("init_seed", 0)))
            model = DemoModelWrapper(**params)
            torch.random.set_rng_state(generator_state)
        elif name == "factory":
            module_name, _, attr = str(params["target"]).partition(":")
            model = getattr(importlib.import_module(module_name), attr)(**params.get("kwargs", {}))
        elif _lj_kwargs(spec):
            from batchmd.models.lj import LennardJones

            model = LennardJones(**params)
        else:
            from batchmd.workflows.models import build_model as build

            return build(spec, numbers=numbers, device=device, dtype=dtype, where="campaign config: model",
                         strict_species=False)
    except SpecError:
        raise
    except (TypeError, ValueError, ImportError, AttributeError) as error:
        raise SpecError(f"campaign config: model {name}: {str(error).removeprefix('batchmd: ')}") from error
    if device is not None and hasattr(model, "to"):
        model = model.to(device)
    return model


def build_stages(specs: list, model) -> list:
    """Instantiate the stages of a config around ``model`` (:func:`batchmd.workflows.stages.build_stage`).

    Raises
    ------
    SpecError
        A bad stage spec, or a stage refusing the model (a variable cell with a model that
        computes no stress).
    """
    stages = []
    for i, spec in enumerate(specs):
        try:
            stages.append(build_stage(normalise_stage(spec), model, where=f"stages[{i}]"))
        except SpecError:
            raise
        except (TypeError, ValueError) as error:  # a stage refusing this model (e.g. NPT without stress)
            raise SpecError(f"campaign config: stages[{i}]: {str(error).removeprefix('batchmd: ')}") from None
    return stages
