"""The pipeline file: a multi-stage run in TOML, for ``batchmd pipeline`` and ``batchmd campaign run``.

Schema (every key is checked; an unknown one is an error naming it)::

    input = "structures.extxyz"        # any file ASE reads, or a sharded dataset directory (campaigns)
    output = "relaxed.extxyz"          # format from the extension (a directory for a campaign)
    device = "cuda"                    # optional: cpu | cuda (default: cuda when available)
    dtype = "float64"                  # optional: float32 | float64 (default: float32 for MLIPs, else float64)
    max_atoms = 2048                   # optional: atom budget of the live batch
    refill_every = 10                  # optional: steps between refill points

    [model]                            # a model spec (batchmd.workflows.models); default name = "lj"
    name = "sevennet-0"

    [[stages]]                         # stage specs (batchmd.workflows.stages), run in order
    method = "fire"
    cell = "full"

    [campaign]                         # optional: only read by `batchmd campaign run` (and torchrun)
    manifest = "dataset/"              # the sharded dataset (`batchmd shard INPUT dataset/`)
    output = "run/"                    # the campaign's output directory
    seed = 0                           # and the other operational keys of docs/campaigns.rst

Paths (``input``, ``output``, ``[campaign]`` ``manifest`` and ``output``) are relative to
the file. ``batchmd pipeline`` ignores ``[campaign]`` (its keys are still checked).
"""

from __future__ import annotations

from pathlib import Path

from batchmd.workflows.errors import SpecError
from batchmd.workflows.models import LJ_KEYS
from batchmd.workflows.stages import check_stage

__all__ = ["CAMPAIGN_KEYS", "MODEL_KEYS", "TOP_KEYS", "load_pipeline"]

TOP_KEYS = {"input", "output", "device", "dtype", "max_atoms", "refill_every", "model", "stages", "campaign",
            "trajectory", "traj_every", "traj_fields", "log_every"}
MODEL_KEYS = {"name", *LJ_KEYS}
#: Keys of the ``[campaign]`` table: the operational settings of :class:`batchmd.campaign.CampaignConfig`.
CAMPAIGN_KEYS = {"manifest", "output", "seed", "max_batch_size", "commit_every", "commit_interval_s",
                 "checkpoint_interval_s", "metrics_interval_s"}


def load_pipeline(path, output_given: bool = False) -> dict:
    """Read and check a pipeline TOML file; returns the table with paths resolved against it.

    ``output_given``: the command line names the output (``-o``), so the file need not.

    Raises
    ------
    SpecError
        One line naming the file (and stage, table and key): missing file, invalid TOML,
        unknown key, missing input/output, no stages, a bad stage.
    """
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    try:
        config = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: not valid TOML ({error})") from error
    unknown = sorted(set(config) - TOP_KEYS)
    if unknown:
        raise SpecError(f"{path}: unknown key {unknown[0]!r}; expected {', '.join(sorted(TOP_KEYS))}")
    for key in ("input", "output"):
        if key == "output" and output_given and key not in config:
            continue
        value = config.get(key)
        if key == "input" and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            config[key] = [str(path.parent / v) for v in value]  # files, folders, globs (batchmd.data.inputs)
            continue
        if not isinstance(value, str):
            hint = " (or give -o OUTPUT)" if key == "output" else " or a list of them (files, folders, globs)"
            raise SpecError(f"{path}: {key!r} must be a file name{hint}")
        config[key] = str((path.parent / value))
    if "trajectory" in config:
        if not isinstance(config["trajectory"], str):
            raise SpecError(f"{path}: 'trajectory' must be a file name")
        config["trajectory"] = str(path.parent / config["trajectory"])
    for key in ("traj_every", "log_every"):
        if key in config and (isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1):
            raise SpecError(f"{path}: {key!r} must be an integer >= 1, got {config[key]!r}")
    if "traj_fields" in config and not (isinstance(config["traj_fields"], list)
                                        and all(isinstance(f, str) for f in config["traj_fields"])):
        raise SpecError(f"{path}: 'traj_fields' must be a list of names (velocities, forces, energy, stress)")
    stages = config.get("stages")
    if not isinstance(stages, list) or not stages:
        raise SpecError(f"{path}: at least one [[stages]] table is required")
    for i, spec in enumerate(stages):
        check_stage(spec, where=f"{path}: stages[{i}]")
    model = config.get("model", {})
    if not isinstance(model, dict):
        raise SpecError(f"{path}: [model] must be a table")
    unknown = sorted(set(model) - MODEL_KEYS)
    if unknown:
        raise SpecError(f"{path}: [model]: unknown key {unknown[0]!r}; expected {', '.join(sorted(MODEL_KEYS))}")
    campaign = config.get("campaign", {})
    if not isinstance(campaign, dict):
        raise SpecError(f"{path}: [campaign] must be a table")
    unknown = sorted(set(campaign) - CAMPAIGN_KEYS)
    if unknown:
        raise SpecError(f"{path}: [campaign]: unknown key {unknown[0]!r}; expected {', '.join(sorted(CAMPAIGN_KEYS))}")
    for key in ("manifest", "output"):
        if key in campaign:
            if not isinstance(campaign[key], str):
                raise SpecError(f"{path}: [campaign]: {key} must be a path, got {campaign[key]!r}")
            campaign[key] = str(path.parent / campaign[key])
    return config
