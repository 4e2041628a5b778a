"""The run's contract: what a campaign's results depend on, checked on every resume.

A contract is a JSON dict::

    {"manifest_version": "3f9c...", "num_structures": 1000,
     "physics": {"model": {...}, "stages": [...], "dtype": "float64", "seed": 0},
     "model_identity": {"class": "batchmd.models.lj.LennardJones",
                        "params_sha256": "...", "attributes": {"sigma": 3.405, ...}},
     "code_version": "batchmd 0.1.0",
     "model_info": {"model": "lj", "lj_sigma": "3.405", ...},
     "stage_targets": [{"method": "fire", "temperature_K": None, ...}, ...]}

Rank 0 writes it to ``campaign.json`` at the first start; every later start (every rank)
compares its own contract with it and refuses to run if the manifest version, the physics
or the model identity differ (:class:`ContractMismatch`, naming each difference). A
different ``code_version`` is allowed and logged (bug fixes must be deployable mid-campaign);
each attempt's code version is kept in ``attempts.jsonl``.

Example
-------
>>> from batchmd.campaign.contract import compare_contracts
>>> compare_contracts({"manifest_version": "a"}, {"manifest_version": "b"})
["manifest_version: recorded 'a', now 'b'"]
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

__all__ = ["ContractMismatch", "model_identity", "code_version", "build_contract", "compare_contracts", "check_contract",
           "CHECKED_KEYS"]

log = logging.getLogger(__name__)

CHECKED_KEYS = ("manifest_version", "num_structures", "physics", "model_identity")
"""Contract entries that must match on resume."""


class ContractMismatch(RuntimeError):
    """A resume would run against a different manifest, config or model than the campaign's."""


def model_identity(model) -> dict:
    """Class, parameter hash and scalar attributes of a model.

    The hash covers every entry of ``state_dict()`` (name, dtype, shape, bytes) in name
    order, so changed weights give a new identity; scalar public attributes (``sigma``,
    ``cutoff``, ...) cover parameter-free models.
    """
    digest = hashlib.sha256()
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    attributes = {}
    for name, value in sorted(vars(model).items()):
        if name.startswith("_") or name == "training":
            continue
        if isinstance(value, (bool, int, str)) or (isinstance(value, float) and np.isfinite(value)):
            attributes[name] = value
    cls = type(model)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "params_sha256": digest.hexdigest(),
            "attributes": attributes}


def code_version() -> str:
    """``"batchmd <version>"`` of the running code."""
    import batchmd

    return f"batchmd {batchmd.__version__}"


def build_contract(config, manifest, model, stages=None) -> dict:
    """The contract of running ``config`` with ``model`` (and its built ``stages``) over ``manifest``.

    Besides the checked entries it records, for exported frames, the ``model_info`` keys
    (:func:`batchmd.workflows.models.model_info`, e.g. ``lj_sigma``) and each stage's
    ``stage_targets`` (:func:`batchmd.ase_results.stage_targets`), so a campaign's frames
    carry the CLI's info keys. Both follow from the checked entries and are not compared.
    """
    from batchmd.workflows.models import model_info

    contract = {
        "manifest_version": manifest.version,
        "num_structures": manifest.num_structures,
        "physics": config.physics(),
        "model_identity": model_identity(model),
        "code_version": code_version(),
        "model_info": model_info(model, str((config.model or {}).get("name", "lj"))),
    }
    if stages is not None:
        from batchmd.ase_results import stage_targets

        contract["stage_targets"] = stage_targets(stages)
    return contract


def compare_contracts(recorded: dict, current: dict) -> list[str]:
    """Human-readable differences in the checked entries (empty if the contracts agree)."""
    problems = []
    for key in CHECKED_KEYS:
        if key in recorded or key in current:
            old, new = recorded.get(key), current.get(key)
            if old != new:
                problems.append(f"{key}: recorded {old!r}, now {new!r}")
    return problems


def check_contract(recorded: dict, current: dict, where: str) -> None:
    """Raise :class:`ContractMismatch` if the contracts differ; log a code-version change."""
    problems = compare_contracts(recorded, current)
    if problems:
        raise ContractMismatch(
            f"refusing to resume the campaign in {where}: it was started with a different "
            + "; ".join(problems)
            + ". Use a new output directory for a different dataset, config or model."
        )
    if recorded.get("code_version") != current.get("code_version"):
        log.warning("campaign %s: code version changed from %s to %s", where, recorded.get("code_version"),
                    current.get("code_version"))
