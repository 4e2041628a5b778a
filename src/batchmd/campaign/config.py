"""Campaign configuration: what to run (physics) and how (batching, commits, intervals).

A campaign config is a JSON (or TOML) file::

    {
      "manifest": "dataset/",            # directory written by `batchmd shard`
      "output": "run/",                  # OUTDIR, on a filesystem every node sees
      "seed": 0,
      "dtype": "float64",
      "model": {"name": "lj", "sigma": 3.405, "epsilon": 0.0104, "cutoff": 8.5},
      "stages": [{"method": "fire", "fmax": 0.01, "max_steps": 500},
                 {"method": "nvt", "dt": 2.0, "temperature": 300.0, "friction": 0.01, "steps": 1000, "seed": 0}],
      "max_atoms": 4096, "max_batch_size": null, "refill_frequency": 10,
      "commit_every": 256, "commit_interval_s": 60, "checkpoint_interval_s": 60, "metrics_interval_s": 30
    }

Models: ``{"name": "lj", ...LennardJones kwargs}``, ``{"name": "emt"}`` (ASE's EMT),
``{"name": "demo", "init_seed": 0, ...}``
(:class:`~batchmd.models.demo.DemoModelWrapper`, weights drawn from ``init_seed``) or
``{"name": "factory", "target": "package.module:function", "kwargs": {...}}`` for any
model a function builds. Stages use ``batchmd pipeline``'s stage tables: ``method`` is
``fire``, ``nvt`` (Langevin) or ``nve``; ``max_steps`` (FIRE) / ``steps`` (MD) is the
budget, ``fmax`` (eV/Å) a force criterion, ``seed`` the Langevin seed; other keys go to
the method's constructor (units as documented there: MD ``dt`` in fs, temperature K).

The *physics* (model, stages, dtype, seed) is part of the campaign's contract and may not
change on resume; the operational settings (batch budget, intervals) may.

Example
-------
>>> from batchmd.campaign.config import CampaignConfig
>>> cfg = CampaignConfig(manifest="ds", output="run", model={"name": "lj", "sigma": 3.4, "epsilon": 0.01},
...                      stages=[{"method": "fire", "fmax": 0.05, "max_steps": 200}])
>>> sorted(cfg.physics())
['dtype', 'model', 'seed', 'stages']
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from dataclasses import dataclass

import torch

__all__ = ["CampaignConfig", "build_model", "build_stages"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class CampaignConfig:
    """Settings of a campaign (see the module docstring for the file format).

    Attributes
    ----------
    manifest, output : str
        Dataset directory (or its manifest.json) and output directory.
    model : dict
        Model spec.
    stages : list of dict
        Stage specs, in order.
    seed : int
        Ownership seed (and the seed recorded for stochastic stages).
    dtype : str
        ``"float64"`` or ``"float32"``.
    max_atoms, max_batch_size, refill_frequency : int
        Inflight batching per rank (atoms in the live batch, systems, steps between refills).
    commit_every : int
        Commit a result shard every this many finished systems...
    commit_interval_s : float
        ...or when the oldest buffered system waited this long (s).
    checkpoint_interval_s, metrics_interval_s : float
        Seconds between checkpoints and between metrics records.
    """

    manifest: str
    output: str
    model: dict
    stages: list
    seed: int = 0
    dtype: str = "float64"
    max_atoms: int = 4096
    max_batch_size: int | None = None
    refill_frequency: int = 10
    commit_every: int = 256
    commit_interval_s: float = 60.0
    checkpoint_interval_s: float = 60.0
    metrics_interval_s: float = 30.0

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"campaign config: dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.model, dict) or "name" not in self.model:
            raise ValueError("campaign config: 'model' must be a dict with a 'name' (lj, demo or factory)")
        if not self.stages or not all(isinstance(s, dict) and "method" in s for s in self.stages):
            raise ValueError("campaign config: 'stages' must be a non-empty list of dicts with a 'method'")
        if int(self.max_atoms) < 1 or int(self.refill_frequency) < 1:
            raise ValueError("campaign config: max_atoms and refill_frequency must be >= 1")

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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise ValueError(f"campaign config: unknown keys {unknown}; known: {sorted(names)}")
        missing = [k for k in ("manifest", "output", "model", "stages") if k not in merged]
        if missing:
            raise ValueError(f"campaign config: missing {missing}")
        return cls(**merged)

    @classmethod
    def from_file(cls, path, **overrides) -> "CampaignConfig":
        """Load a JSON (``.json``) or TOML (``.toml``) config file; relative paths are resolved against it."""
        path = os.fspath(path)
        if path.endswith(".toml"):
            import tomllib

            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        else:
            with open(path) as handle:
                data = json.load(handle)
        base = os.path.dirname(os.path.abspath(path))
        for key in ("manifest", "output"):
            if key in data and not os.path.isabs(data[key]):
                data[key] = os.path.join(base, data[key])
        return cls.from_dict(data, **overrides)


def build_model(spec: dict, device=None):
    """Instantiate the model of a spec on ``device`` (see the module docstring)."""
    params = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    if name == "lj":
        from batchmd.models.lj import LennardJones

        model = LennardJones(**params)
    elif name == "demo":
        from batchmd.models.demo import DemoModelWrapper

        generator_state = torch.random.get_rng_state()
        torch.manual_seed(int(params.pop("init_seed", 0)))
        model = DemoModelWrapper(**params)
        torch.random.set_rng_state(generator_state)
    elif name == "emt":
        from ase.calculators.emt import EMT

        from batchmd.models.ase_calculator import ASECalculatorModel

        model = ASECalculatorModel(EMT())
    elif name == "factory":
        module_name, _, attr = str(params["target"]).partition(":")
        model = getattr(importlib.import_module(module_name), attr)(**params.get("kwargs", {}))
    else:
        raise ValueError(f"campaign config: unknown model {name!r} (lj, emt, demo or factory)")
    if device is not None and hasattr(model, "to"):
        model = model.to(device)
    return model


_STEP_KEYS = {"fire": "max_steps", "nvt": "steps", "nvt_langevin": "steps", "langevin": "steps", "nve": "steps"}


def build_stages(specs: list, model) -> list:
    """Instantiate the stages of a config around ``model``.

    Keys follow ``batchmd pipeline``'s stage tables: ``max_steps`` (FIRE) or ``steps``
    (MD) is the stage's step budget (``n_steps`` is accepted too), ``fmax`` (eV/Å) a force
    convergence criterion, ``seed`` the Langevin random seed; other keys go to the
    method's constructor unchanged.
    """
    from batchmd.dynamics import ConvergenceHook

    stages = []
    for spec in specs:
        method = spec["method"]
        if method not in _STEP_KEYS:
            raise ValueError(f"campaign config: unknown method {method!r} (fire, nvt, nve)")
        params = {k: v for k, v in spec.items() if k not in ("method", "fmax", _STEP_KEYS[method], "seed")}
        if _STEP_KEYS[method] in spec:
            params["n_steps"] = int(spec[_STEP_KEYS[method]])
        if spec.get("fmax") is not None:
            params["convergence_hook"] = ConvergenceHook.from_forces(float(spec["fmax"]))
        if method == "fire":
            from batchmd.dynamics.fire import FIRE as cls
        elif method == "nve":
            from batchmd.dynamics.verlet import NVE as cls
        else:
            from batchmd.dynamics import NVTLangevin as cls
        if method != "fire":  # MD: the seed of the noise and of the velocity policy's draws
            params["random_seed"] = int(spec.get("seed", 0))
        stages.append(cls(model, **params))
    return stages
