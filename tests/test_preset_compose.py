"""Presets compose in order: workload presets and compression presets, later ones winning within a kind."""

from __future__ import annotations

import pytest

from fedcomp.cli import build_config, savings_line
from fedcomp.errors import ConfigError
from fedcomp.run.config import defaults, from_run_config, resolve
from fedcomp.run.presets import (COMPRESSIONS, FLAGSHIP, PRESETS, WORKLOADS, compose, kind, owned_keys, owns, preset,
                                 split_names)


def without_name(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "output.preset"}


def test_a_workload_and_a_compression_preset_combine_and_name_both() -> None:
    config = resolve(compose(["fmnist", "fsfl-bidir"]))
    assert (config["dataset"], config["model"], config["num_clients"], config["fraction"]) == (
        "fashion-mnist", "lenet5", 100, 0.1)
    assert config["up.scheme"] == config["down.scheme"] == "uniform-ans" and config["fsfl.mode"] == "compensate"
    assert config["output.preset"] == "fmnist+fsfl-bidir"
    # presets of different kinds touch different keys, so their order does not matter
    assert without_name(resolve(compose(["fsfl-bidir", "fmnist"]))) == without_name(config)


def test_a_later_preset_replaces_an_earlier_one_of_its_kind() -> None:
    assert without_name(resolve(compose(["fsfl-bidir", "fedavg"]))) == without_name(resolve(preset("fedavg")))
    later = resolve(compose(["stc", "topk-ef"]))  # topk-ef compresses only upstream: stc's down.* is gone
    assert later["up.scheme"] == "topk-uniform-ans" and later["down.scheme"] == ""
    assert later["down.quantizer"] == defaults()["down.quantizer"]
    back = resolve(compose(["fmnist", "fsfl-bidir", "digits"]))
    assert back["dataset"] == "digits" and back["num_clients"] == 10 and back["up.scheme"] == "uniform-ans"
    assert without_name(resolve(compose(["fmnist", "fsfl-bidir", "default"]))) == without_name(defaults())


def test_one_preset_composes_to_itself_and_explicit_settings_still_win() -> None:
    for name in PRESETS:
        assert compose([name]) == preset(name)
    assert resolve(compose(["fmnist", "nnc"]), {"rounds": 3})["rounds"] == 3


def test_every_preset_sets_only_keys_of_its_kind() -> None:
    for name, (_, settings) in PRESETS.items():
        assert all(owns(owned_keys(name), key) for key in settings), name
    assert {kind(n) for n in WORKLOADS} == {"workload"} and {kind(n) for n in COMPRESSIONS} == {"compression"}
    assert kind("default") == "both"


def test_names_in_one_string_and_unknown_names() -> None:
    assert split_names("fmnist, fsfl-bidir") == split_names("fmnist+fsfl-bidir") == ["fmnist", "fsfl-bidir"]
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        compose(["fmnist", "nope"])
    with pytest.raises(ConfigError, match="no preset named"):
        compose([])


def test_flwr_run_config_composes_the_presets_it_names() -> None:
    run_config = {**defaults(), "preset": "fmnist,fsfl-bidir", "rounds": 5}
    assert from_run_config(run_config) == resolve(compose(["fmnist", "fsfl-bidir"]), {"rounds": 5})
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        from_run_config({**defaults(), "preset": "fmnist,nope"})


def test_the_cli_builds_presets_in_order_and_names_the_flagship(tmp_path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text("rounds = 4\n")
    config = build_config(["fmnist", "fsfl-bidir"], toml, ["seed=2"])
    assert config == resolve(compose(["fmnist", "fsfl-bidir"]), {"rounds": 4, "seed": 2})
    assert build_config([FLAGSHIP], None, [])["output.preset"] == FLAGSHIP
    summary = {"compression_ratio": 282.4, "bytes_total": 217_000, "fedavg_bytes_total": 61_300_000}
    assert savings_line(summary, FLAGSHIP) == (f"{FLAGSHIP}: 282x fewer bytes than FedAvg would have sent "
                                               "(0.217 MB instead of 61.300 MB)")
    assert savings_line({**summary, "compression_ratio": 0.994}, "fedavg").startswith("fedavg: 0.99x fewer")
