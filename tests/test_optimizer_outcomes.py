"""An optimizer stage without a convergence criterion is never reported as converged.

The user's trial: ``run_frames([rattled_argon], [FIRE(lj, n_steps=2)])`` (no
``convergence_hook``) said ``status="converged"``, ``converged=True`` at fmax 1.46 eV/Å and
``stage_counts {'0:fire': {'converged': 3}}``. Such a stage ran its steps and stopped (ASE's
``opt.run(steps=n)`` without ``fmax`` returns False): it is ``completed`` with
``converged=False``. With a criterion: met -> ``converged``; not met within ``n_steps`` ->
``out_of_steps``. The dynamics are unchanged: the geometry after the steps is bitwise the
same with or without a criterion.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from batchmd.ase import run_frames
from batchmd.data import Batch
from batchmd.dynamics import FIRE, LBFGS, NVE, ConvergenceHook, FusedStage, SystemStatus
from batchmd.dynamics.stage_results import StageStatus
from batchmd.models.lj import LennardJones

OPTIMIZERS = {"fire": FIRE, "lbfgs": LBFGS}


_MODEL = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125)


def lj():
    """One model object for all stages (a FusedStage evaluates its stages' shared model once per step)."""
    return _MODEL


def rattled_argon(n=3):
    frames = []
    for seed in range(n):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
        atoms.rattle(0.1, seed=seed)
        frames.append(atoms)
    return frames


def _stage(name, criterion=None, n_steps=2):
    hook = None if criterion is None else ConvergenceHook.from_forces(criterion)
    return OPTIMIZERS[name](lj(), n_steps=n_steps, convergence_hook=hook)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_run_frames_optimizer_without_criterion_is_completed_not_converged(name):
    frames = rattled_argon()
    result = run_frames(frames, [_stage(name)])
    for out in result.frames:
        assert out.info["status"] == "completed" and out.info["stage0_status"] == "completed"
        assert out.info["converged"] is False
        assert out.info["n_steps"] == 2 and out.info["stage0_steps"] == 2 and out.info["fmax"] > 0.01
    assert result.stats.stage_counts == {f"0:{name}": {"completed": 3}}
    assert (result.stats.systems_converged, result.stats.systems_completed) == (0, 3)
    # Same dynamics as with a criterion that is not met: bitwise the same geometry, named out_of_steps.
    strict = run_frames(frames, [_stage(name, criterion=1e-6)])
    for a, b in zip(result.frames, strict.frames):
        assert np.array_equal(a.positions, b.positions)
        assert b.info["status"] == "out_of_steps" and b.info["converged"] is False
    assert strict.stats.stage_counts == {f"0:{name}": {"out_of_steps": 3}}
    assert (strict.stats.systems_out_of_steps, strict.stats.systems_converged) == (3, 0)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_run_frames_optimizer_criterion_met_is_converged(name):
    result = run_frames(rattled_argon(), [_stage(name, criterion=0.05, n_steps=500)])
    for out in result.frames:
        assert out.info["status"] == "converged" and out.info["converged"] is True
        assert out.info["fmax"] <= 0.05 and out.info["n_steps"] < 500
    assert result.stats.stage_counts == {f"0:{name}": {"converged": 3}}
    assert (result.stats.systems_converged, result.stats.systems_completed) == (3, 0)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fused_stage_batch_mode_converged_field(name):
    frames = rattled_argon()
    cases = {None: (SystemStatus.CONVERGED, False, "completed"),  # ran its steps: status 1, not converged
             1e-6: (SystemStatus.OUT_OF_STEPS, False, "out_of_steps"),
             0.05: (SystemStatus.CONVERGED, True, "converged")}
    for criterion, (status, converged, label) in cases.items():
        loop = FusedStage([_stage(name, criterion, n_steps=2 if criterion != 0.05 else 500)])
        out = loop.run(Batch.from_ase(frames))
        assert out["status"].reshape(-1).tolist() == [int(status)] * 3, criterion
        assert out["converged"].reshape(-1).tolist() == [converged] * 3, criterion
        assert loop.stats.stage_counts == {f"0:{name}": {label: 3}}, criterion


def test_optimizer_without_criterion_then_md_runs_md_and_is_not_converged():
    """A criterion-less optimizer ends by its steps and the next stage runs (unlike out_of_steps)."""
    result = run_frames(rattled_argon(2), [FIRE(lj(), n_steps=2), NVE(lj(), dt=1.0, n_steps=3)])
    for out in result.frames:
        assert (out.info["stage0_status"], out.info["stage1_status"]) == ("completed", "completed")
        assert out.info["status"] == "completed" and out.info["converged"] is False
        assert out.info["n_steps"] == 5
    assert result.stats.stage_counts == {"0:fire": {"completed": 2}, "1:nve": {"completed": 2}}
    relaxed_then_md = run_frames(rattled_argon(2), [_stage("fire", criterion=0.05, n_steps=500),
                                                    NVE(lj(), dt=1.0, n_steps=3)])
    for out in relaxed_then_md.frames:
        assert (out.info["stage0_status"], out.info["status"], out.info["converged"]) == (
            "converged", "completed", True)


def test_graduated_batch_converged_field_matches_frames(tmp_path):
    """Sinks receive the honest ``converged`` field too (ExtXYZ files, campaign results)."""
    from batchmd.dynamics.sinks import ExtXYZSink, read_extxyz

    path = tmp_path / "out.extxyz"
    run_frames(rattled_argon(2), [FIRE(lj(), n_steps=2)], sinks=[ExtXYZSink(path)])
    written = read_extxyz(path)
    assert [bool(a.info["converged"]) for a in written] == [False, False]
    assert [a.info["stage0_status"] for a in written] == ["completed"] * 2  # the CLI's words
    assert [a.info["status"] for a in written] == ["completed"] * 2
