"""ECQ, ECQx and EC2T maths on plain numpy (DESIGN 4.7)."""

import numpy as np
import pytest

from fedcomp.quant import QuantKind
from fedcomp.quant.ecq import ECQQuantizer, ECQxQuantizer, envelope_assign, grid_range


def laplace(shape, seed=0, scale=0.01):
    return (np.random.default_rng(seed).laplace(size=shape) * scale).astype(np.float32)


def entropy(symbols):
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def test_envelope_matches_brute_force_argmin():
    rng = np.random.default_rng(1)
    for _ in range(20):
        k = int(rng.integers(2, 20))
        centroids = np.sort(rng.normal(size=k))
        penalty = rng.exponential(size=k)
        penalty[rng.random(k) < 0.2] = np.inf
        penalty[0] = 1.0
        w = rng.normal(size=2000).astype(np.float32)
        brute = np.argmin((w[:, None].astype(np.float64) - centroids) ** 2 + penalty, axis=1)
        got = envelope_assign(w, centroids, penalty)
        # equal up to float32 ties at a breakpoint: compare the costs reached
        cost = (w.astype(np.float64) - centroids[got]) ** 2 + penalty[got]
        best = (w.astype(np.float64) - centroids[brute]) ** 2 + penalty[brute]
        np.testing.assert_allclose(cost, best, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_gamma_zero_is_nearest_centroid(bits):
    w = laplace((300, 40), seed=bits)
    q = ECQQuantizer(bits=bits, gamma=0.0)
    t = q.quantize(w)
    _, step = q.assign(w)
    low, high = grid_range(bits)
    grid = np.arange(low, high + 1) * np.float32(step)
    distance = np.abs(w.reshape(-1, 1).astype(np.float64) - grid)
    chosen = distance[np.arange(w.size), t.symbols.reshape(-1) - low]
    # the chosen level is a nearest one (ties at a midpoint may go either way in float32)
    np.testing.assert_allclose(chosen, distance.min(axis=1), rtol=0, atol=1e-6 * step)


def test_symbols_times_step_is_the_value():
    w = laplace((64, 64))
    q = ECQQuantizer(bits=4, gamma=0.1)
    symbols, step = q.assign(w)
    t = q.quantize(w)
    assert t.kind == QuantKind.CODEBOOK
    np.testing.assert_array_equal(t.symbols, symbols)
    assert symbols.min() >= -8 and symbols.max() <= 7
    np.testing.assert_array_equal(t.dequantize(), symbols.astype(np.float32) * np.float32(step))
    compact = ECQQuantizer(bits=4, gamma=0.1, codebook=False).quantize(w)
    assert compact.kind == QuantKind.UNIFORM_STEP
    np.testing.assert_array_equal(compact.dequantize(), t.dequantize())


def test_sparsity_rises_and_entropy_falls_with_gamma():
    w = laplace((200, 100), seed=3)
    sparsity, entropies = [], []
    for gamma in (0.0, 0.01, 0.03, 0.1, 0.2, 0.4, 0.8):
        symbols = ECQQuantizer(bits=4, gamma=gamma).quantize(w).symbols
        sparsity.append(float(np.mean(symbols == 0)))
        entropies.append(entropy(symbols))
    assert all(a < b for a, b in zip(sparsity, sparsity[1:])), sparsity
    assert all(a > b for a, b in zip(entropies, entropies[1:])), entropies
    assert sparsity[-1] > 0.95 and sparsity[0] < 0.5


def test_zero_probability_floor_makes_zero_cheapest():
    # a wide distribution has few values near zero; the P_0 >= 0.5 floor still pulls values to zero
    w = np.random.default_rng(0).uniform(-1, 1, size=10_000).astype(np.float32)
    plain = ECQQuantizer(bits=3, gamma=0.0).quantize(w).symbols
    constrained = ECQQuantizer(bits=3, gamma=0.2).quantize(w).symbols
    assert np.mean(constrained == 0) > np.mean(plain == 0) + 0.05


def test_layer_decay_weakens_small_layers():
    w = laplace((100, 50))
    full = ECQQuantizer(bits=4, gamma=0.2).quantize(w).symbols
    small = ECQQuantizer(bits=4, gamma=0.2, max_size=100 * w.size).quantize(w).symbols
    assert np.mean(small == 0) < np.mean(full == 0)


def test_bad_arguments_and_values():
    with pytest.raises(ValueError, match="bits"):
        ECQQuantizer(bits=1)
    with pytest.raises(ValueError, match="gamma"):
        ECQQuantizer(gamma=-1)
    with pytest.raises(ValueError, match="non-finite"):
        ECQQuantizer().quantize(np.array([1.0, np.nan], dtype=np.float32))


def test_zero_and_empty_tensors():
    q = ECQQuantizer(bits=4, gamma=0.3)
    t = q.quantize(np.zeros((3, 4), dtype=np.float32))
    np.testing.assert_array_equal(t.dequantize(), 0)
    assert q.quantize(np.zeros((0,), dtype=np.float32)).symbols.shape == (0,)


def test_ecqx_protects_relevant_weights_within_p_of_ecq_sparsity():
    w = laplace((200, 100), seed=5)
    relevance = np.random.default_rng(6).exponential(size=w.shape)
    plain = ECQQuantizer(bits=4, gamma=0.1).quantize(w).symbols
    for p in (0.0, 0.05):
        symbols = ECQxQuantizer(bits=4, gamma=0.1, p=p).quantize(w, relevance=relevance).symbols
        assert np.mean(symbols == 0) >= np.mean(plain == 0) - p - 1e-9
        top = relevance >= np.quantile(relevance, 0.9)
        assert np.mean(symbols[top] != 0) > np.mean(plain[top] != 0) + 0.05
    # without a relevance it is plain ECQ
    np.testing.assert_array_equal(ECQxQuantizer(bits=4, gamma=0.1).quantize(w).symbols, plain)
