"""What the fresh-clone user trial of issues 21, 23 and 25 met, each kind made a test.

- ``batchmd campaign export`` of a folder that is not a campaign's output (a typo, the dataset)
  wrote an empty file and said "wrote 0 structures" (rc 0): now one line, rc 2, nothing written.
- Campaign configs refused ``refill_every``, the pipeline file's and the CLI's name of the same
  setting: now accepted (giving both names is refused).
- An elastic tensor of a pre-stressed reference looked like any other: its residual stress is a
  column now (``residual_stress_GPa``).
"""

from __future__ import annotations


import pytest
from ase.build import bulk

from batchmd.cli import main


def test_campaign_export_of_a_folder_that_is_not_a_campaign_is_one_line(tmp_path, capsys):
    out = tmp_path / "x.extxyz"
    for folder in (tmp_path / "missing", tmp_path):
        assert main(["campaign", "export", str(folder), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a campaign output directory" in err[0]
        assert not out.exists()


def test_campaign_config_takes_refill_every():
    from batchmd.campaign.config import CampaignConfig
    from batchmd.workflows.errors import SpecError

    base = {"manifest": "ds", "output": "run", "model": {"name": "lj"},
            "stages": [{"method": "fire", "fmax": 0.05, "max_steps": 10}]}
    assert CampaignConfig.from_dict({**base, "refill_every": 7}).refill_frequency == 7
    with pytest.raises(SpecError, match="not both"):
        CampaignConfig.from_dict({**base, "refill_every": 7, "refill_frequency": 5})


def test_elastic_rows_report_the_reference_residual_stress():
    from batchmd.models import load_model
    from batchmd.properties import compute_elastic

    model = load_model("emt")
    relaxed, squeezed = bulk("Cu", "fcc", a=3.59, cubic=True), bulk("Cu", "fcc", a=3.40, cubic=True)
    rows = [r.row() for r in compute_elastic([relaxed, squeezed], model, strains=(-0.005, 0.005))]
    assert rows[0]["residual_stress_GPa"] < 2.0
    assert rows[1]["residual_stress_GPa"] > 10.0
