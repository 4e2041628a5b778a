"""Admission (issue 20, part 2): the same checks for every system entering the live batch, however it enters.

Each stage declares :class:`~batchmd.dynamics.admission.Requirements`; frames known up front
(``run_frames``, the CLI, campaigns) are checked before anything runs, naming the frame; a
system a sampler serves during a run that fails admission is written as failed, with a reason,
and costs nobody else (bitwise).
"""

from __future__ import annotations

import os
import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, fcc100
from ase.cluster import Icosahedron
from ase.constraints import FixAtoms, FixCom

from batchmd.ase import AtomsDataset, results_to_atoms, run_frames
from batchmd.cli import main
from batchmd.data import Batch
from batchmd.dynamics import (FIRE, ConvergenceHook, CRescaleNPT, FrechetCellFilter, FusedStage, IsotropicMTKNPT,
                              MTKNPT, SizeAwareSampler)
from batchmd.dynamics.admission import AdmissionWarning, Requirements, check_frames_admission
from batchmd.dynamics.npt import BAROSTAT_REQUIREMENTS
from batchmd.dynamics.sinks import HostMemory
from batchmd.dynamics.status import FailureReason, SystemStatus, failure_text
from batchmd.models.lj import LennardJones


def lj():
    return LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5)


def crystal(seed=0, a=5.3):
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat((2, 2, 2))  # 32 atoms
    atoms.rattle(0.05, seed=seed)
    return atoms


def cluster():
    atoms = Icosahedron("Ar", 2, latticeconstant=5.3)  # 13 atoms
    atoms.pbc = False
    return atoms


def slab():
    return fcc100("Ar", (2, 2, 3), a=5.3, vacuum=6.0)  # pbc (True, True, False), 12 atoms


def fixed_crystal():
    atoms = crystal(seed=3)
    atoms.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    return atoms


def fixcom_crystal():
    atoms = crystal(seed=4)
    atoms.set_constraint(FixCom())
    return atoms


BAD = {"cluster": (cluster, "not periodic in all three directions"), "slab": (slab, r"pbc True, True, False"),
       "fixatoms": (fixed_crystal, r"4 fixed atoms \(FixAtoms\)")}

BAROSTATS = {
    "IsotropicMTKNPT": lambda m: IsotropicMTKNPT(m, dt=5, temperature=40, pressure=0.1 * units.GPa, n_steps=30,
                                                 random_seed=1),
    "MTKNPT": lambda m: MTKNPT(m, dt=5, temperature=40, pressure=0.1 * units.GPa, n_steps=30, random_seed=1),
    "CRescaleNPT": lambda m: CRescaleNPT(m, dt=5, temperature=40, pressure=0.1 * units.GPa,
                                         compressibility=0.3 / units.GPa, n_steps=30, random_seed=1),
}


# ----------------------------------------------------------------------------- declared rules
def test_stages_declare_their_requirements():
    m = lj()
    for make in BAROSTATS.values():
        assert make(m).requirements() == BAROSTAT_REQUIREMENTS
    assert BAROSTAT_REQUIREMENTS.needs_pbc and not BAROSTAT_REQUIREMENTS.allows_fixed
    assert BAROSTAT_REQUIREMENTS.allows_fix_com  # FixCom runs under barostats (3N - 3 degrees of freedom)
    assert "NotImplementedError" in BAROSTAT_REQUIREMENTS.constraint_note
    assert FIRE(m).requirements() == Requirements()
    filtered = FIRE(m, cell_filter=FrechetCellFilter()).requirements()
    assert filtered.needs_pbc and filtered.needs_stress and filtered.allows_fixed and filtered.allows_fix_com


# ----------------------------------------------------------------------------- up front: run_frames
@pytest.mark.parametrize("barostat", list(BAROSTATS))
@pytest.mark.parametrize("kind", list(BAD))
def test_run_frames_refuses_a_frame_a_barostat_cannot_run_up_front(kind, barostat):
    """The issue's input (before: the cluster entered by in-place refill unchecked, came back "completed" at
    V/V0 0.648; slab 0.871; FixAtoms crystal's fixed atoms moved 0.022 Å): now a ValueError naming frame 1."""
    make, phrase = BAD[kind]
    sink = HostMemory(capacity=4)
    with pytest.raises(ValueError, match=rf"^input: frame 1 .*{phrase}.*stage 0 \({barostat}, a barostat\)") as err:
        run_frames([crystal(), make()], [BAROSTATS[barostat](lj())], max_atoms=40, sinks=[sink])
    assert "slot" not in str(err.value) and "\n" not in str(err.value)
    assert len(sink) == 0  # nothing ran
    if kind == "fixatoms":
        assert "as in ASE, which raises NotImplementedError" in str(err.value)


@pytest.mark.parametrize("barostat", list(BAROSTATS))
def test_a_fixcom_crystal_is_admitted_to_every_barostat(barostat):
    """FixCom is supported under the barostats (3N - 3 degrees of freedom): admitted and run, centre of mass held."""
    frames = [crystal(), fixcom_crystal()]
    check_frames_admission(frames, [BAROSTATS[barostat](lj())])
    result = run_frames(frames, [BAROSTATS[barostat](lj())], max_atoms=40)
    assert [a.info["status"] for a in result.frames] == ["completed", "completed"]
    moved = result.frames[1].get_center_of_mass() - fixcom_crystal().get_center_of_mass()
    assert np.abs(moved).max() < 1e-9


def test_error_names_the_frame_never_a_slot_with_padding():
    """max_atoms=100 (before: "slot(s) [2]", a padding row): the input index, also when frames are a subset."""
    with pytest.raises(ValueError, match=r"^input: frame 1 is not periodic") as err:
        run_frames([crystal(), cluster(), crystal(1)], [BAROSTATS["MTKNPT"](lj())], max_atoms=100)
    assert "slot" not in str(err.value)
    with pytest.raises(ValueError, match=r"^input: frame 7 is not periodic .* \(and 1 more frames\)"):
        run_frames([crystal(), cluster(), slab()], [BAROSTATS["MTKNPT"](lj())], input_indices=[5, 7, 9])


def test_a_frame_is_checked_for_every_stage_it_will_meet():
    """A cluster may enter FIRE (stage 0) but would meet the barostat at stage 1: refused up front."""
    m = lj()
    stages = [FIRE(m, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=20), BAROSTATS["MTKNPT"](m)]
    with pytest.raises(ValueError, match=r"frame 1 is not periodic .*stage 1 \(MTKNPT, a barostat\)"):
        run_frames([crystal(), cluster()], stages)
    relax = FIRE(m, cell_filter=FrechetCellFilter(), convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=5)
    with pytest.raises(ValueError, match=r"frame 0 is not periodic .*stage 0 \(FIRE, a FrechetCellFilter\)"):
        run_frames([slab()], [relax])
    check_frames_admission([fixed_crystal()], [relax])  # a cell filter keeps FixAtoms (as ASE's)
    zero = crystal()
    zero.cell[2] = [0.0, 0.0, 0.0]
    zero.pbc = (True, True, False)
    with pytest.raises(ValueError, match="frame 0 is not periodic"):
        check_frames_admission([zero], [relax])


# ----------------------------------------------------------------------------- in the loop
def _custom_run(frames, ids, stage, refill_in_place, max_atoms=40):
    """A FusedStage over a user's sampler (nothing checked up front)."""
    sampler = SizeAwareSampler(AtomsDataset(frames, dtype=torch.float64, input_indices=ids), max_atoms=max_atoms,
                               max_batch_size=4)
    memory = HostMemory(capacity=len(frames))
    loop = FusedStage([stage], sampler=sampler, sinks=[memory], refill_frequency=5, refill_in_place=refill_in_place)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loop.run() is None
    out = memory.drain()
    order = torch.argsort(out["system_id"].reshape(-1))
    return out.index_select(order), [w for w in caught if issubclass(w.category, AdmissionWarning)], loop.stats


@pytest.mark.parametrize("refill_in_place", [True, False])
@pytest.mark.parametrize("kind,barostat", [("cluster", "IsotropicMTKNPT"), ("fixatoms", "CRescaleNPT"),
                                           ("slab", "MTKNPT")])
def test_a_served_system_that_fails_admission_is_failed_with_a_reason_and_costs_nobody(kind, barostat,
                                                                                     refill_in_place):
    """A custom sampler delivers the bad system by refill: it is written as FAILED (reason bit, never run),
    an AdmissionWarning names its system_id, and the crystals' results are bitwise those of a run without it."""
    bad = BAD[kind][0]()
    out, warned, stats = _custom_run([crystal(0), bad, crystal(1)], [0, 1, 2], BAROSTATS[barostat](lj()),
                                     refill_in_place)
    alone, none, _ = _custom_run([crystal(0), crystal(1)], [0, 2], BAROSTATS[barostat](lj()), refill_in_place)
    assert not none
    assert out["system_id"].reshape(-1).tolist() == [0, 1, 2]
    status = out["status"].reshape(-1).tolist()
    assert status == [int(SystemStatus.CONVERGED), int(SystemStatus.FAILED), int(SystemStatus.CONVERGED)]
    bit = FailureReason.CONSTRAINTS if kind == "fixatoms" else FailureReason.NOT_PERIODIC
    assert int(out["failure"][1]) == int(bit)
    assert int(out["n_steps"][1]) == 0 and stats.systems_refused == 1
    rows = out.ptr[1:2].item(), out.ptr[2:3].item()
    np.testing.assert_array_equal(out.positions[rows[0]:rows[1]].numpy(), BAD[kind][0]().positions)  # never moved
    assert len(warned) == 1 and "system_id 1 refused at admission" in str(warned[0].message)
    keep = [0, 2]
    for k, j in zip(keep, range(2)):
        a = out.index_select(torch.tensor([k]))
        b = alone.index_select(torch.tensor([j]))
        assert torch.equal(a.positions, b.positions) and torch.equal(a.cell, b.cell)
    frames = results_to_atoms(out.to_ase(), [crystal(0), bad, crystal(1)])
    assert frames[1].info["status"] == "failed" and "refused at admission" in frames[1].info["failure"]
    assert frames[1].calc is None  # no energy paired with a geometry it never had


def test_every_served_system_refused_ends_the_run_with_their_records():
    out, warned, stats = _custom_run([cluster(), slab()], [0, 1], BAROSTATS["MTKNPT"](lj()), True)
    assert out["status"].reshape(-1).tolist() == [int(SystemStatus.FAILED)] * 2
    assert len(warned) == 2 and stats.systems_refused == 2 and stats.steps == 0


def test_unsupported_species_served_during_a_run_is_failed_not_a_crash():
    """The model's rule: a Kr crystal served to an Ar-only model is refused alone (failure SPECIES)."""
    frames = [bulk("Ar", "fcc", a=5.26, cubic=True), bulk("Kr", "fcc", a=5.7, cubic=True),
              bulk("Ar", "fcc", a=5.3, cubic=True)]
    stage = FIRE(LennardJones(), convergence_hook=ConvergenceHook.from_forces(0.01), n_steps=50)
    out, warned, _ = _custom_run(frames, [0, 1, 2], stage, False, max_atoms=4)
    assert out["status"].reshape(-1).tolist()[1] == int(SystemStatus.FAILED)
    assert int(out["failure"][1]) == int(FailureReason.SPECIES)
    assert "no parameters for Kr" in str(warned[0].message) and "system_id 1" in str(warned[0].message)
    assert "elements" in failure_text(int(FailureReason.SPECIES))


def test_a_batch_handed_to_the_loop_is_refused_naming_the_system():
    """Known up front: a batch given to run()/step() raises before anything moves (system_id, else its index)."""
    batch = Batch.from_ase([crystal(), cluster()], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^FusedStage: system 1 is not periodic"):
        BAROSTATS["MTKNPT"](lj()).run(batch)
    batch.set_field("system_id", torch.tensor([[4], [9]]), "system")
    with pytest.raises(ValueError, match=r"^FusedStage: system_id 9 is not periodic"):
        BAROSTATS["IsotropicMTKNPT"](lj()).step(batch)
    constrained = Batch.from_ase([crystal(), fixed_crystal(), fixcom_crystal(), fixed_crystal()],
                                 dtype=torch.float64)
    with pytest.raises(ValueError, match=r"system 1 has 4 fixed atoms \(FixAtoms\), which stage 0 \(CRescaleNPT, "
                                         r"a barostat\) does not support \(as in ASE.*\(and 1 more systems\)"):
        BAROSTATS["CRescaleNPT"](lj()).run(constrained)


def test_resume_checks_each_system_from_its_own_stage():
    """resume=True: a system already past the barostat stage is not refused for it; one before it is."""
    m = lj()
    stages = [BAROSTATS["MTKNPT"](m), FIRE(m, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=3)]
    loop = FusedStage(stages)
    batch = Batch.from_ase([crystal(), cluster()], dtype=torch.float64)
    for name in ("stage", "status", "stage_steps", "n_steps"):
        batch.set_field(name, torch.zeros(2, dtype=torch.int32), "system")
    batch["stage"][1] = 1
    loop._resuming = True
    loop._check_admission(batch)  # the cluster is in stage 1 (FIRE): admitted
    batch["stage"][1] = 0
    with pytest.raises(ValueError, match="system 1 is not periodic"):
        loop._check_admission(batch)


# ----------------------------------------------------------------------------- CLI
def _outputs(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(("out", ".out")))


@pytest.mark.parametrize("kind", ["cluster", "slab"])
def test_cli_md_npt_on_a_molecule_or_slab_is_one_line_exit_2_nothing_written(tmp_path, capsys, kind):
    """Before: exit 1 with a traceback from inside the run."""
    path = tmp_path / "in.extxyz"
    ase.io.write(path, [crystal(), BAD[kind][0]()])
    rc = main(["md", str(path), "-o", str(tmp_path / "out.extxyz"), "--ensemble", "npt", "--temperature", "40",
               "--pressure", "0.1", "--steps", "5", "--dt", "5", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "frame 1 is not periodic" in err and "barostat" in err and "Traceback" not in err
    assert _outputs(tmp_path) == []


def test_cli_twelve_crystals_then_a_molecule_refused_up_front_and_on_resume(tmp_path, capsys):
    """Before: crashed after 6 frames, and --resume crashed again. Now: exit 2 before anything is written."""
    frames = [bulk("Ar", "fcc", a=5.25 + 0.01 * i) * (2, 2, 3) for i in range(12)]
    molecule = cluster()[:12]
    path = tmp_path / "in.extxyz"
    ase.io.write(path, frames + [molecule])
    args = ["md", str(path), "-o", str(tmp_path / "out.extxyz"), "--ensemble", "npt", "--temperature", "40",
            "--pressure", "0.1", "--steps", "5", "--dt", "5", "--max-atoms", "12", "--device", "cpu", "--quiet"]
    for extra in ([], ["--resume"]):
        assert main(args + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("batchmd: error: ") and "frame 12 is not periodic" in err
        assert _outputs(tmp_path) == []


def test_cli_relax_cell_full_refuses_a_slab_up_front(tmp_path, capsys):
    path = tmp_path / "slab.extxyz"
    ase.io.write(path, slab())
    rc = main(["relax", str(path), "-o", str(tmp_path / "out.extxyz"), "--cell", "full", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "frame 0 is not periodic" in err and "FrechetCellFilter" in err
    assert _outputs(tmp_path) == []


# ----------------------------------------------------------------------------- campaigns
def test_campaign_refuses_a_structure_its_model_cannot_run_before_writing(tmp_path):
    from batchmd.campaign import CampaignConfig, run_campaign, write_dataset

    path = tmp_path / "in.extxyz"
    ase.io.write(path, [bulk("Ar", "fcc", a=5.3, cubic=True)] * 3 + [bulk("Cu", "fcc", a=3.6, cubic=True)])
    write_dataset([path], tmp_path / "ds", max_rows=2)
    config = CampaignConfig(manifest=str(tmp_path / "ds"), output=str(tmp_path / "run"), model={"name": "lj"},
                            stages=[{"method": "fire", "fmax": 0.01, "max_steps": 20}], max_atoms=8)
    with pytest.raises(ValueError, match=r"^campaign: structure 3 \(.*in.extxyz frame 3\) .*no parameters for Cu"):
        run_campaign(config)
    assert not os.path.exists(tmp_path / "run")


def test_cli_pipeline_refuses_a_frame_a_later_stage_cannot_run(tmp_path, capsys):
    """fire -> npt over a file holding a slab: the slab would meet the barostat at stage 1; refused up front."""
    path = tmp_path / "in.extxyz"
    ase.io.write(path, [crystal(), slab()])
    config = tmp_path / "run.toml"
    config.write_text(f'''input = "{path}"
output = "{tmp_path / 'out.extxyz'}"
device = "cpu"

[[stages]]
method = "fire"
fmax = 0.05
max_steps = 20

[[stages]]
method = "npt"
temperature = 40.0
pressure = 0.1
dt = 4.0
steps = 10
''')
    assert main(["pipeline", str(config)]) == 2
    err = capsys.readouterr().err
    assert "frame 1 is not periodic" in err and "stage 1 (IsotropicMTKNPT, a barostat)" in err
    assert _outputs(tmp_path) == []
