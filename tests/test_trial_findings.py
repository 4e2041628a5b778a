"""What a fresh-clone user trial of issue 20 met, each kind made a test.

- An ASE-calculator model (EMT) handed a blown-up or failed system crashed the whole run inside
  ASE's neighbor list: such systems are now never given to the calculator (NaN outputs, the loop
  fails that system alone), and a calculator raising for one system fails that system only.
- A failed frame without forces of its own geometry carried ``fmax`` 0.0 (reads as converged):
  now NaN.
- ``--ignore-constraints`` / ``ignore_constraints=True`` wrote the dropped constraints back into
  the output: now they are dropped from the results too, and the CLI says which.
"""

from __future__ import annotations

import math

import ase.io
import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms, FixBondLengths

from batchmd.ase import run_frames
from batchmd.data import Batch
from batchmd.dynamics import FusedStage, IsotropicMTKNPT
from batchmd.dynamics.status import SystemStatus
from batchmd.models.ase_calculator import ASECalculatorModel


def _cu(n=1, a=3.61, seed=0):
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(n)
    atoms.rattle(0.02, seed=seed)
    return atoms


def test_emt_runaway_fails_alone_never_crashes_the_run():
    """The trial's input: EMT NPT at -50 GPa with pdamp 10 fs blows a Cu4 cell up; a Cu32 at 0 GPa runs on."""
    model = ASECalculatorModel(EMT(), compute_stress=True)
    pressure = torch.tensor([0.0, -50.0], dtype=torch.float64) * units.GPa
    pdamp = torch.tensor([500.0, 10.0], dtype=torch.float64)
    stage = IsotropicMTKNPT(model, dt=2.0, temperature=300.0, pressure=pressure, pdamp=pdamp, n_steps=8,
                            random_seed=1)
    out = FusedStage([stage]).run(Batch.from_ase([_cu(2), _cu(1, seed=1)], dtype=torch.float64))
    assert out["status"].tolist() == [SystemStatus.CONVERGED, SystemStatus.FAILED]
    assert torch.isfinite(out.positions[:32]).all()


class _Raising(EMT):
    """EMT that raises for systems with fewer than 8 atoms (a calculator's own error for one system)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        if len(atoms) < 8:
            raise RuntimeError("too small for this calculator")
        super().calculate(atoms, properties, system_changes)


def test_a_calculator_raising_for_one_system_fails_that_system_only():
    model = ASECalculatorModel(_Raising())
    from batchmd.dynamics import FIRE, ConvergenceHook

    frames = [_cu(2), _cu(1, seed=1)]
    out = run_frames(frames, [FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.05), n_steps=50)]).frames
    assert [a.info["status"] for a in out] == ["converged", "failed"]
    assert "non-finite energy" in out[1].info["failure"]
    assert math.isnan(out[1].info["fmax"])  # no forces of its geometry: never 0.0
    assert out[1].calc is None


def test_ignore_constraints_does_not_write_the_dropped_constraints_back(tmp_path, capsys):
    from batchmd.cli import main
    from batchmd.dynamics import FIRE, ConvergenceHook
    from batchmd.models.lj import LennardJones

    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.set_constraint([FixAtoms(indices=[0]), FixBondLengths([[1, 2]])])
    out = run_frames([atoms], [FIRE(LennardJones(), convergence_hook=ConvergenceHook.from_forces(0.05),
                                    n_steps=50)], ignore_constraints=True).frames
    assert [type(c).__name__ for c in out[0].constraints] == ["FixAtoms"]
    assert [type(c).__name__ for c in atoms.constraints] == ["FixAtoms", "FixBondLengths"]  # input untouched
    ase.io.write(tmp_path / "in.traj", [atoms])
    assert main(["relax", str(tmp_path / "in.traj"), "-o", str(tmp_path / "out.traj"), "--ignore-constraints"]) == 0
    assert "dropped FixBondLengths (not honoured, not written to the output)" in capsys.readouterr().err
    got = ase.io.read(tmp_path / "out.traj")
    assert [type(c).__name__ for c in got.constraints] == ["FixAtoms"]
    np.testing.assert_allclose(got.positions[0], atoms.positions[0], atol=1e-12)  # FixAtoms still held


def test_unit_warnings_are_said_once_and_pipeline_errors_carry_units(tmp_path, capsys):
    from batchmd.cli import main

    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    ase.io.write(tmp_path / "in.extxyz", [atoms])
    assert main(["md", str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "o.extxyz"), "--temperature", "40",
                 "--steps", "2", "--dt", "0.002"]) == 0
    assert capsys.readouterr().err.count("is below the usual MD range") == 1
    toml = tmp_path / "p.toml"
    toml.write_text(f'input = "{tmp_path / "in.extxyz"}"\noutput = "{tmp_path / "p.extxyz"}"\n'
                    '[[stages]]\nmethod = "nvt"\ntemperature = 40.0\ndt = 0.002\nsteps = 2\n')
    assert main(["pipeline", str(toml)]) == 0
    assert capsys.readouterr().err.count("is below the usual MD range") == 1
    toml.write_text(toml.read_text().replace("temperature = 40.0", "temperature = -4.0"))
    assert main(["pipeline", str(toml)]) == 2
    assert "temperature must be >= 0 K, got -4.0" in capsys.readouterr().err


def test_batchmd_relax_and_run_frames_are_reachable_from_the_package():
    import batchmd
    import batchmd.ase

    assert batchmd.relax is batchmd.ase.relax and batchmd.run_frames is batchmd.ase.run_frames
    assert batchmd.relax([], None) == []
    with pytest.raises(AttributeError):
        batchmd.no_such_thing  # noqa: B018


@pytest.mark.parametrize("args,phrase", [(["--ensemble", "nvt-nose-hoover", "--tdamp", "0.5"], "--tdamp 0.5 fs is under"),
                                         (["--friction", "10"], "--friction 10 1/fs is above 1 1/fs")])
def test_time_constants_and_friction_in_the_wrong_unit_warn(tmp_path, capsys, args, phrase):
    from batchmd.cli import main

    ase.io.write(tmp_path / "in.extxyz", [bulk("Ar", "fcc", a=5.3, cubic=True)])
    rc = main(["md", str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "o.extxyz"), "--temperature", "40",
               "--steps", "2", "--dt", "2", *args])
    assert rc in (0, 3)  # it runs as asked (a 0.5 fs chain may fail the frame: exit 3), after the warning
    assert capsys.readouterr().err.count(phrase) == 1
