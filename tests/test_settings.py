"""Settings declared beside their dataclasses: one default per key, built without re-casting, resolved once per run."""

import dataclasses

import pytest

from fedcomp.compress.compression import DIRECTIONS, CompressionSpec, direction_spec
from fedcomp.data.bundle import DataOptions
from fedcomp.errors import ConfigError
from fedcomp.exchange.faults import FaultPlan
from fedcomp.exchange.updates import UpdateSettings
from fedcomp.fantastic4.edge import EdgeSettings
from fedcomp.local.qat import QATSettings
from fedcomp.local.training import TrainSettings
from fedcomp.run import config
from fedcomp.run.config import defaults, from_run_config, registry, resolve
from fedcomp.settings import build, collect, declared

DECLARING = [TrainSettings, QATSettings, UpdateSettings, FaultPlan, EdgeSettings, DataOptions]


@pytest.mark.parametrize("cls", DECLARING, ids=lambda c: c.__name__)
def test_a_dataclass_built_from_the_default_settings_is_its_own_default(cls):
    given = {"up": direction_spec(defaults(), "up"), "down": direction_spec(defaults(), "down")} \
        if cls is UpdateSettings else {}
    built = build(cls, defaults(), **given)
    assert built == cls(**given)
    for key in declared(cls):
        assert key in registry()


def test_qat_gamma_has_one_default():
    assert QATSettings.gamma == defaults()["qat.gamma"] == 0.05
    assert QATSettings.from_config(resolve({"qat.method": "ecqx"})) == QATSettings("ecqx")


def test_values_reach_the_dataclasses_with_their_types_and_parsed():
    settings = resolve({"local_epochs": "3", "lr": 1, "data.features": "a, b", "faults.slow_seconds": 2,
                        "seed": 7})
    train = TrainSettings.from_config(settings)
    assert (train.epochs, train.lr) == (3, 1.0) and isinstance(train.lr, float)
    data = DataOptions.from_config(settings)
    assert data.features == ("a", "b") and data.seed == 7
    assert FaultPlan.from_config(settings) == FaultPlan(slow_seconds=2.0, seed=7)


def test_every_compression_spec_field_but_the_seed_is_a_setting_of_each_direction():
    fields = {f.name for f in dataclasses.fields(CompressionSpec)} - {"seed"}
    for direction in DIRECTIONS:
        assert {k for k in registry() if k.startswith(f"{direction}.")} == {f"{direction}.{f}" for f in fields} | {
            f"{direction}.scheme"}


def test_a_key_declared_twice_is_refused():
    with pytest.raises(RuntimeError, match="declared twice: lr"):
        collect(declared(TrainSettings), {"lr": registry()["lr"]})


def test_a_wrong_key_gets_one_message_listing_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        resolve({"qat.gama": 0.1})
    message = str(err.value)
    assert "unknown setting 'qat.gama'" in message and "Did you mean qat.gamma" in message
    assert all(key in message for key in registry())


def test_a_run_config_is_resolved_once_and_each_caller_gets_its_own_copy():
    run_config = {**defaults(), "rounds": 4, "seed": 12345}
    before = config._resolved.cache_info()
    first = from_run_config(run_config)
    second = from_run_config(dict(reversed(run_config.items())))  # same settings, another order
    after = config._resolved.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    assert first == second and first is not second and first["rounds"] == 4
    first["rounds"] = 99
    assert from_run_config(run_config)["rounds"] == 4
