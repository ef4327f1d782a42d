"""Accuracy against transmitted bytes across many runs: seed spread, Pareto frontiers, bytes to a target.

Runs are grouped twice. The *scheme* is what the settings in ``scheme_keys`` say (a preset
name, ``up.scheme``, ...); the *knob* is every other setting that varies between runs,
except the seed. Runs that differ only in their seed are one *point*: its mean accuracy,
the spread over seeds (standard deviation and min-max band) and mean bytes. A scheme's
frontier is its points that no cheaper point of the same scheme beats in mean accuracy.

Pure Python over run summaries: no Flower, no Ray, no plotting.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from fedcomp.errors import FedcompError

SEED_KEY = "seed"
SCHEME_CANDIDATES = ("output.preset", "up.scheme", "down.scheme")
IGNORED = ("output.dir",)


@dataclass(frozen=True)
class RunPoint:
    """One finished run as the frontier sees it."""

    name: str
    scheme: str
    knob: tuple[tuple[str, Any], ...]
    seed: int
    bytes_total: int
    accuracy: float


@dataclass(frozen=True)
class Point:
    """The runs of one scheme and knob setting, over seeds."""

    scheme: str
    knob: tuple[tuple[str, Any], ...]
    seeds: int
    bytes_mean: float
    acc_mean: float
    acc_std: float
    acc_min: float
    acc_max: float

    @property
    def knob_label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.knob) or "-"


@dataclass(frozen=True)
class TargetBytes:
    """The least bytes with which a scheme reaches a target accuracy, with its spread over seeds.

    ``per_seed`` holds, for each seed that reaches the target at some swept point, the
    smallest total bytes doing so; ``of_means`` is the same question asked of the points'
    mean accuracies (None when no point's mean reaches it).
    """

    scheme: str
    target: float
    seeds: int
    per_seed: tuple[int, ...]
    of_means: float | None

    @property
    def reached(self) -> int:
        return len(self.per_seed)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.per_seed) if self.per_seed else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.per_seed) if len(self.per_seed) > 1 else (0.0 if self.per_seed else None)


def varied_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Settings whose value is not the same in every config (the config diff), in sorted order."""
    keys = sorted({k for c in configs for k in c} - set(IGNORED))
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def split_keys(configs: Sequence[Mapping[str, Any]],
               scheme_keys: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(scheme keys, knob keys) of a set of runs; by default the scheme is the varied preset/scheme settings.

    A knob is a setting that varies among the runs of one scheme (not one that only follows
    the scheme, such as the model a preset picks), the seed excepted.
    """
    varied = varied_keys(configs)
    if scheme_keys is not None:
        schemes = list(scheme_keys)
    else:  # a candidate that only follows an earlier one (a preset's up.scheme) adds nothing to the name
        schemes = []
        for key in (k for k in SCHEME_CANDIDATES if k in varied):
            if not schemes or key in _varying_within(configs, schemes):
                schemes.append(key)
    within = _varying_within(configs, schemes)
    return schemes, [k for k in varied if k in within and k not in schemes and k != SEED_KEY]


def _varying_within(configs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> set[str]:
    """Settings that vary among configs sharing the same values of ``keys``."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for config in configs:
        groups.setdefault(tuple(repr(config.get(k)) for k in keys), []).append(config)
    return {k for members in groups.values() for k in varied_keys(members)}


def run_points(runs: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]], metric: str = "final_accuracy",
               scheme_keys: Sequence[str] | None = None) -> list[RunPoint]:
    """``(name, config, summary)`` triples to frontier points; ``metric`` is final_accuracy or best_accuracy."""
    schemes, knobs = split_keys([c for _, c, _ in runs], scheme_keys)
    points = []
    for name, config, summary in runs:
        scheme = ", ".join(str(config.get(k)) for k in schemes) if schemes else "all"
        points.append(RunPoint(name, scheme, tuple((k, config.get(k)) for k in knobs), int(config.get(SEED_KEY, 0)),
                               int(summary["bytes_total"]), float(summary[metric])))
    return points


def aggregate(points: Iterable[RunPoint]) -> list[Point]:
    """One `Point` per (scheme, knob), sorted by scheme then mean bytes."""
    groups: dict[tuple[str, tuple], list[RunPoint]] = {}
    for p in points:
        groups.setdefault((p.scheme, p.knob), []).append(p)
    out = []
    for (scheme, knob), members in groups.items():
        acc = [m.accuracy for m in members]
        out.append(Point(scheme, knob, len(members), statistics.fmean(m.bytes_total for m in members),
                         statistics.fmean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0, min(acc), max(acc)))
    return sorted(out, key=lambda p: (p.scheme, p.bytes_mean, -p.acc_mean))


def pareto(points: Iterable[Point]) -> dict[str, list[Point]]:
    """Per scheme, the points that are more accurate (in mean) than every cheaper point, by bytes."""
    fronts: dict[str, list[Point]] = {}
    for p in sorted(points, key=lambda p: (p.bytes_mean, -p.acc_mean)):
        front = fronts.setdefault(p.scheme, [])
        if not front or p.acc_mean > front[-1].acc_mean:
            front.append(p)
    return fronts


def target_accuracy(points: Sequence[Point], baseline: str | None, within: float) -> tuple[float, str]:
    """(target, what it is): ``within`` below the baseline scheme's best mean accuracy (or all schemes' best)."""
    pool = [p for p in points if baseline is None or p.scheme == baseline]
    if not pool:
        known = ", ".join(sorted({p.scheme for p in points}))
        raise FedcompError(f"no runs of the baseline scheme {baseline!r}; the schemes are: {known}")
    best = max(pool, key=lambda p: p.acc_mean)
    source = f"{baseline} ({best.knob_label})" if baseline else f"the best point ({best.scheme}, {best.knob_label})"
    return best.acc_mean - within, f"{within * 100:g} pp below {source}'s mean accuracy {best.acc_mean:.4f}"


def bytes_to_target(runs: Sequence[RunPoint], points: Sequence[Point], target: float) -> list[TargetBytes]:
    """Per scheme, the least bytes reaching ``target``: per seed (for the spread) and on the mean points."""
    out = []
    for scheme in sorted({r.scheme for r in runs}):
        mine = [r for r in runs if r.scheme == scheme]
        seeds = sorted({r.seed for r in mine})
        per_seed = []
        for seed in seeds:
            hits = [r.bytes_total for r in mine if r.seed == seed and r.accuracy >= target]
            if hits:
                per_seed.append(min(hits))
        means = [p.bytes_mean for p in points if p.scheme == scheme and p.acc_mean >= target]
        out.append(TargetBytes(scheme, target, len(seeds), tuple(per_seed), min(means) if means else None))
    return out
