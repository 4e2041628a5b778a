"""Result shards: one Parquet row per finished structure, and :func:`read_results`.

A result shard has the structure columns of an input shard
(:data:`~batchmd.campaign.shards.STRUCTURE_SCHEMA`, with the *final* positions and
velocities) plus the outcome::

    system_id   int64        = index, the global input index (stable across resumes and world sizes)
    energy      double       eV
    forces      list<double> [3N] eV/Å
    stress      list<double> [9]  eV/Å^3, null if the model gives none
    status      int32        SystemStatus (1 CONVERGED, 2 OUT_OF_STEPS, 3 FAILED)
    failure     int32        FailureReason bits of a FAILED structure (0 otherwise); frames read
                             with ``as_atoms=True`` get ``info["failure"]`` as text
    converged   bool
    n_steps     int32        steps taken over all stages
    fmax        double       largest atomic force at the end, eV/Å
    rank, attempt int32      who wrote it, in which start of the campaign
    stage_info  string       JSON of the per-stage keys as the CLI writes them
                             (``stage{k}_status`` as a word, ``stage{k}_steps``,
                             ``stage{k}_fmax``, ``stage{k}_temperature``); null in older shards

Read as atoms (``read_results(as_atoms=True)``, ``batchmd campaign export``), a result has
the info keys of a ``batchmd relax``/``pipeline`` output (``model`` as its name,
``stage{k}_method`` from the contract, ``fmax_atoms``): ``status`` as the CLI's word
(``converged``, ``completed``, ``out_of_steps``, ``failed``; the last stage's, as
:func:`batchmd.ase.results_to_atoms` says it), ``stage{k}_*``, ``source_file`` and
``source_index`` (the file and frame the structure was sharded from), and the input's own
info as stored in the shard (portable, :func:`batchmd.data.info_io.portable_info`).

Only shards recorded in a commit log count (see :mod:`batchmd.campaign.commits`).

Example
-------
>>> # from batchmd.campaign import read_results
>>> # batch = read_results("run/")                  # Batch, system_id = input index, sorted
>>> # frames = read_results("run/", as_atoms=True)  # list[ase.Atoms], info["system_id"]
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from batchmd.campaign.durable import CorruptFileError, read_json
from batchmd.campaign.layout import CampaignLayout
from batchmd.campaign.shards import STRUCTURE_SCHEMA

__all__ = ["RESULT_SCHEMA", "batch_to_table", "read_result_table", "read_results", "ExactlyOnceError"]

RESULT_SCHEMA = pa.schema(
    list(STRUCTURE_SCHEMA)
    + [
        ("system_id", pa.int64()),
        ("energy", pa.float64()),
        ("forces", pa.list_(pa.float64())),
        ("stress", pa.list_(pa.float64())),
        ("status", pa.int32()),
        ("failure", pa.int32()),
        ("converged", pa.bool_()),
        ("n_steps", pa.int32()),
        ("fmax", pa.float64()),
        ("rank", pa.int32()),
        ("attempt", pa.int32()),
        ("stage_info", pa.string()),
    ]
)

#: Per-stage system fields kept in the ``stage_info`` column (see :mod:`batchmd.dynamics.stage_results`).
_STAGE_SUFFIXES = ("status", "steps", "fmax", "temperature")


class ExactlyOnceError(RuntimeError):
    """Committed results hold a structure twice, or (when required) miss one."""


def _np(t: torch.Tensor, dtype=None) -> np.ndarray:
    a = t.detach().cpu()
    if a.is_floating_point():
        a = a.double()
    a = a.numpy()
    return a if dtype is None else a.astype(dtype)


def _list(values: np.ndarray, offsets: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=type_.value_type))


def batch_to_table(batch, index: np.ndarray, meta: list[dict], rank: int, attempt: int) -> pa.Table:
    """Result rows for every system of a graduated CPU ``batch``.

    Parameters
    ----------
    batch : Batch
        Graduated systems (``status``, ``n_steps``, ``fmax``, ``energies``, ``forces``).
    index : numpy.ndarray [B] int64
        Global input index of each system.
    meta : list of dict
        Per system ``source``, ``frame`` and ``info`` of the input row.
    rank, attempt : int
        Writer identity.
    """
    b = batch.num_graphs
    ptr = _np(batch.ptr, np.int64)
    f64 = pa.float64()
    columns = {
        "index": pa.array(index, pa.int64()),
        "source": pa.array([m["source"] for m in meta], pa.string()),
        "frame": pa.array([int(m["frame"]) for m in meta], pa.int64()),
        "num_atoms": pa.array(np.diff(ptr).astype(np.int32)),
        "atomic_numbers": _list(_np(batch.atomic_numbers, np.int32), ptr, pa.list_(pa.int32())),
        "positions": _list(_np(batch.positions).reshape(-1), 3 * ptr, pa.list_(f64)),
        "masses": _list(_np(batch.atomic_masses), ptr, pa.list_(f64)),
        "cell": _list(_np(batch.cell).reshape(-1), 9 * np.arange(b + 1), pa.list_(f64)),
        "pbc": _list(_np(batch.pbc, bool).reshape(-1), 3 * np.arange(b + 1), pa.list_(pa.bool_())),
        "velocities": (
            _list(_np(batch.velocities).reshape(-1), 3 * ptr, pa.list_(f64))
            if batch.velocities is not None
            else pa.nulls(b, pa.list_(f64))
        ),
        "info": pa.array([m["info"] for m in meta], pa.string()),
        "fixed": (
            _list(_np(batch["fixed"], bool), ptr, pa.list_(pa.bool_()))
            if batch.has_field("fixed")
            else pa.nulls(b, pa.list_(pa.bool_()))
        ),
        "fix_com": (pa.array([bool(x) or None for x in _np(batch["fix_com"], bool).reshape(-1)], pa.bool_())
                    if batch.has_field("fix_com") else pa.nulls(b, pa.bool_())),
        "system_id": pa.array(index, pa.int64()),
        "energy": pa.array(_np(batch.energies).reshape(-1), f64),
        "forces": _list(_np(batch.forces).reshape(-1), 3 * ptr, pa.list_(f64)),
        "stress": (
            _list(_np(batch.stress).reshape(-1), 9 * np.arange(b + 1), pa.list_(f64))
            if batch.stress is not None
            else pa.nulls(b, pa.list_(f64))
        ),
        "status": pa.array(_np(batch["status"], np.int32).reshape(-1)),
        "failure": pa.array(_np(batch["failure"], np.int32).reshape(-1) if batch.has_field("failure")
                            else np.zeros(b, np.int32)),
        "converged": pa.array(_np(batch["converged"], bool).reshape(-1) if batch.has_field("converged")
                              else _np(batch["status"]).reshape(-1) == 1),
        "n_steps": pa.array(_np(batch["n_steps"], np.int32).reshape(-1)),
        "fmax": pa.array(_np(batch["fmax"]).reshape(-1), f64),
        "rank": pa.array(np.full(b, rank, np.int32)),
        "attempt": pa.array(np.full(b, attempt, np.int32)),
        "stage_info": pa.array(_stage_info_json(batch), pa.string()),
    }
    return pa.Table.from_arrays([columns[f.name] for f in RESULT_SCHEMA], schema=RESULT_SCHEMA)


def _stage_info_json(batch) -> list:
    """Per system, JSON of its ``stage{k}_*`` fields with statuses as words (None without any)."""
    import re

    from batchmd.dynamics.stage_results import status_name

    names = sorted((name for name in batch.fields if re.fullmatch(r"stage\d+_(status|steps|fmax|temperature)", name)),
                   key=lambda n: (int(n[5:].split("_")[0]), n))
    if not names:
        return [None] * batch.num_graphs
    values = {name: _np(batch[name]).reshape(-1).tolist() for name in names}
    rows = []
    for i in range(batch.num_graphs):
        row = {}
        for name in names:
            value = values[name][i]
            row[name] = status_name(value) if name.endswith("_status") else value
        rows.append(json.dumps(row, sort_keys=True))
    return rows


def _status_info(info: dict, code: int, converged: bool, stage_json) -> None:
    """``status`` (the CLI's word) and the per-stage keys of a result row, into ``info``."""
    from batchmd.dynamics.stage_results import status_name
    from batchmd.dynamics.status import SystemStatus

    stages = json.loads(stage_json) if stage_json else {}
    info.update(stages)
    entered = [value for key, value in sorted(stages.items(), key=lambda kv: int(kv[0][5:].split("_")[0]))
               if key.endswith("_status") and value != "skipped"]
    if entered:
        info["status"] = entered[-1]
    elif code == int(SystemStatus.CONVERGED) and not converged:
        info["status"] = "completed"  # older shards: ran its steps (MD) without meeting a criterion
    else:
        info["status"] = status_name(code)


def _cli_labels(frames, layout: CampaignLayout) -> None:
    """The labels a CLI output carries: the model's keys (``model`` and its parameters, e.g.
    ``lj_sigma``), ``stage{k}_method`` (from the contract's stages), the targets each stage ran
    at (``stage{k}_target_temperature_K`` / ``stage{k}_target_pressure_GPa``, see
    :func:`batchmd.ase_results.record_stage_targets`) and ``fmax_atoms`` (largest atomic force
    norm, constraints applied, eV/Å). Campaigns started before the contract recorded
    ``model_info`` / ``stage_targets`` get the model's name and no targets."""
    from batchmd.ase_results import record_stage_targets

    try:
        contract = read_json(layout.contract)
    except (OSError, CorruptFileError):
        contract = {}
    physics = contract.get("physics", {})
    model = (physics.get("model") or {}).get("name")
    model_info = contract.get("model_info") or ({"model": str(model)} if model is not None else {})
    targets = contract.get("stage_targets")
    methods = [stage.get("method") for stage in physics.get("stages") or [] if isinstance(stage, dict)]
    for atoms in frames:
        if targets is not None:
            record_stage_targets(atoms.info, atoms.info, targets)
        for key, value in model_info.items():
            atoms.info[key] = str(value)  # as the CLI: the model that ran, over an input's own
        for k, method in enumerate(methods):
            if method is not None:
                atoms.info[f"stage{k}_method"] = str(method)
        if len(atoms) and atoms.calc is not None and np.isfinite(atoms.calc.results["forces"]).all():
            atoms.info["fmax_atoms"] = float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def read_result_table(path, sha256: str | None = None, columns=None) -> pa.Table:
    """Read one result shard, refusing it if its bytes do not match ``sha256``."""
    import hashlib

    with open(path, "rb") as handle:
        data = handle.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptFileError(f"{path}: checksum does not match its commit record; the result shard is damaged")
    return pq.read_table(io.BytesIO(data), columns=columns)


def _table_to_atoms(table: pa.Table, with_input_info: bool, as_words: bool | None = None) -> list:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    from batchmd.campaign.shards import DecodedShard

    as_words = with_input_info if as_words is None else as_words
    decoded = DecodedShard(table)
    cols = {name: table.column(name).to_numpy(zero_copy_only=False)
            for name in ("system_id", "energy", "status", "converged", "n_steps", "fmax", "rank", "attempt")}
    from batchmd.dynamics.status import failure_text

    failure = table.column("failure").to_numpy() if "failure" in table.column_names else None  # older shards: none
    stage_info = table.column("stage_info").to_pylist() if "stage_info" in table.column_names else None
    forces = table.column("forces").to_pylist()
    stress = table.column("stress").to_pylist()
    frames = []
    for row in range(table.num_rows):
        s = decoded.structure(row)
        atoms = Atoms(numbers=s["atomic_numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"],
                      masses=s["atomic_masses"])
        if s["velocities"] is not None:
            atoms.set_velocities(s["velocities"])
        constraints = []
        if s["fixed"] is not None and s["fixed"].any():
            from ase.constraints import FixAtoms

            constraints.append(FixAtoms(mask=s["fixed"].astype(bool)))
        if s["fix_com"]:
            from ase.constraints import FixCom

            constraints.append(FixCom())
        if constraints:
            atoms.set_constraint(constraints)
        if with_input_info and decoded.info[row]:
            atoms.info.update(json.loads(decoded.info[row]))
        atoms.info.update({
            "system_id": int(cols["system_id"][row]),
            "input_index": int(decoded.index[row]),
            "source_file": decoded.source[row],
            "source_index": int(decoded.frame[row]),
            "converged": bool(cols["converged"][row]),
            "n_steps": int(cols["n_steps"][row]),
            "fmax": float(cols["fmax"][row]),
        })
        if not as_words:  # a Batch: numeric system fields
            atoms.info["status"] = int(cols["status"][row])
        else:
            _status_info(atoms.info, int(cols["status"][row]), bool(cols["converged"][row]),
                         stage_info[row] if stage_info is not None else None)
        if failure is not None and failure[row]:
            atoms.info["failure"] = failure_text(int(failure[row]), int(cols["n_steps"][row]))
        results = {"energy": float(cols["energy"][row]), "forces": np.asarray(forces[row]).reshape(-1, 3)}
        if stress[row] is not None:
            results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(stress[row]).reshape(3, 3))
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def read_results(outdir, as_atoms: bool = False, verify: bool = True, require_complete: bool = False,
                 dtype: torch.dtype = torch.float64):
    """Every committed result of a campaign, one per input structure, sorted by input index.

    Parameters
    ----------
    outdir : path
        The campaign's output directory.
    as_atoms : bool
        Return ``list[ase.Atoms]`` (energy, forces, stress in a single-point calculator;
        ``info`` holds ``system_id``, ``input_index``, ``source_file``, ``source_index``,
        ``status`` (the CLI's word), ``converged``, ``n_steps``, ``fmax``, the per-stage
        ``stage{k}_*`` keys (targets included), the model's keys (``model``, ``lj_sigma``, ...),
        ``fmax_atoms`` and the input's own ``info``: the keys of the CLI's output frames) instead of a
        :class:`~batchmd.data.Batch` (float ``dtype``; system fields ``system_id``,
        ``input_index``, ``status`` (code), ``converged``, ``n_steps``, ``fmax``,
        ``source_index``).
    verify : bool
        Check every result shard against the SHA-256 in its commit record.
    require_complete : bool
        Raise :class:`ExactlyOnceError` unless every structure of the manifest is present.

    Returns
    -------
    Batch or list of ase.Atoms or None
        None when nothing is committed yet (with ``require_complete=False``).

    Raises
    ------
    ExactlyOnceError
        A structure appears in two committed shards (never expected), or is missing
        while ``require_complete``.
    CorruptFileError
        A committed shard or log is damaged.
    """
    from batchmd.campaign.commits import committed_records

    layout = CampaignLayout(outdir)
    records = committed_records(layout)
    tables = [read_result_table(layout.result_path(r["file"]), r["sha256"] if verify else None) for r in records]
    table = pa.concat_tables(tables, promote_options="default") if tables else RESULT_SCHEMA.empty_table()
    index = table.column("index").to_numpy()
    order = np.argsort(index, kind="stable")
    index = index[order]
    if index.size and (np.diff(index) == 0).any():
        dup = int(index[1:][np.diff(index) == 0][0])
        raise ExactlyOnceError(f"{layout.root}: structure {dup} appears in more than one committed result shard")
    if require_complete:
        total = read_json(layout.contract)["num_structures"]
        if index.size != total:
            missing = sorted(set(range(total)) - set(index.tolist()))
            raise ExactlyOnceError(f"{layout.root}: {len(missing)} of {total} structures have no result yet "
                                   f"(first missing: {missing[:5]}); resume the campaign")
    if table.num_rows == 0:
        return [] if as_atoms else None
    table = table.take(pa.array(order))
    frames = _table_to_atoms(table, with_input_info=as_atoms)
    if as_atoms:
        _cli_labels(frames, layout)
        return frames
    from batchmd.data import Batch

    return Batch.from_ase(frames, dtype=dtype)


def result_path_exists(layout: CampaignLayout, name: str) -> bool:
    """Whether result shard ``name`` exists."""
    return os.path.exists(layout.result_path(name))
