"""The benchmark statistics on cases computed by hand."""

from __future__ import annotations

import math

import pytest

from fedcomp.analysis.stats import (Interval, bytes_to_reach, least_bytes_within, mean_interval, paired_difference,
                                    rounds_to_reach)


def test_paired_difference_is_a_student_t_interval_over_seed_pairs() -> None:
    # differences 1, 2, 3: mean 2, sd 1, standard error 1/sqrt(3); t(0.975, 2 df) = 4.302653
    diff = paired_difference({0: 11.0, 1: 22.0, 2: 33.0, 7: 99.0}, {0: 10.0, 1: 20.0, 2: 30.0})
    assert diff.n == 3 and diff.mean == pytest.approx(2.0)
    assert diff.half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert (diff.low, diff.high) == pytest.approx((2 - 2.484138, 2 + 2.484138), rel=1e-6)
    # two pairs, differences 0.01 and 0.03: sd 0.0141421, t(0.975, 1 df) = 12.706205
    two = mean_interval([0.01, 0.03])
    assert two.half == pytest.approx(12.706205 * 0.0141421356 / math.sqrt(2), rel=1e-6)
    assert mean_interval([0.9], 0.95).mean == 0.9 and math.isnan(mean_interval([0.9]).low)
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_rounds_and_bytes_to_reach_a_target() -> None:
    accuracy = [0.2, 0.5, 0.49, 0.81, 0.9]
    cumulative = [100, 200, 300, 400, 500]
    assert rounds_to_reach(accuracy, 0.5) == 2 and bytes_to_reach(accuracy, cumulative, 0.5) == 200
    assert rounds_to_reach(accuracy, 0.8) == 4 and bytes_to_reach(accuracy, cumulative, 0.8) == 400
    assert rounds_to_reach(accuracy, 0.95) is None and bytes_to_reach(accuracy, cumulative, 0.95) is None


def test_least_bytes_within_points_of_the_baseline() -> None:
    def diff(mean: float) -> Interval:
        return Interval(mean, mean - 0.01, mean + 0.01, 3)

    candidates = {"a": (1000.0, diff(-0.002)), "b": (300.0, diff(-0.009)), "c": (100.0, diff(-0.02))}
    assert least_bytes_within(candidates, 0.01) == "b"  # c is cheaper but 2 points below
    assert least_bytes_within(candidates, 0.03) == "c"
    assert least_bytes_within(candidates, 0.001) is None

