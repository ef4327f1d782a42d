import numpy as np
import pytest

from fedcomp.compress.quant import RandomK, StatisticsThreshold, StructuredFilters, TopK
from fedcomp.compress.quant.sparsify import keep_count


def _update(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "bias": rng.normal(size=8).astype(np.float32),
        "fc": rng.normal(size=(10, 50)).astype(np.float32) * 3,
    }


def test_topk_per_tensor_keeps_the_largest_and_exempts_1d():
    up = _update()
    out = TopK(0.1).sparsify(up)
    assert np.array_equal(out["bias"], up["bias"])
    for name in ("conv", "fc"):
        kept = out[name] != 0
        assert kept.sum() == keep_count(0.1, up[name].size)
        assert np.abs(up[name][kept]).min() >= np.abs(up[name][~kept]).max()
        assert np.array_equal(out[name][kept], up[name][kept])


def test_topk_global_uses_one_threshold():
    up = _update()
    out = TopK(0.05, scope="global").sparsify(up)
    kept = np.concatenate([(out[k] != 0).ravel() for k in ("conv", "fc")])
    values = np.concatenate([up[k].ravel() for k in ("conv", "fc")])
    assert kept.sum() == keep_count(0.05, values.size)
    assert np.abs(values[kept]).min() >= np.abs(values[~kept]).max()
    # fc has 3x larger values, so it takes most of the global budget
    assert (out["fc"] != 0).sum() > (out["conv"] != 0).sum()


def test_include_1d():
    out = TopK(0.25, include_1d=True).sparsify(_update())
    assert (out["bias"] != 0).sum() == 2


def test_randk_count_and_reproducible():
    up = _update()
    a = RandomK(0.1).sparsify(up, np.random.default_rng(1))
    b = RandomK(0.1).sparsify(up, np.random.default_rng(1))
    c = RandomK(0.1).sparsify(up, np.random.default_rng(2))
    assert all(np.array_equal(a[k], b[k]) for k in up)
    assert not np.array_equal(a["fc"], c["fc"])
    assert (a["fc"] != 0).sum() == 50
    with pytest.raises(ValueError):
        RandomK(0.1).sparsify(up)


@pytest.mark.parametrize("target", [0.0, 0.5, 0.9, 0.99])
def test_statistics_threshold_reaches_target(target):
    up = _update()
    sp = StatisticsThreshold(target)
    out = sp.sparsify(up)
    for name in ("conv", "fc"):
        zero_frac = (out[name] == 0).mean()
        assert zero_frac >= target
        t = sp.threshold(up[name])
        mu, sigma = up[name].astype(np.float64).mean(), up[name].astype(np.float64).std()
        # the threshold has the NNCodec form |mu| + delta * sigma with delta >= 0
        assert t >= abs(mu) - 1e-12
        assert np.all(np.abs(up[name][out[name] != 0]) > t)
        assert (t - abs(mu)) / sigma >= -1e-12


def test_statistics_threshold_never_below_half_step():
    x = {"w": np.full((4, 4), 0.01, dtype=np.float32)}
    out = StatisticsThreshold(0.0, min_step=0.1).sparsify(x)
    assert np.all(out["w"] == 0)


def test_structured_zeroes_weak_filters():
    w = np.ones((4, 5), dtype=np.float32)
    w[1] *= 0.1
    w[3] *= 0.2
    out = StructuredFilters(gain=1.0).sparsify({"w": w})["w"]
    assert np.all(out[[1, 3]] == 0) and np.array_equal(out[[0, 2]], w[[0, 2]])
