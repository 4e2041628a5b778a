"""Thermo logs: per-system thermodynamic rows every N steps, in Parquet.

:class:`ThermoLogHook` records, for every system every ``every`` of its stage steps (the
schedule of :mod:`batchmd.trajectory.capture`), one row of :data:`COLUMNS`:

- ``temperature_K``: ``2 E_kin / (g k_B)`` with ``g`` the system's degrees of freedom
  (:func:`batchmd.dynamics.constraints.system_dof`: ``3N - 3 N_fixed - 3 [FixCom]``, ASE's count);
- ``potential_energy_eV``, ``kinetic_energy_eV``, ``total_energy_eV``;
- ``conserved_energy_eV``: the stage's ``conserved_energy`` (Nosé-Hoover chain, MTK NPT: ASE's
  ``get_conserved_energy``), the total energy in NVE, NaN otherwise (Langevin, optimizers);
- ``pressure_GPa`` = ``(-tr(stress)/3 + 2 E_kin / (3 V))``, as ASE's
  ``get_stress(include_ideal_gas=True)`` (NaN where the stress is not computed);
- ``volume_A3``, ``density_g_cm3`` (periodic 3-D cells; NaN otherwise);
- ``fmax_eV_A``: the stage's force criterion value (optimizers: through the cell filter);
- ``system_id``, ``step`` (steps in total), ``stage``, ``stage_step``, ``time_fs``
  (``stage_step * dt``; NaN in optimizer stages).

Temperatures and kinetic energies are NaN in optimizer stages when the stages are known.
The log is written as immutable Parquet parts (``PATH.parts/seg-*.parquet``, each with the
ids of the systems completed in its metadata) and merged at the end of the run into
``PATH``, rows sorted by (system_id, step, stage): a resumed run's log equals an
uninterrupted one's. :func:`read_thermo` reads either form.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from batchmd.trajectory.capture import FileRecorder
from batchmd.trajectory.segments import (atomic_write, discard_parts, next_segment, parts_dir, reopen_merged,
                                         segment_paths)
from batchmd.trajectory.writer import BackgroundWriter

__all__ = ["ThermoLogHook", "COLUMNS", "read_thermo", "finalize_log", "log_done_ids", "prepare_log_resume",
           "thermo_path"]

COLUMNS = ("system_id", "step", "stage", "stage_step", "time_fs", "temperature_K", "potential_energy_eV",
           "kinetic_energy_eV", "total_energy_eV", "conserved_energy_eV", "pressure_GPa", "volume_A3",
           "density_g_cm3", "fmax_eV_A")
_DONE_KEY = b"batchmd_done"
_G_CM3 = 1.66053906660  # g/cm^3 per amu/Å^3


def thermo_path(output) -> Path:
    """``nvt.extxyz`` -> ``nvt.thermo.parquet`` (beside the output)."""
    output = Path(output)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(stem + ".thermo.parquet")


def _stage_kinds(stages) -> tuple[list, list]:
    """Per stage: dt (fs or None) and how its conserved energy is had ("device", "total" or None)."""
    from batchmd.trajectory.store import stage_timesteps

    dts = stage_timesteps(stages)
    kinds = []
    for stage in stages or []:
        if callable(getattr(stage, "conserved_energy", None)):
            kinds.append("device")
        elif type(stage).__name__ == "NVE":
            kinds.append("total")
        else:
            kinds.append(None)
    return dts, kinds


class _ParquetTarget:
    def __init__(self, path: Path, dts: list, kinds: list, md_known: bool) -> None:
        self.path, self.dts, self.kinds, self.md_known = Path(path), dts, kinds, md_known
        self._cols, self._done = [], []
        self.pending_bytes = 0
        self.segments = 0
        self.rows = 0

    def committed_text(self) -> str:
        return f"the {self.segments} parts ({self.rows} rows) committed before in {parts_dir(self.path)}"

    def add(self, arrays: dict) -> None:
        import ase.units

        f, i = arrays["sys_float"].astype(np.float64), arrays["sys_int"]
        energy, ke, dof, fmax, conserved = f[:, 0], f[:, 1], f[:, 2], f[:, 3], f[:, 4]
        cell, mass, trace = f[:, 5:14].reshape(-1, 3, 3), f[:, 14], f[:, 15]
        stage = i[:, 2].astype(np.int32)
        n = len(stage)
        dt = np.array([np.nan if d is None else d for d in self.dts] or [np.nan])
        k = np.clip(stage, 0, len(dt) - 1)
        md = ~np.isnan(dt[k]) if self.md_known else np.ones(n, bool)
        periodic = i[:, 5:8].astype(bool).all(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            volume = np.where(periodic, np.abs(np.linalg.det(cell)) if n else np.zeros(0), np.nan)
            volume = np.where(volume > 0, volume, np.nan)
            temperature = np.where(dof > 0, 2.0 * ke / (np.maximum(dof, 1.0) * ase.units.kB), 0.0)
            pressure = (-trace / 3.0 + 2.0 * ke / (3.0 * volume)) / ase.units.GPa
        kinds = np.array([{"device": 1, "total": 2}.get(x, 0) for x in self.kinds] or [0])[k]
        total = energy + ke
        cols = {
            "system_id": i[:, 0].astype(np.int64), "step": i[:, 1].astype(np.int64), "stage": stage,
            "stage_step": i[:, 3].astype(np.int64), "time_fs": i[:, 3] * dt[k],
            "temperature_K": np.where(md, temperature, np.nan), "potential_energy_eV": energy,
            "kinetic_energy_eV": np.where(md, ke, np.nan), "total_energy_eV": np.where(md, total, np.nan),
            "conserved_energy_eV": np.where(kinds == 1, conserved, np.where(kinds == 2, total, np.nan)),
            "pressure_GPa": np.where(md, pressure, -trace / 3.0 / ase.units.GPa), "volume_A3": volume,
            "density_g_cm3": mass * _G_CM3 / volume, "fmax_eV_A": fmax,
        }
        self._cols.append(cols)
        self.pending_bytes += sum(c.nbytes for c in cols.values())

    def mark_done(self, ids) -> None:
        self._done.extend(int(x) for x in ids)

    def commit(self) -> None:
        if not self._cols and not self._done:
            return
        table = _table({c: np.concatenate([p[c] for p in self._cols]) if self._cols else np.zeros(0)
                        for c in COLUMNS}, self._done)
        atomic_write(next_segment(self.path, "parquet"), lambda tmp: _write(table, tmp))
        self.segments += 1
        self.rows += table.num_rows
        self._cols, self._done, self.pending_bytes = [], [], 0


def _table(cols: dict, done):
    import pyarrow as pa

    types = {"system_id": pa.int64(), "step": pa.int64(), "stage": pa.int32(), "stage_step": pa.int64()}
    arrays = [pa.array(np.asarray(cols[c]).astype(types[c].to_pandas_dtype()) if c in types
                       else np.asarray(cols[c], dtype=np.float64), type=types.get(c, pa.float64())) for c in COLUMNS]
    schema = pa.schema([pa.field(c, a.type) for c, a in zip(COLUMNS, arrays)],
                       metadata={_DONE_KEY: json.dumps(sorted(int(x) for x in done)).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def _write(table, path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)


class ThermoLogHook(FileRecorder):
    """Log thermodynamic rows of every system every ``every`` of its steps to Parquet (a hook).

    Parameters
    ----------
    path : path
        The log (``.parquet``); refused if it or ``path.parts`` exists, unless ``overwrite`` or ``resume``.
    every : int
        Rows at each system's stage steps 0, every, 2 every, ... (>= 1).
    stages : list of Dynamics, optional
        The run's stages: their time steps (``time_fs``), which are MD (temperature and
        kinetic energy are NaN in the others), and their conserved quantities. Without
        them every stage is treated as MD, ``time_fs`` is NaN and ``conserved_energy_eV``
        too.
    flush_every, overwrite, resume, max_queue, commit_bytes, commit_seconds
        As :class:`~batchmd.trajectory.TrajectoryWriter`.

    Notes
    -----
    Give it to a run as a hook (``run_frames(..., hooks=[log])``); :meth:`close` it after
    the run and :meth:`finalize` (or use ``with ThermoLogHook(...) as log:``). Read with
    :func:`read_thermo`. Column meanings: the module docstring.
    """

    def __init__(self, path, every: int = 10, stages=None, *, flush_every: int = 10, overwrite: bool = False,
                 resume: bool = False, max_queue: int = 8, commit_bytes: int = 16 << 20,
                 commit_seconds: float | None = None) -> None:
        self.check_intervals(every, flush_every)
        self.path = self.open_path(path, "thermo log", "parquet", overwrite, resume)
        self.stages = list(stages) if stages is not None else None
        self.n_stages = len(stages) if stages is not None else None
        dts, kinds = _stage_kinds(self.stages)
        self._device_conserved = [(k, s) for k, (s, kind) in enumerate(zip(self.stages or [], kinds))
                                  if kind == "device"]
        target = _ParquetTarget(self.path, dts, kinds, self.stages is not None)
        super().__init__(every, BackgroundWriter(target, max_queue, commit_bytes, commit_seconds), flush_every)

    def system_float(self, batch) -> torch.Tensor:
        from batchmd.dynamics.constraints import system_dof

        b, dt, dev = batch.num_graphs, batch.dtype, batch.device
        idx = batch.batch_idx.long()
        masses = batch.atomic_masses.to(dt)
        ke = torch.zeros(b, dtype=dt, device=dev)
        if batch.velocities is not None:
            ke.index_add_(0, idx, 0.5 * masses * (batch.velocities * batch.velocities).sum(-1))
        mass = torch.zeros(b, dtype=dt, device=dev).index_add_(0, idx, masses)
        nan = torch.full((b,), float("nan"), dtype=dt, device=dev)
        conserved = nan
        for k, stage in self._device_conserved:
            conserved = torch.where(batch["stage"] == k, stage.conserved_energy(batch).to(dt), conserved)
        stress = batch["stress"] if batch.has_field("stress") else None
        trace = torch.diagonal(stress, dim1=1, dim2=2).sum(-1) if stress is not None else nan
        energy = batch.energies.reshape(b) if batch.energies is not None else nan
        fmax = batch["fmax"].reshape(b).to(dt) if batch.has_field("fmax") else nan
        return torch.cat([torch.stack([energy, ke, system_dof(batch, record=False), fmax, conserved], dim=1),
                          batch.cell.reshape(b, 9), torch.stack([mass, trace], dim=1)], dim=1)

    def finalize(self) -> Path:
        """Merge the parts into ``path`` (rows sorted by system_id, step, stage); returns ``path``."""
        return finalize_log(self.path)


def _read_parts(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = segment_paths(path)
    tables = [pq.read_table(p) for p in parts]
    done = set()
    for t in tables:
        done.update(json.loads((t.schema.metadata or {}).get(_DONE_KEY, b"[]")))
    if not tables:
        return _table({c: np.zeros(0) for c in COLUMNS}, []), done
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    return table, done


def _sorted(table):
    return table.sort_by([("system_id", "ascending"), ("step", "ascending"), ("stage", "ascending")])


def read_thermo(path):
    """The thermo log at ``path`` as a ``pyarrow.Table`` (columns :data:`COLUMNS`; ``.to_pandas()`` for pandas).

    A log still in parts (run in progress or interrupted) is read from its committed
    parts, sorted as the merged file is. ``ValueError`` if there is no log at ``path``.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_file():
        table = pq.read_table(path)
        return table.replace_schema_metadata(None)
    if parts_dir(path).is_dir():
        return _sorted(_read_parts(path)[0])
    raise ValueError(f"{path}: no thermo log there (neither the file nor {parts_dir(path).name}/)")


def log_done_ids(path) -> set:
    """Systems marked complete in the log's parts (or its merged file)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if segment_paths(path):
        return _read_parts(path)[1]
    if path.is_file():
        return set(json.loads((pq.read_schema(path).metadata or {}).get(_DONE_KEY, b"[]")))
    return set()


def prepare_log_resume(path, keep) -> None:
    """Keep only the rows and marks of systems in ``keep`` (the others rerun); see :func:`~batchmd.trajectory.store.prepare_resume`."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    keep = sorted(int(i) for i in keep)
    reopen_merged(path, "parquet")
    for part in segment_paths(path):
        table = pq.read_table(part)
        done = json.loads((table.schema.metadata or {}).get(_DONE_KEY, b"[]"))
        mask = pc.is_in(table["system_id"], value_set=__import__("pyarrow").array(keep, type="int64"))
        kept = table.filter(mask)
        kept_done = [d for d in done if d in set(keep)]
        if kept.num_rows == table.num_rows and len(kept_done) == len(done):
            continue
        if kept.num_rows == 0 and not kept_done:
            part.unlink()
            continue
        new = kept.replace_schema_metadata({_DONE_KEY: json.dumps(kept_done).encode()})
        atomic_write(part, lambda tmp, t=new: _write(t, tmp))


def finalize_log(path) -> Path:
    """Merge the parts of ``path`` into the single Parquet file ``path`` (sorted rows); remove the parts."""
    path = Path(path)
    if not segment_paths(path):
        if not path.exists():
            atomic_write(path, lambda tmp: _write(_table({c: np.zeros(0) for c in COLUMNS}, []), tmp))
        discard_parts(path)
        return path
    table, done = _read_parts(path)
    table = _sorted(table).replace_schema_metadata({_DONE_KEY: json.dumps(sorted(done)).encode()})
    atomic_write(path, lambda tmp: _write(table, tmp))
    discard_parts(path)
    return path
