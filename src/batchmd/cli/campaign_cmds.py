"""``batchmd campaign``: sharded, resumable, multi-GPU campaigns; and torchrun for relax/pipeline.

Subcommands::

    batchmd campaign run CONFIG [-o OUTDIR] [--manifest DATASET]   # alone or under torchrun
    batchmd campaign run PIPELINE.toml --manifest DATASET -o OUTDIR # a batchmd pipeline file, as it is
    batchmd campaign status OUTDIR                                  # progress, attempts, per-rank metrics
    batchmd campaign export OUTDIR -o results.extxyz [--require-complete]

Under ``torchrun`` (``WORLD_SIZE`` set), ``batchmd relax DATASET -o OUTDIR`` and
``batchmd pipeline CONFIG.toml`` (with ``input`` a dataset directory) run as a campaign:
:func:`maybe_run_distributed` is called first by those commands. Re-running the same
command resumes. See ``docs/campaigns.rst``.

Example::

    torchrun --nproc_per_node=4 --no-python batchmd campaign run campaign.json
"""

from __future__ import annotations

import json
import os

__all__ = ["add_parser", "register", "maybe_run_distributed", "config_from_cli_args"]


def add_parser(subparsers) -> None:
    """Register ``batchmd campaign`` (and ``batchmd shard`` if not registered yet)."""
    from batchmd.cli import shard

    shard.add_parser(subparsers)
    if "campaign" in subparsers.choices:
        return
    parser = subparsers.add_parser("campaign", help="sharded multi-GPU campaigns with checkpoint and resume",
                                   description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="campaign_command", metavar="ACTION", parser_class=type(parser))
    run = sub.add_parser("run", help="run or resume a campaign (alone or under torchrun)")
    run.add_argument("config", help="campaign config (JSON or TOML; schema: docs/campaigns.rst), or a pipeline TOML "
                                    "file as batchmd pipeline runs it (with --manifest DATASET -o OUTDIR, or a "
                                    "[campaign] table naming them)")
    run.add_argument("-o", "--output", default=None, help="override the config's output directory")
    run.add_argument("--manifest", default=None, help="override the config's dataset (directory or manifest.json)")
    run.add_argument("--device", default=None, choices=("cpu", "cuda"),
                     help="cpu, or cuda (each rank uses cuda:LOCAL_RANK); default cuda when available")
    run.set_defaults(command=_run)
    status = sub.add_parser("status", help="print a campaign's progress")
    status.add_argument("outdir")
    status.set_defaults(command=_status)
    export = sub.add_parser("export", help="write a campaign's results (as relax writes them), sorted by input index")
    export.add_argument("outdir")
    export.add_argument("-o", "--output", required=True,
                        help="output file; format from the extension (.extxyz, .traj, .json, ...)")
    export.add_argument("--require-complete", action="store_true", help="fail unless every structure has a result")
    export.set_defaults(command=_export)
    parser.set_defaults(command=lambda args: _usage(parser))


register = add_parser


def _usage(parser) -> int:
    import sys

    parser.print_help(sys.stderr)
    return 2


def _context(device: str | None):
    from batchmd.campaign.distributed import RankContext

    return RankContext.from_env(device="cpu" if device == "cpu" else None)


def _execute(config, device: str | None, quiet: bool = False) -> int:
    """Run a campaign on this rank; user errors become :class:`CLIError`."""
    from batchmd.campaign import ContractMismatch, CorruptFileError, run_campaign
    from batchmd.cli.common import CLIError

    from batchmd.workflows.errors import SpecError

    context = _context(device or getattr(config, "device", None))
    try:
        report = run_campaign(config, context=context)
    except (ContractMismatch, CorruptFileError, FileNotFoundError, SpecError) as error:
        raise CLIError(str(error)) from error
    except ValueError as error:  # a structure the stages cannot run (admission), a budget too small
        if not str(error).startswith(("campaign: ", "structures ")):
            raise
        raise CLIError(str(error)) from error
    finally:
        context.close()
    if not quiet and report.summary is not None:
        s = report.summary
        print(f"campaign {config.output}: {s['systems_done']}/{s['systems_total']} structures done on "
              f"{s['world_size']} rank(s), attempt {s['attempt']}, {s['atom_steps_per_second']:.4g} atom-steps/s, "
              f"imbalance {s['imbalance']:.3g}")
    return 0


def _run(args) -> int:
    from batchmd.campaign import CampaignConfig
    from batchmd.cli.common import CLIError

    if not os.path.isfile(args.config):
        raise CLIError(f"{args.config}: no such file")
    try:
        config = CampaignConfig.from_file(args.config, output=args.output, manifest=args.manifest)
    except (ValueError, TypeError) as error:  # SpecError: a bad model, stage or key (the CLI's messages)
        text = str(error)
        raise CLIError(text if text.startswith(str(args.config)) else f"{args.config}: {text}") from error
    return _execute(config, args.device)


def _status(args) -> int:
    from batchmd.campaign.commits import committed_records
    from batchmd.campaign.durable import read_json, read_records
    from batchmd.campaign.layout import CampaignLayout
    from batchmd.cli.common import CLIError

    layout = CampaignLayout(args.outdir)
    if not os.path.exists(layout.contract):
        raise CLIError(f"{args.outdir}: not a campaign directory (no campaign.json)")
    contract = read_json(layout.contract)
    done = sum(r["rows"] for r in committed_records(layout))
    attempts, _ = read_records(layout.attempts)
    print(f"{layout.root}: {done}/{contract['num_structures']} structures committed; "
          f"{len(attempts)} attempt(s); manifest {contract['manifest_version']}")
    for rank in range(max((a["world_size"] for a in attempts), default=0)):
        try:
            m = read_json(layout.metrics_latest(rank))
        except OSError:
            continue
        print(json.dumps({k: m[k] for k in ("rank", "attempt", "systems_done", "systems_total", "progress",
                                             "atom_steps_per_second", "occupancy", "lag_progress", "final")}))
    return 0


def _export(args) -> int:
    """Write the committed results like a ``batchmd relax`` output: same info keys, status words,
    portable info (:func:`batchmd.data.info_io.write_frames`), format from the extension, atomic."""
    from batchmd.campaign import ExactlyOnceError, read_results
    from batchmd.campaign.layout import CampaignLayout
    from batchmd.cli.common import CLIError, output_writer

    output_writer(args.output)  # a bad extension or directory: refused before anything is read
    if not os.path.isfile(CampaignLayout(args.outdir).contract):
        raise CLIError(f"{args.outdir}: not a campaign output directory (no campaign.json): give the OUTDIR of "
                       "`batchmd campaign run` (a dataset from `batchmd shard` is its input, not its output)")
    try:
        frames = read_results(args.outdir, as_atoms=True, require_complete=args.require_complete)
    except (ExactlyOnceError, FileNotFoundError) as error:
        raise CLIError(str(error)) from error
    writer = output_writer(args.output, len(frames))
    staging = f"{os.path.join(os.path.dirname(os.path.abspath(args.output)), '.' + os.path.basename(args.output))}.tmp"
    try:
        writer(frames, staging)
    except Exception as error:
        if os.path.exists(staging):
            os.unlink(staging)
        raise CLIError(f"{args.output}: cannot write it as {writer.format} ({str(error).splitlines()[0]})") from error
    os.replace(staging, args.output)
    print(f"wrote {len(frames)} structures to {args.output}")
    return 0


def config_from_cli_args(args):
    """A :class:`~batchmd.campaign.CampaignConfig` from ``batchmd relax`` or ``batchmd pipeline`` arguments.

    relax: ``args.input`` (a dataset), ``args.output`` (OUTDIR), the stage ``relax`` runs
    (``--optimizer``, ``--fmax``, ``--max-steps``, ``--cell``, ``--pressure``), the model
    options, ``--max-atoms``, ``--refill-every``, ``--dtype``. pipeline: ``args.config`` (its
    TOML, :meth:`CampaignConfig.from_pipeline`: ``input`` a dataset or ``[campaign] manifest``,
    ``output`` OUTDIR, ``-o`` overrides it).
    """
    from batchmd.campaign import CampaignConfig, CorruptFileError, Manifest
    from batchmd.cli.common import CLIError
    from batchmd.workflows.errors import SpecError

    try:
        if hasattr(args, "config"):
            config = CampaignConfig.from_pipeline(args.config, output=args.output)
            source = config.manifest
        else:
            source = args.input
            if isinstance(source, (list, tuple)):  # relax INPUT...: one dataset under torchrun
                if len(source) != 1:
                    names = " ".join(str(s) for s in source)
                    raise CLIError(f"under torchrun, the input must be one sharded dataset; make one with "
                                   f"`batchmd shard {names} DATASET/`")
                source = source[0]
            model = {"name": args.model, "sigma": args.sigma, "epsilon": args.epsilon, "cutoff": args.cutoff}
            stage = {"method": args.optimizer, "fmax": args.fmax, "max_steps": args.max_steps, "cell": args.cell,
                     "pressure": args.pressure}  # the stage batchmd relax runs (batchmd.cli.relax)
            config = CampaignConfig(manifest=source, output=args.output, stages=[stage], dtype=args.dtype,
                                    model={k: v for k, v in model.items() if v is not None},
                                    max_atoms=int(args.max_atoms or 4096), refill_frequency=int(args.refill_every))
    except SpecError as error:
        raise CLIError(str(error)) from None
    hint = f"under torchrun, the input must be a sharded dataset; make one with `batchmd shard {source} DATASET/`"
    if not (os.path.isdir(source) or os.path.basename(source) == "manifest.json"):
        raise CLIError(f"{source}: {hint}")
    try:
        manifest = Manifest.load(source)
    except (FileNotFoundError, CorruptFileError) as error:
        raise CLIError(f"{hint} ({error})") from error
    largest = max((max(s.atom_counts) for s in manifest.shards if s.atom_counts), default=1)
    config.manifest = manifest.root
    config.max_atoms = max(config.max_atoms, largest)
    return config


def maybe_run_distributed(args) -> int | None:
    """Under torchrun, run ``batchmd relax``/``pipeline`` as a campaign and return the exit status.

    Returns None when ``WORLD_SIZE`` is not set (the caller runs its single-process path).
    Re-running the same command resumes (exactly-once results in OUTDIR).
    """
    if "WORLD_SIZE" not in os.environ:  # batchmd.campaign.distributed.under_torchrun, without importing torch
        return None
    from batchmd.cli.common import CLIError

    if getattr(args, "ignore_constraints", False):  # a campaign reads a sharded dataset: constraints were read then
        raise CLIError("--ignore-constraints applies when the dataset is written: batchmd shard --ignore-constraints "
                       "INPUT... DATASET, then run the campaign on DATASET")
    if getattr(args, "no_guards", False):
        raise CLIError("--no-guards is not available in campaigns (torchrun); the runaway guards stay on")
    if getattr(args, "deterministic", False):
        from batchmd.runtime import set_deterministic

        set_deterministic()
    config = config_from_cli_args(args)
    device = getattr(args, "device", None)
    return _execute(config, "cpu" if device == "cpu" else None, quiet=getattr(args, "quiet", False))


if __name__ == "__main__":
    import sys

    from batchmd.cli.main import main

    sys.exit(main(["campaign", *sys.argv[1:]]))
