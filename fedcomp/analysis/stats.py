"""Statistics a communication benchmark reports: paired differences with confidence intervals, rounds
and bytes to reach a target accuracy, and the cheapest setting within some points of a baseline.

Pure Python and SciPy over numbers: no Flower, no Ray.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided confidence interval ``[low, high]`` from ``n`` values (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half(self) -> float:
        """Half the interval's width (the ``±`` figure)."""
        return (self.high - self.low) / 2


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with its Student-t confidence interval (``n - 1`` degrees of freedom)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = student_t.ppf((1 + confidence) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = 0.95) -> Interval:
    """Mean and confidence interval of ``values[s] - baseline[s]`` over the seeds ``s`` both have (paired t).

    Parameters
    ----------
    values, baseline:
        A figure per seed (final accuracy, say) of a scheme and of the baseline, run on the same seeds.

    Returns
    -------
    The `Interval` of the per-seed differences; ``n`` is the number of pairs.
    """
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        raise ValueError("no seed in common")
    return mean_interval([values[s] - baseline[s] for s in seeds], confidence)


def rounds_to_reach(accuracies: Sequence[float], target: float) -> int | None:
    """The first round (1-based) whose accuracy is at least ``target``; None if none is."""
    return next((i + 1 for i, acc in enumerate(accuracies) if acc >= target), None)


def bytes_to_reach(accuracies: Sequence[float], cumulative_bytes: Sequence[float], target: float) -> float | None:
    """Cumulative bytes sent up to and including the first round reaching ``target``; None if none does."""
    reached = rounds_to_reach(accuracies, target)
    return None if reached is None else cumulative_bytes[reached - 1]


def least_bytes_within(candidates: Mapping[str, tuple[float, Interval]], points: float) -> str | None:
    """The candidate with the fewest bytes whose mean accuracy difference to the baseline is at least ``-points``.

    Parameters
    ----------
    candidates:
        ``name -> (bytes, accuracy difference to the baseline)``; differences and ``points`` in the same unit
        (accuracy fractions: 0.01 is 1 point).

    Returns
    -------
    The name, or None when no candidate is within ``points``.
    """
    within = [(size, name) for name, (size, diff) in candidates.items() if diff.mean >= -points]
    return min(within)[1] if within else None

