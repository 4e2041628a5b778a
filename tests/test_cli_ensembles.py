"""``batchmd md --ensemble {nvt-nose-hoover,npt}`` and the pipeline's ``npt`` / ``nvt-nose-hoover`` stages."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk

from batchmd.cli import main
from batchmd.data import Batch
from batchmd.dynamics import IsotropicMTKNPT
from batchmd.models.lj import LennardJones


@pytest.fixture
def argon_file(tmp_path):
    frames = [bulk("Ar", "fcc", a=5.3, cubic=True) * (2, 2, 2), bulk("Ar", "fcc", a=5.25) * (2, 2, 3)]
    path = tmp_path / "in.extxyz"
    ase.io.write(path, frames)
    return path, frames


def test_md_npt_follows_the_api_and_writes_the_final_cells(argon_file, tmp_path):
    """--ensemble npt --pressure GPa: the output frames (cell, positions) are those of IsotropicMTKNPT run directly."""
    path, frames = argon_file
    out = tmp_path / "npt.extxyz"
    assert main(["md", str(path), "-o", str(out), "--ensemble", "npt", "--temperature", "40", "--pressure", "0.5",
                 "--steps", "60", "--dt", "4", "--pdamp", "400", "--seed", "3", "--device", "cpu", "--dtype", "float64",
                 "--quiet"]) == 0
    got = ase.io.read(out, ":")
    assert [a.info["stage0_method"] for a in got] == ["npt", "npt"]
    assert all(a.get_volume() < f.get_volume() for a, f in zip(got, frames))  # compressed by 0.5 GPa
    for k, frame in enumerate(frames):
        cutoff = float(got[k].info["lj_cutoff"])
        batch = Batch.from_ase([frame], dtype=torch.float64)
        batch.set_field("system_id", torch.tensor([[k]]), "system")
        md = IsotropicMTKNPT(LennardJones(sigma=3.405, epsilon=0.0104, cutoff=cutoff), dt=4.0, temperature=40.0,
                             pressure=0.5 * units.GPa, tdamp=400.0, pdamp=400.0, random_seed=3, n_steps=60)
        alone = md.run(batch)
        assert np.allclose(got[k].cell[:], alone.cell[0].numpy(), rtol=0, atol=1e-8)
        assert np.allclose(got[k].positions, alone.positions.numpy(), rtol=0, atol=1e-8)


def test_md_nose_hoover_and_npt_errors(argon_file, tmp_path, capsys):
    path, _ = argon_file
    out = tmp_path / "nh.extxyz"
    assert main(["md", str(path), "-o", str(out), "--ensemble", "nvt-nose-hoover", "--temperature", "40",
                 "--steps", "10", "--dt", "4", "--device", "cpu", "--quiet"]) == 0
    assert [a.info["stage0_method"] for a in ase.io.read(out, ":")] == ["nvt-nose-hoover"] * 2
    capsys.readouterr()
    assert main(["md", str(path), "-o", str(tmp_path / "x.extxyz"), "--ensemble", "npt", "--temperature", "40",
                 "--steps", "10", "--dt", "4"]) == 2
    assert "--pressure" in capsys.readouterr().err


def test_pipeline_npt_stage_and_its_errors(argon_file, tmp_path, capsys):
    path, _ = argon_file
    config = tmp_path / "run.toml"
    body = f'''input = "{path}"
output = "out.extxyz"
device = "cpu"

[[stages]]
method = "npt"
temperature = 40.0
pressure = -0.05
dt = 4.0
steps = 20
barostat = "BAROSTAT"

[[stages]]
method = "nvt-nose-hoover"
temperature = 40.0
dt = 4.0
steps = 10
'''
    config.write_text(body.replace("BAROSTAT", "full"))
    assert main(["pipeline", str(config)]) == 0
    got = ase.io.read(tmp_path / "out.extxyz", ":")
    assert [a.info["stage1_method"] for a in got] == ["nvt-nose-hoover"] * 2
    config.write_text(body.replace("BAROSTAT", "sideways"))
    capsys.readouterr()
    assert main(["pipeline", str(config)]) == 2
    assert "barostat must be one of isotropic, full" in capsys.readouterr().err

