"""The divergence rules on the central test loss and the chance-level warning, as plain functions (issue 18)."""

from __future__ import annotations

import math

import pytest

from fedcomp.errors import ConfigError, DivergedError
from fedcomp.records.divergence import DivergenceRules, chance_warning
from fedcomp.run.config import resolve


@pytest.mark.parametrize("loss", [math.nan, math.inf])
def test_a_non_finite_loss_stops_the_run_whatever_the_ratio(loss: float) -> None:
    for ratio in (0.0, 1000.0):
        with pytest.raises(DivergedError) as err:
            DivergenceRules(max_loss_ratio=ratio).check_loss(7, loss, 2.3)
        assert err.value.round == 7 and "round 7" in str(err.value) and "central test loss" in str(err.value)


def test_a_loss_above_the_ratio_times_the_initial_loss_stops_the_run() -> None:
    rules = DivergenceRules(max_loss_ratio=100.0)
    rules.check_loss(4, 200.0, 2.0)  # exactly 100 times: not above
    with pytest.raises(DivergedError) as err:
        rules.check_loss(5, 201.0, 2.0)
    assert err.value.round == 5
    assert str(err.value) == ("the run diverged in round 5: the central test loss 201 is more than 100 times the "
                              "initial model's 2 (server.max_loss_ratio)")


def test_ratio_zero_or_an_unknown_initial_loss_leaves_only_the_non_finite_rule() -> None:
    DivergenceRules(max_loss_ratio=0.0).check_loss(3, 1e32, 2.3)
    DivergenceRules(max_loss_ratio=10.0).check_loss(3, 1e32, None)


def test_the_rules_come_from_the_run_settings() -> None:
    assert DivergenceRules.from_config(resolve({})) == DivergenceRules(max_failed_rounds=3, max_loss_ratio=1000.0)
    rules = DivergenceRules.from_config(resolve({"server.max_loss_ratio": 50, "server.max_failed_rounds": 0}))
    assert rules == DivergenceRules(max_failed_rounds=0, max_loss_ratio=50.0)
    with pytest.raises(ConfigError, match="server.max_loss_ratio"):
        resolve({"server.max_loss_ratio": -1.0})


def test_chance_level_is_one_over_the_classes_plus_a_small_margin() -> None:
    assert chance_warning(0.1, 10) == "final accuracy 0.100 is chance level for 10 classes: the model did not learn"
    assert chance_warning(0.12, 10) is not None and chance_warning(0.121, 10) is None
    assert chance_warning(0.51, 2) is not None and chance_warning(0.6, 2) is None
    assert chance_warning(None, 10) is None and chance_warning(1.0, 1) is None
