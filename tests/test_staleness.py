"""Stale error-feedback residuals under partial participation (fedcomp.compress.quant.staleness)."""

from __future__ import annotations

import numpy as np
import pytest

from fedcomp.compress.quant.staleness import StalePolicy, age_residual, parse_policy
from fedcomp.errors import ConfigError

STATE = {"residual/w": np.full(3, 2.0, np.float32), "rounds": np.array(4, np.int64)}


def test_policies_scale_or_drop_the_residual_and_nothing_else() -> None:
    assert np.array_equal(age_residual(STATE, 9, parse_policy("keep"))["residual/w"], STATE["residual/w"])
    decayed = age_residual(STATE, 2, parse_policy("decay:0.5"))
    assert decayed["residual/w"].tolist() == [0.5, 0.5, 0.5] and decayed["rounds"] == 4
    assert age_residual(STATE, 0, parse_policy("decay:0.5"))["residual/w"].tolist() == [2.0] * 3
    assert "residual/w" in age_residual(STATE, 2, parse_policy("reset:3"))
    assert set(age_residual(STATE, 3, parse_policy("reset:3"))) == {"rounds"}


def test_parse_policy_defaults_and_errors() -> None:
    assert parse_policy("decay") == StalePolicy("decay", 0.9)
    assert parse_policy("reset:2") == StalePolicy("reset", 2.0)
    for bad, match in (("fade", "not one of"), ("decay:x", "not a number"), ("decay:1.5", r"in \(0, 1\]"),
                       ("reset:0.5", "whole number")):
        with pytest.raises(ConfigError, match=match):
            parse_policy(bad)
