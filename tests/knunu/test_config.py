"""Configuration: the packaged default is valid; every bad config is one clear line, exit 2."""

from __future__ import annotations

import pytest

from knunu.config import load_config, load_schema, packaged_config_path, read_yaml
from knunu.errors import ConfigError, KnunuError


def test_default_config_is_valid():
    cfg = load_config()
    assert cfg["scale"] == "default"
    assert cfg["simulation"]["luminosity_fb"] == {"on_resonance": 362.0, "off_resonance": 42.0}
    assert set(read_yaml(packaged_config_path())) <= set(load_schema("analysis")["properties"])


def test_user_file_merges_over_default(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("scale: tiny\nsimulation: {mu_true: 5}\n")
    cfg = load_config(f)
    assert cfg["scale"] == "tiny"
    assert cfg["simulation"]["mu_true"] == 5
    assert cfg["simulation"]["luminosity_fb"]["off_resonance"] == 42.0  # kept from the default


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("sed: 3\n", "sed", "unknown key"),
        ("simulation: {mu_ture: 1}\n", "simulation.mu_ture", "unknown key"),
        ("seed: three\n", "seed", "is not of type 'integer'"),
        (
            "simulation: {luminosity_fb: {on_resonance: -1}}\n",
            "simulation.luminosity_fb.on_resonance",
            "less than or equal to the minimum",
        ),
        ("scale: huge\n", "scale", "is not one of"),
        (
            "simulation: {pion_prescale: 3}\n",
            "ita.pion.prescale",
            "4 is not a multiple of simulation.pion_prescale (3)",
        ),
        ("- a list\n", "<top level>", "expected a mapping"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, key, problem):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{f}: key '{key}'")
    assert problem in msg
    assert isinstance(info.value, KnunuError)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML at line"):
        load_config(bad)


def test_missing_workspace_file_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("fit: {workspace: ws/missing.json}\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert str(info.value) == (
        f"{f}: key 'fit.workspace': {tmp_path / 'ws' / 'missing.json'}: file not found"
    )


def test_early_stopping_with_two_folds_is_refused_when_the_config_loads(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("ita: {folds: 2}\n")  # the default BDTc learns its rounds on a held-out fold
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert str(info.value) == (
        f"{f}: key 'ita.xgboost.bdtc.early_stopping_rounds': needs ita.folds >= 3, got 2"
    )
    f.write_text("ita: {folds: 2, xgboost: {bdtc: {early_stopping_rounds: null}}}\n")
    assert load_config(f)["ita"]["folds"] == 2


def test_cli_bad_config_is_one_line_exit_2(run_cli, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("cluster_name: x\n")
    for stage in ("simulate", "process", "train", "fit", "run", "cluster"):
        proc = run_cli(stage, "--config", str(f))
        assert proc.returncode == 2, (stage, proc.stderr)
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        assert str(f) in proc.stderr
        assert "cluster_name" in proc.stderr
        assert proc.stdout == ""


def test_cli_stage_without_its_inputs_is_one_line(tmp_path, run_cli):
    for stage in ("train", "process"):
        proc = run_cli(stage, "-o", str(tmp_path / "empty"))
        assert proc.returncode == 2
        catalogue = tmp_path / "empty" / "ntuples" / "catalogue.json"
        assert proc.stderr.strip() == (
            f"knunu: error: {catalogue}: catalogue not found (run `knunu simulate` first)"
        )
        assert proc.stdout == ""


def test_the_belle2_config_is_valid():
    config = load_config(packaged_config_path().parent / "belle2.yaml")
    assert config["scale"] == "belle2"
    assert config["simulation"]["pion_prescale"] == config["ita"]["pion"]["prescale"] == 1
    assert config["ita"]["bdtc_bdt1_min"] == 0.9


def test_the_tiny_config_is_the_test_suites_tiny_pipeline(cfg):
    """configs/tiny.yaml (make py313, a smoke run) trains and processes as the tests' cfg does."""
    config = load_config(packaged_config_path().parent / "tiny.yaml")
    assert config["scale"] == cfg["scale"] == "tiny"
    assert config["ita"] == cfg["ita"]
    assert config["hta"] == cfg["hta"]
