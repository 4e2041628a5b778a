"""The per-rank campaign loop: prepare, own, skip what is done, run inflight, commit, summarise.

Every rank runs :func:`run_campaign`::

    rank 0: write or check campaign.json (the contract), verify checkpoints, repair the
            output directory after a crash, record the attempt         -> start barrier
    every rank: build the model (batchmd.workflows.models: the registry's names) on its
            device and the stages (batchmd.workflows.stages: the pipeline's keys), and
            check every structure against every stage (admission) before anything is written;
            own shards by (seed, manifest version, world size); done = indices in
            committed result shards; run FusedStage + SizeAwareSampler over the rest on
            cuda:LOCAL_RANK (or cpu), as batchmd.ase.run_frames runs the CLI's (stress
            computed, refills in place, runaway guards on; a structure's info
            temperature_K / pressure_GPa are its own targets), committing result shards
            every K systems or T s, checkpointing and writing metrics at their intervals
    end:    final commit, checkpoint, metrics                          -> end barrier
    rank 0: gather per-rank numbers, write metrics/summary.json

Between the barriers ranks never wait on each other.

Identity: the sampler stamps each system with ``system_id`` = its global input index
(:meth:`ShardedDataset.identity`) and ``sample_index`` (index into this rank's dataset
view); the runner maps ``sample_index`` to the global input index, which is ``system_id``
and ``index`` in the result shards -- stable across resumes and world sizes, so random
streams keyed on it (Langevin noise, Maxwell-Boltzmann draws) do not depend on either.

Example
-------
>>> # from batchmd.campaign import CampaignConfig, run_campaign
>>> # report = run_campaign(CampaignConfig.from_file("campaign.json"))   # alone or under torchrun
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from batchmd.campaign.checkpoint import verify_checkpoints, write_checkpoint
from batchmd.campaign.commits import ResultWriter, committed_indices, repair
from batchmd.campaign.config import build_model, build_stages, needs_elements
from batchmd.campaign.contract import ContractMismatch, build_contract, check_contract
from batchmd.campaign.dataset import ShardedDataset
from batchmd.campaign.distributed import RankContext
from batchmd.campaign.durable import append_record, read_json, read_records, rewrite_records, write_json
from batchmd.campaign.layout import CampaignLayout
from batchmd.campaign.manifest import Manifest
from batchmd.campaign.metrics import SUMMARY_FIELDS, MetricsRecorder, write_summary
from batchmd.campaign.ownership import owned_indices
from batchmd.dynamics.hooks import Hook, HookStage

__all__ = ["run_campaign", "prepare_outdir", "CampaignReport", "check_admission", "dataset_elements"]

log = logging.getLogger(__name__)

_OK, _REFUSED, _FAILED = 0, 1, 2


@dataclass
class CampaignReport:
    """What one rank did in one attempt.

    Attributes
    ----------
    rank, world_size, attempt : int
    owned : int
        Structures this rank owns.
    skipped : int
        Of those, committed by earlier attempts.
    committed : int
        Committed by this attempt.
    failed : int
        Finished with status FAILED (non-finite energy or forces).
    elapsed_s : float
        Seconds from the start barrier to this rank's end.
    summary : dict or None
        ``metrics/summary.json`` (rank 0 only).
    """

    rank: int
    world_size: int
    attempt: int
    owned: int
    skipped: int
    committed: int
    failed: int
    elapsed_s: float
    summary: dict | None = None

    def as_dict(self) -> dict:
        """As a plain dict."""
        return asdict(self)


def prepare_outdir(layout: CampaignLayout, contract: dict, world_size: int) -> int:
    """Rank 0's start-up: contract, checkpoints, crash repair, attempt record; returns the attempt number.

    Raises
    ------
    ContractMismatch
        The directory holds a campaign with a different manifest, physics or model.
    CorruptFileError
        A checkpoint, commit log line or committed result shard is damaged.
    """
    layout.make_dirs()
    if os.path.exists(layout.contract):
        check_contract(read_json(layout.contract), contract, layout.root)
    else:
        write_json(layout.contract, contract)
    previous = verify_checkpoints(layout, contract)
    repaired = repair(layout)
    done = committed_indices(layout, verify=True)
    if done.size and (np.diff(done) == 0).any():
        raise RuntimeError(f"{layout.root}: a structure is committed twice; the output directory was altered")
    attempts, torn = read_records(layout.attempts)
    if torn:
        rewrite_records(layout.attempts, attempts)
    attempt = len(attempts) + 1
    in_flight = sum(len(c["cursor"].get("in_flight", [])) + len(c["cursor"].get("buffered", [])) for c in previous)
    append_record(layout.attempts, {
        "attempt": attempt, "world_size": int(world_size), "time": time.time(),
        "code_version": contract["code_version"], "committed_before": int(done.size),
        "orphans_removed": repaired["orphans"], "torn_commit_lines": repaired["torn_lines"],
        "unfinished_at_last_checkpoint": int(in_flight),
    })
    if attempt > 1:
        log.info("campaign %s: resuming as attempt %d; %d structures already committed, %d orphan shards removed",
                 layout.root, attempt, done.size, len(repaired["orphans"]))
    return attempt


def check_admission(manifest, indices, stages) -> None:
    """Refuse a campaign whose dataset holds a structure one of ``stages`` cannot run, before anything runs.

    The rules of :mod:`batchmd.dynamics.admission` (the model's elements, periodicity,
    constraints), for every structure of ``manifest`` (or global ``indices``), entering at
    stage 0. Reads each shard once.

    Raises
    ------
    ValueError
        Naming the structure's global input index, its source file and frame, e.g.
        ``"campaign: structure 3 (in.extxyz frame 3) holds ... (and 1 more structures)"``.
    """
    from batchmd.campaign.shards import DecodedShard
    from batchmd.dynamics.admission import Admission

    from batchmd.dynamics.admission import stage_requirements

    rules = [stage_requirements(stage) for stage in stages]
    model = getattr(stages[0], "model", None) if stages else None
    if getattr(model, "supported_numbers", None) is None and not any(
            r.needs_pbc or not r.allows_fixed or not r.allows_fix_com for r in rules):
        return  # no rule any structure could break: no shard is read
    admission = Admission(stages)
    wanted = None if indices is None else set(int(i) for i in np.asarray(indices).reshape(-1))
    problems = []
    for position, info in enumerate(manifest.shards):
        if wanted is not None and not wanted.intersection(info.indices):
            continue
        shard = DecodedShard(manifest.read_shard(position))
        for row in range(shard.num_rows):
            index = int(shard.index[row])
            if wanted is not None and index not in wanted:
                continue
            fields = shard.structure(row)
            fixed = fields["fixed"]
            found = admission.problem(fields["atomic_numbers"], fields["pbc"], fields["cell"],
                                      0 if fixed is None else int(np.asarray(fixed).sum()), bool(fields["fix_com"]))
            if found is not None:
                problems.append((index, f"{shard.source[row]} frame {int(shard.frame[row])}", found[1]))
    if problems:
        index, where, phrase = min(problems)
        more = f" (and {len(problems) - 1} more structures)" if len(problems) > 1 else ""
        raise ValueError(f"campaign: structure {index} ({where}) {phrase}{more}")


def dataset_elements(manifest) -> set:
    """The atomic numbers present in ``manifest``'s structures (reads the ``atomic_numbers`` column of each shard)."""
    import pyarrow.compute as pc

    numbers = set()
    for position in range(len(manifest.shards)):
        column = manifest.read_shard(position, columns=["atomic_numbers"]).column("atomic_numbers")
        numbers.update(int(z) for z in pc.unique(pc.list_flatten(column)).to_pylist())
    return numbers


class _ServedSamples:
    """Dataset wrapper remembering the input metadata of served samples until they are written."""

    def __init__(self, dataset: ShardedDataset) -> None:
        self.dataset = dataset
        self.meta: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def get_metadata(self, i: int):
        return self.dataset.get_metadata(i)

    def identity(self, i: int) -> int:
        return self.dataset.identity(i)

    def __getitem__(self, i: int):
        data, meta = self.dataset[i]
        self.meta[int(i)] = meta
        return data, meta

    def resolve(self, sample_index: np.ndarray):
        metas = [self.meta.pop(int(i)) for i in sample_index]
        return np.array([m["index"] for m in metas], dtype=np.int64), metas

    def in_flight(self) -> list[int]:
        return sorted(m["index"] for m in self.meta.values())


class _CampaignHook(Hook):
    """Between refills: time-based commits, checkpoints and metrics records (host-side only)."""

    stage = HookStage.AFTER_STEP

    def __init__(self, frequency: int, tick) -> None:
        self.frequency = int(frequency)
        self.tick = tick

    def __call__(self, batch, context) -> None:
        self.tick(context.stats)


def _start(config, ctx: RankContext, layout: CampaignLayout, contract: dict) -> int:
    """Rank 0 prepares; every rank learns the verdict and the attempt number."""
    status, error = _OK, None
    if ctx.rank == 0:
        try:
            prepare_outdir(layout, contract, ctx.world_size)
        except ContractMismatch as err:
            status, error = _REFUSED, err
        except Exception as err:  # reported to the other ranks, re-raised here
            status, error = _FAILED, err
    status = ctx.broadcast_int(status)
    if error is not None:
        raise error
    if status == _REFUSED:
        check_contract(read_json(layout.contract), contract, layout.root)
    if status != _OK:
        raise RuntimeError(f"rank 0 could not prepare {layout.root}; see its error")
    attempts, _ = read_records(layout.attempts)
    return int(attempts[-1]["attempt"])


def run_campaign(config, hooks=(), context: RankContext | None = None) -> CampaignReport:
    """Run (or resume) a campaign on this rank; see the module docstring.

    Parameters
    ----------
    config : CampaignConfig
    hooks : sequence of Hook
        Extra run-level hooks for the rank's :class:`~batchmd.dynamics.FusedStage`.
    context : RankContext, optional
        Default :meth:`RankContext.from_env` (torchrun's environment, or a lone process).

    Returns
    -------
    CampaignReport

    Raises
    ------
    ContractMismatch
        On every rank, when OUTDIR holds a campaign with another manifest, config or model.
    """
    ctx = context or RankContext.from_env()
    try:
        return _run(config, ctx, list(hooks))
    finally:
        if context is None:
            ctx.close()


def _run(config, ctx: RankContext, hooks: list) -> CampaignReport:
    from batchmd.dynamics import FusedStage, SizeAwareSampler

    layout = CampaignLayout(config.output)
    manifest = Manifest.load(config.manifest)
    numbers = dataset_elements(manifest) if needs_elements(config.model) else None
    model = build_model(config.model, device=ctx.device, dtype=config.torch_dtype, numbers=numbers)
    built = build_stages(config.stages, model)
    check_admission(manifest, None, built)  # every rank, before anything is written
    contract = build_contract(config, manifest, model, built)
    attempt = _start(config, ctx, layout, contract)
    ctx.barrier()
    started = time.perf_counter()

    owned = np.asarray(owned_indices(manifest, ctx.rank, ctx.world_size, config.seed), dtype=np.int64)
    done = committed_indices(layout, verify=False)
    remaining = owned[~np.isin(owned, done)]
    too_big = [int(g) for g in remaining if manifest.atom_count(int(g)) > config.max_atoms]
    if too_big:
        raise ValueError(f"structures {too_big[:5]} have more atoms than max_atoms={config.max_atoms}; raise it")
    served = _ServedSamples(ShardedDataset(manifest, indices=remaining, dtype=config.torch_dtype))
    writer = ResultWriter(layout, ctx.rank, attempt, served.resolve, config.commit_every, config.commit_interval_s)
    metrics = MetricsRecorder(layout, ctx.rank, ctx.world_size, attempt, owned.size, owned.size - remaining.size,
                              config.metrics_interval_s)
    skipped = int(owned.size - remaining.size)

    def cursor(final: bool) -> dict:
        return {"owned": int(owned.size), "done_before": skipped, "committed": writer.committed,
                "buffered": list(writer.buffered_indices), "in_flight": [] if final else served.in_flight(),
                "remaining": int(remaining.size) - writer.committed - len(writer.buffered_indices)
                - (0 if final else len(served.meta)), "final": final}

    next_checkpoint = [time.perf_counter() + config.checkpoint_interval_s]

    def tick(stats) -> None:
        writer.maybe_commit()
        now = time.perf_counter()
        if now >= next_checkpoint[0]:
            write_checkpoint(layout, ctx.rank, ctx.world_size, attempt, contract, cursor(False))
            next_checkpoint[0] = now + config.checkpoint_interval_s
        if metrics.due():
            metrics.record(stats, writer.committed, len(writer.buffered_indices), writer.num_failed)

    stats = None
    if remaining.size:
        model = model.to(ctx.device) if hasattr(model, "to") else model
        stages = build_stages(config.stages, model)
        sampler = SizeAwareSampler(served, max_atoms=config.max_atoms, max_batch_size=config.max_batch_size)
        fused = FusedStage([(k, s) for k, s in enumerate(stages)], sampler=sampler, sinks=[writer],
                           hooks=[_CampaignHook(config.refill_frequency, tick), *hooks],
                           refill_frequency=config.refill_frequency, device=ctx.device, dtype=config.torch_dtype,
                           compute_stress=True, refill_in_place=True)  # as the CLI (batchmd.ase.run_frames)
        fused.run(batch=None)
        stats = fused.stats
    writer.commit()
    write_checkpoint(layout, ctx.rank, ctx.world_size, attempt, contract, cursor(True))
    final = metrics.record(stats, writer.committed, 0, writer.num_failed, final=True)
    elapsed = time.perf_counter() - started

    ctx.barrier()
    numbers = {**final, "elapsed_s": elapsed}
    gathered = ctx.all_gather_floats([float(numbers[k]) for k in SUMMARY_FIELDS])
    summary = write_summary(layout, gathered, attempt, manifest.num_invalid) if ctx.rank == 0 else None
    return CampaignReport(ctx.rank, ctx.world_size, attempt, int(owned.size), skipped, writer.committed,
                          writer.num_failed, elapsed, summary)
