"""The model registry (load_model / register_model / available_models) and the species contract."""

import subprocess
import sys

import pytest
import torch

from batchmd.models import LennardJones, Model, UnsupportedSpeciesError, available_models, load_model, register_model
from batchmd.models.registry import MissingExtraError, require_package


def test_builtin_specs_listed():
    names = available_models()
    for spec in ("sevennet-0", "sevennet:PATH", "mace:PATH", "metatomic:PATH"):
        assert spec in names and names[spec]


def test_unknown_name_is_one_line_listing_choices():
    with pytest.raises(ValueError) as err:
        load_model("no-such-model")
    msg = str(err.value)
    assert "\n" not in msg and "no-such-model" in msg and "sevennet-0" in msg and "mace:PATH" in msg


def test_prefix_without_argument():
    with pytest.raises(ValueError, match="needs an argument"):
        load_model("mace:")


def test_register_name_and_prefix_case_insensitive():
    calls = []

    def factory(argument, *, device=None, dtype=None):
        calls.append((argument, device, dtype))
        return LennardJones(sigma=2.0, epsilon=0.1)

    register_model("Test-LJ", factory, "test entry", overwrite=True)
    register_model("testlj:SIGMA", factory, "test prefix", overwrite=True)
    assert isinstance(load_model("test-lj"), LennardJones)
    load_model("TESTLJ:3.4", dtype=torch.float32)
    assert calls == [(None, None, None), ("3.4", None, torch.float32)]
    assert "testlj:SIGMA" in available_models()
    with pytest.raises(ValueError, match="already registered"):
        register_model("test-lj", factory, "again")
    assert load_model("test-lj")._model_spec == "test-lj"


def test_missing_extra_message():
    with pytest.raises(MissingExtraError) as err:
        require_package("surely_not_installed_pkg", "sevennet", "model 'x'")
    assert "pip install 'batchmd[sevennet]'" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ImportError)


def test_registry_import_is_light():
    code = ("import sys; from batchmd.models import load_model, available_models; available_models(); "
            "print(any(m in sys.modules for m in ('torch', 'warp', 'sevenn', 'mace', 'e3nn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_check_species_one_line_with_symbols():
    class OnlyArgon(Model):
        supported_numbers = frozenset({18})

    m = OnlyArgon()
    m.check_species(torch.tensor([18, 18]))
    m.check_species([18])
    with pytest.raises(UnsupportedSpeciesError) as err:
        m.check_species(torch.tensor([18, 11, 17, 11]))
    msg = str(err.value)
    assert "\n" not in msg and "Na Cl" in msg and "OnlyArgon" in msg
    assert err.value.unsupported == (11, 17)
    assert isinstance(err.value, ValueError)


def test_any_species_with_one_explicit_pair():
    LennardJones(sigma=1.0, epsilon=1.0).check_species(torch.tensor([1, 92, 118]))
    assert LennardJones(sigma=1.0, epsilon=1.0).model_info()["model"] == "lj"


def test_lennard_jones_default_is_argon_only():
    """LennardJones() is the argon preset (issue 13: API and CLI defaults agree): other elements are refused."""
    LennardJones().check_species(torch.tensor([18, 18]))
    with pytest.raises(UnsupportedSpeciesError, match="no parameters for Cu"):
        LennardJones().check_species(torch.tensor([29]))
    assert LennardJones().model_info()["lj_sigma"] == "Ar:3.405"


@pytest.mark.parametrize("spec,extra", [("sevennet-0", "sevennet"), ("mace:x.model", "mace"),
                                        ("metatomic:x.pt", "metatomic")])
def test_missing_mlip_package_names_the_extra(monkeypatch, spec, extra):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("sevenn", "mace", "metatomic") else real(name, *a))
    with pytest.raises(MissingExtraError, match=rf"pip install 'batchmd\[{extra}\]'"):
        load_model(spec)
