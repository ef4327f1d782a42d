"""Settings: defaults, validation messages, layering, TOML and the Flower app config."""

import tomllib

import pytest

from fedcomp.run.config import SETTINGS, defaults, flatten, load_toml, parse_assignment, resolve, validate_value
from fedcomp.errors import ConfigError
from fedcomp.run.presets import PRESETS, preset
from conftest import ROOT


def test_pyproject_flower_config_equals_the_defaults():
    """`flwr run .` must see exactly fedcomp's defaults (Flower ignores keys it was not given)."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        flower = flatten(tomllib.load(f)["tool"]["flwr"]["app"]["config"])
    assert flower == defaults()


def test_unknown_key_lists_the_valid_ones_and_a_close_match():
    with pytest.raises(ConfigError) as err:
        resolve({"round": 3})
    assert "Did you mean rounds" in str(err.value)
    assert "num_clients" in str(err.value) and "data.alpha" in str(err.value)


@pytest.mark.parametrize("key,value,fragment", [
    ("partition", "random", "must be one of iid, dirichlet, pathological"),
    ("model", "transformer", "must be one of cnn, cnn_bn, lenet5, mlp"),
    ("dataset", "mnist", "folder:..."),
    ("fraction", 1.5, "in (0, 1]"),
    ("rounds", 0, "> 0"),
    ("rounds", "many", "expects int"),
    ("lr", "fast", "expects float"),
    ("data.download", "maybe", "expects bool"),
    ("data.download", 1, "true or false"),
])
def test_bad_values_fail_with_one_clear_message(key, value, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        validate_value(key, value)
    assert fragment in str(err.value)
    assert key in str(err.value)


def test_strings_from_the_command_line_take_the_setting_type():
    assert validate_value("rounds", "5") == 5
    assert validate_value("lr", "0.1") == 0.1
    assert validate_value("fraction", 1) == 1.0
    assert validate_value("data.download", "true") is True
    assert validate_value("dataset", "folder:/x/y") == "folder:/x/y"
    assert validate_value("model", "python:pkg.mod:build") == "python:pkg.mod:build"


def test_layers_apply_in_order(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('rounds = 7\nmodel = "mlp"\n[data]\nalpha = 0.1\n')
    config = resolve(preset("quick"), load_toml(toml), dict([parse_assignment("rounds=9")]))
    assert config["num_clients"] == 4  # preset
    assert config["model"] == "mlp" and config["data.alpha"] == 0.1  # file
    assert config["rounds"] == 9  # --set wins
    assert config["output.preset"] == "quick"
    assert set(config) == set(SETTINGS)


def test_bad_files_and_assignments(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(broken)
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignment("rounds")


def test_every_preset_resolves():
    for name in PRESETS:
        resolve(preset(name))
    with pytest.raises(ConfigError, match="available presets: default"):
        preset("nope")


def test_flwr_run_config_naming_a_preset_applies_it_beneath_the_changed_keys():
    from fedcomp.run.config import from_run_config

    run_config = {**defaults(), "preset": "fsfl-bidir", "rounds": 3}
    config = from_run_config(run_config)
    assert config["fsfl.mode"] == "compensate" and config["down.scheme"] == "uniform-ans"
    assert config["up.qp"] == -20 and config["rounds"] == 3
    assert from_run_config(defaults()) == defaults()  # fedcomp run passes resolved settings, no preset


def test_a_scheme_sets_its_direction_and_explicit_keys_win():
    config = resolve({"up.scheme": "stc", "up.fraction": 0.05}, {"down.scheme": "uniform-ans", "up.scheme": "stc"})
    assert config["up.quantizer"] == "stc" and config["up.fraction"] == 1 / 400  # a later scheme resets its keys
    assert config["down.quantizer"] == "uniform" and config["down.sparsify"] == "none"
    assert resolve({"up.scheme": "stc", "up.fraction": 0.05})["up.fraction"] == 0.05


def test_every_preset_round_trips_through_its_toml(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    fedcomp = str(Path(sys.executable).parent / "fedcomp")
    for name in ("fsfl-bidir", "nnc", "fsfl-partial"):
        shown = subprocess.run([fedcomp, "presets", "--show", name], capture_output=True, text=True, timeout=300)
        assert shown.returncode == 0, shown.stderr
        (tmp_path / f"{name}.toml").write_text(shown.stdout)
        assert resolve(load_toml(tmp_path / f"{name}.toml")) == {**resolve(preset(name)), "output.preset": "default"}
