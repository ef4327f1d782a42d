"""Frontier maths on hand-made runs: pooling over seeds, Pareto fronts, least bytes to a target."""

import statistics

import pytest

from fedcomp.errors import FedcompError
from fedcomp.analysis.frontier import aggregate, bytes_to_target, pareto, run_points, split_keys, target_accuracy


def run(preset, fraction, seed, nbytes, acc, lr=0.05):
    config = {"output.preset": preset, "fraction": fraction, "seed": seed, "lr": lr, "output.dir": f"/x/{seed}"}
    return (f"{preset}-{fraction}-{seed}", config, {"bytes_total": nbytes, "final_accuracy": acc,
                                                     "best_accuracy": acc + 0.01})


RUNS = [
    run("a", 0.25, 0, 100, 0.80), run("a", 0.25, 1, 110, 0.84),
    run("a", 0.5, 0, 200, 0.90), run("a", 0.5, 1, 210, 0.86),
    run("a", 1.0, 0, 400, 0.87), run("a", 1.0, 1, 400, 0.87),  # dearer and worse than 0.5: off the frontier
    run("b", 0.25, 0, 50, 0.70), run("b", 0.25, 1, 50, 0.74),
    run("b", 0.5, 0, 90, 0.89), run("b", 0.5, 1, 95, 0.84),
]


def test_scheme_and_knob_keys_come_from_what_varies():
    schemes, knobs = split_keys([c for _, c, _ in RUNS])
    assert schemes == ["output.preset"] and knobs == ["fraction"]  # lr, seed and output.dir are not knobs
    assert split_keys([c for _, c, _ in RUNS], ["fraction"]) == (["fraction"], ["output.preset"])
    follows = [{**c, "model": "mlp" if c["output.preset"] == "b" else "cnn"} for _, c, _ in RUNS]
    assert split_keys(follows) == (["output.preset"], ["fraction"])  # the model only follows the scheme
    named = [{**c, "up.scheme": "topk" if c["output.preset"] == "b" else "stc"} for _, c, _ in RUNS]
    assert split_keys(named) == (["output.preset"], ["fraction"])  # up.scheme follows the preset: not in the name


def test_points_pool_seeds_with_their_spread():
    points = aggregate(run_points(RUNS))
    a_half = next(p for p in points if p.scheme == "a" and p.knob == (("fraction", 0.5),))
    assert a_half.seeds == 2 and a_half.bytes_mean == 205
    assert a_half.acc_mean == pytest.approx(0.88) and a_half.acc_std == pytest.approx(statistics.stdev([0.9, 0.86]))
    assert (a_half.acc_min, a_half.acc_max) == (0.86, 0.90)
    best = aggregate(run_points(RUNS, metric="best_accuracy"))
    assert next(p for p in best if p.scheme == "a" and p.knob == (("fraction", 0.5),)).acc_mean == pytest.approx(0.89)


def test_pareto_keeps_only_points_no_cheaper_point_beats():
    fronts = pareto(aggregate(run_points(RUNS)))
    assert [p.knob for p in fronts["a"]] == [(("fraction", 0.25),), (("fraction", 0.5),)]
    assert [p.knob for p in fronts["b"]] == [(("fraction", 0.25),), (("fraction", 0.5),)]


def test_least_bytes_to_target_per_seed_and_on_means():
    rp = run_points(RUNS)
    points = aggregate(rp)
    target, text = target_accuracy(points, "a", 0.01)
    assert target == pytest.approx(0.87) and "1 pp below a" in text
    result = {t.scheme: t for t in bytes_to_target(rp, points, target)}
    # scheme a: seed 0 first reaches 0.87 at 200 bytes, seed 1 at 400; the means reach it at 205
    assert result["a"].per_seed == (200, 400) and result["a"].reached == 2
    assert result["a"].mean == 300 and result["a"].std == pytest.approx(statistics.stdev([200, 400]))
    assert result["a"].of_means == 205
    # scheme b: only seed 0 reaches it (0.89 at 90 bytes); no mean point does
    assert result["b"].per_seed == (90,) and result["b"].seeds == 2 and result["b"].of_means is None


def test_unknown_baseline_is_one_clear_error():
    with pytest.raises(FedcompError, match="baseline scheme 'zz'.*a, b"):
        target_accuracy(aggregate(run_points(RUNS)), "zz", 0.01)
