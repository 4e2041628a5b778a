"""Campaigns beyond one GPU: sharded datasets, torchrun, checkpoint and resume, exactly-once results.

Data plane:

- :func:`write_dataset` (``batchmd shard INPUT... OUTDIR``): ASE-readable files to
  immutable Parquet shards plus a versioned :class:`Manifest`; invalid frames go to a
  report with a reason each.
- :class:`ShardedDataset`: the sampler's dataset protocol over a manifest.
- :func:`assign`: deterministic shard -> rank assignment from
  (seed, manifest version, world size).

Runs: :func:`run_campaign` (per rank; under ``torchrun`` or alone) with a
:class:`CampaignConfig`; :func:`read_results` returns one result per input structure.
See ``docs/campaigns.rst``.

Example
-------
>>> from batchmd.campaign import CampaignConfig, read_results, run_campaign, write_dataset
>>> # manifest = write_dataset(["structures.extxyz"], "dataset/")
>>> # run_campaign(CampaignConfig(manifest="dataset/", output="run/", model={"name": "lj", "sigma": 3.405,
>>> #     "epsilon": 0.0104, "cutoff": 8.5}, stages=[{"method": "fire", "fmax": 0.01, "max_steps": 500}]))
>>> # batch = read_results("run/")
"""

from batchmd.campaign.config import CampaignConfig
from batchmd.campaign.contract import ContractMismatch
from batchmd.campaign.dataset import ShardedDataset
from batchmd.campaign.durable import CorruptFileError
from batchmd.campaign.ingest import write_dataset
from batchmd.campaign.manifest import Manifest
from batchmd.campaign.ownership import assign, assign_manifest
from batchmd.campaign.results import ExactlyOnceError, read_results
from batchmd.campaign.runner import CampaignReport, run_campaign

__all__ = [
    "CampaignConfig",
    "CampaignReport",
    "ContractMismatch",
    "CorruptFileError",
    "ExactlyOnceError",
    "Manifest",
    "ShardedDataset",
    "assign",
    "assign_manifest",
    "read_results",
    "run_campaign",
    "write_dataset",
]
