"""Export chosen systems of a trajectory store to files other tools read.

- extended XYZ (``.extxyz``, ``.xyz``) and ASE trajectories (``.traj``): every frame of the
  chosen systems, one system after another (OVITO, ASE's GUI, most tools); ``info`` holds
  ``system_id``, ``step``, ``time_fs``.
- H5MD (``.h5md``), one system per file (``{system}`` in the name, or a single system):
  ``particles/trajectory/position`` (Å), ``velocity`` (Å/fs), ``force`` (kJ/mol/Å) and
  ``box/edges`` as time series (H5MD 1.1, de Buyl et al., Comput. Phys. Commun. 185, 1546
  (2014)): ``MDAnalysis.Universe("sys3.h5md")`` reads it (checked with MDAnalysis 2.11).

A name containing ``{system}`` writes one file per system (``sys{system}.extxyz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["parse_systems", "export_frames", "write_h5md"]


def parse_systems(text: str) -> list[int]:
    """``"0,5-9"`` -> ``[0, 5, 6, 7, 8, 9]`` (``ValueError`` naming a bad item)."""
    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            if "-" in item[1:]:
                lo, hi = item.split("-", 1) if not item.startswith("-") else (item, "")
                lo, hi = int(lo), int(hi)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(item))
        except ValueError:
            raise ValueError(f"bad system selection {item!r} in {text!r}: use ids and ranges like 0,5-9") from None
    if not out:
        raise ValueError(f"empty system selection {text!r}: use ids and ranges like 0,5-9")
    return list(dict.fromkeys(out))


def write_h5md(path, arrays: dict, system_id: int) -> None:
    """One system's arrays (:func:`~batchmd.trajectory.read_trajectory` ``as_arrays``) as an H5MD 1.1 file."""
    import h5py

    import batchmd

    with h5py.File(path, "w") as f:
        h5md = f.create_group("h5md")
        h5md.attrs["version"] = np.array([1, 1])
        h5md.create_group("author").attrs["name"] = "batchmd"
        creator = h5md.create_group("creator")
        creator.attrs["name"], creator.attrs["version"] = "batchmd", getattr(batchmd, "__version__", "0")
        part = f.create_group("particles/trajectory")  # the group name MDAnalysis' H5MD reader looks for
        box = part.create_group("box")
        box.attrs["dimension"] = 3
        box.attrs["boundary"] = np.array([b"periodic" if p else b"none" for p in arrays["pbc"]])
        step, time = arrays["step"].astype(np.int64), arrays["time_fs"].astype(np.float64)

        def series(group, name, value, unit=None):
            g = group.create_group(name)
            ds = g.create_dataset("value", data=value)
            if unit:
                ds.attrs["unit"] = unit
            g.create_dataset("step", data=step)
            t = g.create_dataset("time", data=np.nan_to_num(time))
            t.attrs["unit"] = "fs"

        series(box, "edges", arrays["cell"], "Angstrom")
        series(part, "position", arrays["positions"], "Angstrom")
        if "velocities" in arrays:
            series(part, "velocity", arrays["velocities"], "Angstrom fs-1")
        if "forces" in arrays:  # in a force unit H5MD readers know (MDAnalysis: no eV)
            import ase.units

            series(part, "force", arrays["forces"] * (ase.units.mol / ase.units.kJ), "kJ mol-1 Angstrom-1")
        part.create_dataset("species", data=arrays["numbers"].astype(np.int32))
        if "energy" in arrays:
            series(f.require_group("observables"), "potential_energy", arrays["energy"], "eV")
        f.attrs["batchmd_system_id"] = int(system_id)


def export_frames(store, systems, output) -> list[Path]:
    """Write the frames of ``systems`` (ids) from ``store`` to ``output``; returns the files written.

    Format from the extension (``.h5md``, or any ASE writes: ``.extxyz``, ``.xyz``, ``.traj``).
    ``{system}`` in ``output`` gives one file per system (required for H5MD with several).
    Raises :class:`~batchmd.trajectory.SystemNotRecorded` for a system the store never recorded
    (before writing anything), ``ValueError`` for a bad output name.
    """
    from batchmd.trajectory.reader import read_trajectory

    output = str(output)
    per_system = "{system}" in output
    h5md = output.endswith(".h5md")
    if h5md and not per_system and len(systems) > 1:
        raise ValueError(f"{output}: H5MD holds one system per file; put {{system}} in the name "
                         f"(e.g. sys{{system}}.h5md) to write {len(systems)}")
    data = {sid: read_trajectory(store, sid, as_arrays=h5md) for sid in systems}  # every id checked first
    written = []
    if per_system or h5md:
        for sid, frames in data.items():
            path = Path(output.replace("{system}", str(sid)))
            path.parent.mkdir(parents=True, exist_ok=True)
            if h5md:
                write_h5md(path, frames, sid)
            else:
                import ase.io

                ase.io.write(path, frames)
            written.append(path)
        return written
    import ase.io

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, [a for frames in data.values() for a in frames])
    return [path]
