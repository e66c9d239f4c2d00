"""The run-level validation suite's own arithmetic (the checks themselves: tests/fits)."""

from __future__ import annotations

import json

import pytest

from knunu.config import load_config
from knunu.validation import _projection_factors


def test_projection_takes_each_resonance_to_its_own_target(tmp_path):
    """Off-resonance data of 10x the configured ratio are projected to 42 fb^-1, not 420."""
    (tmp_path / "ntuples").mkdir()
    datasets = {"data_on": {"luminosity_fb": 0.1086}, "data_off": {"luminosity_fb": 0.126}}
    (tmp_path / "ntuples" / "catalogue.json").write_text(json.dumps({"datasets": datasets}))
    spec = {"channels": [{"name": n} for n in ("ita_on_sr", "ita_off_cr", "hta_sr")]}
    config = load_config()
    factors = _projection_factors(spec, config, tmp_path)
    target = config["validation"]["projection_luminosity_fb"]
    lum = config["simulation"]["luminosity_fb"]
    assert factors["ita_on_sr"] == factors["hta_sr"] == pytest.approx(target / 0.1086)
    off = target * lum["off_resonance"] / lum["on_resonance"]
    assert factors["ita_off_cr"] == pytest.approx(off / 0.126)
    assert factors["ita_off_cr"] * 0.126 == pytest.approx(42.0, rel=0.01)
    # without off-resonance channels no off-resonance data are needed
    del datasets["data_off"]
    (tmp_path / "ntuples" / "catalogue.json").write_text(json.dumps({"datasets": datasets}))
    hta = {"channels": [{"name": "hta_sr"}]}
    assert _projection_factors(hta, config, tmp_path) == {"hta_sr": pytest.approx(target / 0.1086)}
