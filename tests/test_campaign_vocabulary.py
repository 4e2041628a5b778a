"""Campaigns speak the CLI's language: the model registry, the stage keys, their errors, pipeline files.

A pipeline TOML runs unchanged as a campaign (``batchmd campaign run PIPELINE.toml --manifest
DATASET -o OUTDIR``) and gives the CLI's results frame for frame: a variable-cell relaxation
followed by NPT, with per-frame temperature and pressure targets, on one rank and on two
(Lennard-Jones here, fast; SevenNet-0 under torchrun in the ``slow`` test).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from batchmd.campaign import CampaignConfig, read_results, run_campaign
from batchmd.campaign.config import build_model, build_stages
from batchmd.campaign.distributed import RankContext
from batchmd.cli import main
from batchmd.cli.pipeline import load_config
from batchmd.workflows.errors import SpecError

PIPELINE = """
input = "in.extxyz"
output = "cli.traj"
dtype = "float64"
max_atoms = {max_atoms}
refill_every = 5

[model]
name = "{model}"

[[stages]]
method = "fire"
fmax = {fmax}
max_steps = {fire_steps}
cell = "full"
pressure = 0.1

[[stages]]
method = "npt"
temperature = 300.0
pressure = 0.5
dt = {dt}
steps = {npt_steps}
tdamp = 50.0
pdamp = 500.0
seed = 7
"""


def noble_crystals() -> list:
    """Ar and Kr fcc crystals (4 and 8 atoms), strained and rattled; two carry their own targets."""
    frames = []
    for i, (symbol, a, reps) in enumerate([("Ar", 5.35, (1, 1, 1)), ("Kr", 5.75, (1, 1, 2)),
                                          ("Ar", 5.15, (1, 1, 2)), ("Kr", 5.6, (1, 1, 1))]):
        atoms = bulk(symbol, "fcc", a=a, cubic=True).repeat(reps)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.02 * np.triu(np.ones((3, 3)), 1)), scale_atoms=True)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    frames[1].info["temperature_K"] = 60.0  # per-frame targets: the CLI and the campaign both honour them
    frames[2].info["pressure_GPa"] = 0.2
    return frames


def write_pipeline(tmp_path, frames, **keys) -> str:
    ase.io.write(tmp_path / "in.extxyz", frames)
    settings = {"max_atoms": 64, "model": "lj", "fmax": 0.01, "fire_steps": 100, "npt_steps": 10, "dt": 5.0, **keys}
    path = tmp_path / "pipeline.toml"
    path.write_text(PIPELINE.format(**settings))
    return str(path)


def through_extxyz(frames) -> list:
    """``frames`` written as extended XYZ and read back: the precision of the CLI's results, which
    pass through ``OUTPUT.partial`` (extxyz, positions with 8 decimals) whatever the output format."""
    buffer = io.StringIO()
    ase.io.write(buffer, frames, format="extxyz")
    buffer.seek(0)
    return ase.io.read(buffer, ":", format="extxyz")


def assert_same_frames(cli, campaign, bitwise: bool) -> None:
    """Frame for frame: positions and cell (Å), energy (eV), by input index.

    ``bitwise``: the campaign's float64 results, rounded as the CLI's output is (see
    :func:`through_extxyz`), equal the CLI's bit for bit. Otherwise within float64 round-off
    of a batched network, whose sums run in another order in another batch (measured with
    SevenNet-0: cell 9e-16 Å, energy 2e-15 eV, positions equal at 8 decimals): cell and
    energy to 1e-10, positions to one unit of the 8th decimal.
    """
    assert [a.info["system_id"] for a in campaign] == list(range(len(cli)))
    for a, b in zip(cli, through_extxyz(campaign)):
        assert a.get_chemical_formula() == b.get_chemical_formula()
        if bitwise:
            np.testing.assert_array_equal(a.positions, b.positions)
            np.testing.assert_array_equal(a.cell.array, b.cell.array)
            assert a.get_potential_energy() == b.get_potential_energy()
        else:
            np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1.01e-8)
            np.testing.assert_allclose(a.cell.array, b.cell.array, rtol=0, atol=1e-10)
            assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-10)


def assert_same_info(cli, campaign) -> None:
    """Every output path writes the same info keys: the campaign's frames carry exactly the
    CLI's keys (no exceptions), with equal values: floats to 1e-7 relative, as ``fmax_atoms``
    of the CLI comes from forces its extxyz staging file rounded to 8 decimals."""
    for a, b in zip(cli, campaign):
        theirs = dict(b.info)
        assert set(theirs) == set(a.info), (sorted(set(a.info) - set(theirs)), sorted(set(theirs) - set(a.info)))
        for key, value in a.info.items():
            if isinstance(value, str) and not isinstance(theirs[key], str):  # extxyz reads "10.95" as a number
                value = type(theirs[key])(value)
            if isinstance(value, float):
                assert theirs[key] == pytest.approx(value, rel=1e-7, abs=1e-12, nan_ok=True), key
            else:
                assert theirs[key] == value, key


# ----------------------------------------------------------------------------- one vocabulary
def test_campaign_config_takes_registry_models_and_pipeline_stage_keys():
    stages = [{"method": "fire", "fmax": 0.02, "max_steps": 50, "cell": "full", "pressure": 1.0},
              {"method": "lbfgs", "cell": "hydrostatic"},
              {"method": "npt", "temperature": 300.0, "pressure": 1.0, "dt": 2.0, "steps": 10, "barostat": "full",
               "velocities": "maxwell-boltzmann"},
              {"method": "nvt-nose-hoover", "temperature": 300.0, "dt": 2.0, "steps": 10, "tdamp": 100.0},
              {"method": "nve", "dt": 1.0, "steps": 5, "velocities": "zero"}]
    for name in ("sevennet-0", "mace:/somewhere/model.model", "metatomic:m.pt", "emt", "lj"):
        config = CampaignConfig(manifest="ds", output="run", model={"name": name}, stages=stages)
        assert config.dtype == ("float64" if name in ("emt", "lj") else "float32")  # the CLI's --dtype default
    model = build_model({"name": "lj", "sigma": 3.405, "epsilon": 0.0104})
    built = build_stages(stages, model)
    assert [type(s).__name__ for s in built] == ["FIRE", "LBFGS", "MTKNPT", "NoseHooverChainNVT", "NVE"]
    assert built[0].cell_filter is not None and built[1].cell_filter is not None


@pytest.mark.parametrize("model,stage,message", [
    ({"name": "sevenet-0"}, {"method": "fire"}, "campaign config: model: unknown model 'sevenet-0'; choose one of"),
    ({"name": "lj", "sigma": -1.0, "epsilon": 0.01}, {"method": "fire"},
     "campaign config: model: sigma must be a positive finite number"),
    ({"name": "sevennet-0", "cutoff": 5.0}, {"method": "fire"}, "cutoff is a Lennard-Jones parameter"),
    ({"name": "lj"}, {"method": "fire", "cel": "full"}, "stages[0] (fire): unknown key 'cel'"),
    ({"name": "lj"}, {"method": "fire", "pressure": 1.0}, "pressure does nothing with cell = fixed"),
    ({"name": "lj"}, {"method": "npt", "temperature": 300.0, "dt": 2.0, "steps": 5}, "(npt): missing key 'pressure'"),
    ({"name": "lj"}, {"method": "nvt", "temperature": 30.0, "dt": 2.0, "steps": 5, "velocities": "hot"},
     "velocities must be one of auto, keep, zero, maxwell-boltzmann"),
    ({"name": "lj"}, {"method": "npt", "temperature": 30.0, "pressure": 900.0, "dt": 2.0, "steps": 5}, "900"),
])
def test_bad_specs_are_the_pipelines_one_line_errors(tmp_path, capsys, model, stage, message):
    with pytest.raises(SpecError) as raised:
        CampaignConfig(manifest="ds", output="run", model=model, stages=[stage])
    assert message in str(raised.value) and "\n" not in str(raised.value)
    config = tmp_path / "campaign.json"
    config.write_text(json.dumps({"manifest": "ds", "output": "run", "model": model, "stages": [stage]}))
    assert main(["campaign", "run", str(config)]) == 2  # one line, exit 2, as every CLI error
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith(f"batchmd: error: {config}: ")
    assert not (tmp_path / "run").exists()
    if model == {"name": "lj"}:  # the same stage in a pipeline file: the same words
        pipeline = tmp_path / "p.toml"
        pipeline.write_text('input = "in.extxyz"\noutput = "o.extxyz"\n[[stages]]\n'
                            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in stage.items()))
        assert main(["pipeline", str(pipeline)]) == 2
        assert message in capsys.readouterr().err


def test_older_campaign_configs_still_run():
    model = build_model({"name": "lj", "sigma": 3.405, "epsilon": 0.0104, "cutoff": 8.5, "skin": 0.5})
    assert model.neighbor_list.skin == 0.5  # any LennardJones keyword, as before
    stages = build_stages([{"method": "fire", "fmax": 0.01, "n_steps": 30},
                           {"method": "nvt_langevin", "temperature": 30.0, "dt": 2.0, "friction": 0.01,
                            "n_steps": 5, "seed": 3}], model)
    assert (stages[0].n_steps, stages[1].n_steps, type(stages[1]).__name__) == (30, 5, "NVTLangevin")
    demo = build_model({"name": "demo", "init_seed": 1})
    assert type(demo).__name__ == "DemoModelWrapper"
    factory = build_model({"name": "factory", "target": "batchmd.models.lj:LennardJones", "kwargs": {}})
    assert type(factory).__name__ == "LennardJones"
    with pytest.raises(SpecError, match="model factory: .*no attribute"):
        build_model({"name": "factory", "target": "batchmd.models.lj:Nothing"})


def test_pipeline_file_needs_a_dataset_and_an_output_directory(tmp_path, capsys):
    path = write_pipeline(tmp_path, noble_crystals())
    assert main(["campaign", "run", path]) == 2
    err = capsys.readouterr().err
    assert "is not a sharded dataset: make one with `batchmd shard" in err and len(err.strip().splitlines()) == 1
    assert main(["campaign", "run", path, "--manifest", str(tmp_path / "ds")]) == 2
    assert "-o OUTDIR (or [campaign] output)" in capsys.readouterr().err
    with open(path, "a") as handle:  # the one added section; batchmd pipeline reads the file as before
        handle.write('\n[campaign]\nmanifest = "ds"\noutput = "run"\ncommit_every = 2\n')
    config = CampaignConfig.from_file(path)
    assert (config.manifest, config.output) == (str(tmp_path / "ds"), str(tmp_path / "run"))
    assert (config.commit_every, config.max_atoms, config.refill_frequency) == (2, 64, 5)
    assert load_config(path)["campaign"]["commit_every"] == 2
    with open(path, "a") as handle:
        handle.write("comit_every = 3\n")
    assert main(["campaign", "run", path]) == 2
    assert "[campaign]: unknown key 'comit_every'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- same work, same results
def test_pipeline_file_as_a_campaign_equals_the_cli_frame_for_frame(tmp_path, capsys):
    """fire (cell full, 0.1 GPa) -> NPT, LJ presets for Ar+Kr, per-frame targets: CLI == 1 rank == 2 ranks."""
    frames = noble_crystals()
    path = write_pipeline(tmp_path, frames)
    assert main(["pipeline", path, "-q"]) == 0
    cli = ase.io.read(tmp_path / "cli.traj", ":")
    assert [a.info["stage1_status"] for a in cli] == ["completed"] * 4  # relaxed, then NPT
    assert main(["shard", str(tmp_path / "in.extxyz"), str(tmp_path / "ds"), "--max-rows", "2", "--quiet"]) == 0
    assert main(["campaign", "run", path, "--manifest", str(tmp_path / "ds"), "-o", str(tmp_path / "one"),
                 "--device", "cpu"]) == 0
    assert "4/4 structures done on 1 rank(s)" in capsys.readouterr().out
    one = read_results(tmp_path / "one", as_atoms=True, require_complete=True)
    for rank in (0, 1):  # the two ranks of a 2-process campaign, one after the other (torchrun: the slow test)
        config = CampaignConfig.from_file(path, manifest=str(tmp_path / "ds"), output=str(tmp_path / "two"))
        run_campaign(config, context=RankContext(rank=rank, world_size=2, device="cpu"))
    two = read_results(tmp_path / "two", as_atoms=True, require_complete=True)
    assert_same_frames(cli, one, bitwise=True)
    assert_same_frames(cli, two, bitwise=True)
    assert main(["campaign", "export", str(tmp_path / "one"), "-o", str(tmp_path / "camp.extxyz")]) == 0
    assert_same_info(cli, ase.io.read(tmp_path / "camp.extxyz", ":"))
    assert_same_info(cli, two)
    assert {"stage0_target_pressure_GPa", "stage1_target_temperature_K", "stage1_target_pressure_GPa",
            "lj_sigma"} <= set(cli[0].info)
    for i, atoms in enumerate(cli):
        assert atoms.get_volume() != pytest.approx(frames[i].get_volume(), rel=1e-4)  # the cell moved
    # the per-frame targets were used: a frame at 60 K ends much colder than the others at 300 K
    temperatures = [a.get_temperature() for a in two]
    assert temperatures[1] < min(temperatures[0], temperatures[2], temperatures[3])
    # changed physics is refused on resume (the contract holds the stages as written), one line, exit 2
    with open(path) as handle:
        changed = handle.read().replace("pressure = 0.5", "pressure = 0.6")
    with open(path, "w") as handle:
        handle.write(changed)
    assert main(["campaign", "run", path, "--manifest", str(tmp_path / "ds"), "-o", str(tmp_path / "one")]) == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "physics" in err and len(err.strip().splitlines()) == 1


def test_relax_under_torchrun_runs_the_stage_relax_runs(tmp_path):
    """``torchrun ... batchmd relax DATASET -o OUTDIR --cell full ...``: the campaign gets relax's own stage."""
    from batchmd.cli.campaign_cmds import config_from_cli_args
    from batchmd.cli.main import build_parser

    ase.io.write(tmp_path / "in.extxyz", noble_crystals())
    assert main(["shard", str(tmp_path / "in.extxyz"), str(tmp_path / "ds"), "--quiet"]) == 0
    args = build_parser().parse_args(["relax", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--cell", "full",
                                      "--pressure", "0.1", "--optimizer", "lbfgs", "--fmax", "0.02"])
    config = config_from_cli_args(args)
    assert config.stages == [{"method": "lbfgs", "fmax": 0.02, "max_steps": 500, "cell": "full", "pressure": 0.1}]
    assert (config.model, config.dtype) == ({"name": "lj"}, "float64")


@pytest.mark.slow
def test_sevennet_variable_cell_then_npt_two_rank_campaign_equals_the_cli(tmp_path):
    """SevenNet-0 (registry name), fire cell=full -> NPT on Si, NaCl, MgO, Cu: torchrun 2 ranks == batchmd pipeline."""
    pytest.importorskip("sevenn")
    frames = []
    for i, atoms in enumerate([bulk("Si", "diamond", a=5.50), bulk("NaCl", "rocksalt", a=5.55, cubic=True),
                               bulk("MgO", "rocksalt", a=4.30), bulk("Cu", "fcc", a=3.70)]):
        atoms.rattle(0.03, seed=i)
        frames.append(atoms)
    frames[0].info["temperature_K"] = 100.0
    path = write_pipeline(tmp_path, frames, model="sevennet-0", max_atoms=16, fmax=0.05, fire_steps=60,
                          npt_steps=10, dt=1.0)
    assert main(["pipeline", path, "-q", "--device", "cpu"]) == 0
    cli = ase.io.read(tmp_path / "cli.traj", ":")
    assert [a.info["stage1_status"] for a in cli] == ["completed"] * 4, [a.info["stage0_status"] for a in cli]
    assert main(["shard", str(tmp_path / "in.extxyz"), str(tmp_path / "ds"), "--max-rows", "1", "--quiet"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--max-restarts=0", "-m", "batchmd.cli.campaign_cmds", "run", path,
                           "--manifest", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4/4 structures done on 2 rank(s)" in proc.stdout
    campaign = read_results(tmp_path / "run", as_atoms=True, require_complete=True)
    assert_same_frames(cli, campaign, bitwise=False)


def test_readme_campaign_commands_run_as_written(tmp_path, monkeypatch):
    """The README's campaign block (run in-process; test_readme runs the console script): the README
    pipeline's work as a campaign, equal to ``batchmd pipeline examples/pipeline.toml`` frame for frame."""
    import shlex
    import shutil

    from test_readme import ROOT, readme_commands

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    commands = readme_commands("## Campaigns")
    assert any("campaign run examples/pipeline.toml" in c for c in commands)
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "batchmd" and main(argv[1:]) == 0, command
    assert main(["pipeline", "examples/pipeline.toml", "-q"]) == 0
    cli = ase.io.read(tmp_path / "examples" / "argon_relaxed_nvt.extxyz", ":")
    campaign = read_results(tmp_path / "run", as_atoms=True, require_complete=True)
    assert_same_frames(cli, campaign, bitwise=True)
    assert len(ase.io.read(tmp_path / "campaign.extxyz", ":")) == len(cli)
