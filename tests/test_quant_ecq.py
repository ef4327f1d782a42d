"""ECQ, ECQx and EC2T maths on plain numpy (DESIGN 4.7)."""

import numpy as np
import pytest

from fedcomp.compress.codec import decode_payload, encode_payload, get_codec
from fedcomp.compress.codec.deepcabac import available as deepcabac_available
from fedcomp.compress.compression import CompressionSpec, Compressor, decompress
from fedcomp.errors import ConfigError
from fedcomp.compress.params import ParamManifest
from fedcomp.compress.quant import QuantKind
from fedcomp.compress.quant.ecq import EC2TQuantizer, ECQQuantizer, ECQxQuantizer, envelope_assign, grid_range

CODECS = ["ans", "raw"] + (["deepcabac"] if deepcabac_available() else [])


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
        assert np.mean(plain == 0) - p - 1e-9 <= np.mean(symbols == 0) <= np.mean(plain == 0)
        top = relevance >= np.quantile(relevance, 0.9)
        assert np.mean(symbols[top] != 0) > np.mean(plain[top] != 0) + 0.05
    # without a relevance it is plain ECQ
    np.testing.assert_array_equal(ECQxQuantizer(bits=4, gamma=0.1).quantize(w).symbols, plain)


@pytest.mark.parametrize("gamma", [0.0, 0.05, 0.3])
def test_ec2t_has_at_most_three_values_zero_included(gamma):
    w = laplace((120, 80), seed=7)
    t = EC2TQuantizer(gamma=gamma).quantize(w)
    assert t.kind == QuantKind.TERNARY
    values = np.unique(t.dequantize())
    assert len(values) <= 3 and 0.0 in values
    pos, neg = t.params
    assert set(values.tolist()) <= {0.0, float(np.float32(pos)), -float(np.float32(neg))}


def test_ec2t_values_are_the_means_of_their_members_and_sparsity_grows():
    w = laplace((120, 80), seed=8)
    sparsity = []
    for gamma in (0.0, 0.1, 0.4):
        q = EC2TQuantizer(gamma=gamma)
        symbols, pos, neg = q.assign(w)
        sparsity.append(np.mean(symbols == 0))
    # one more refinement step changes w_p, w_n little: they are (near) the means of their members
    symbols, pos, neg = EC2TQuantizer(gamma=0.1, iterations=10).assign(w)
    assert pos == pytest.approx(w[symbols > 0].mean(), rel=1e-3)
    assert neg == pytest.approx(-w[symbols < 0].mean(), rel=1e-3)
    assert sparsity[0] < sparsity[1] < sparsity[2]
    # given values are used as they are (training)
    symbols, p2, n2 = EC2TQuantizer(gamma=0.0).assign(w, pos=0.02, neg=0.03)
    assert (p2, n2) == (float(np.float32(0.02)), float(np.float32(0.03)))
    np.testing.assert_array_equal(symbols, np.where(w > 0.01, 1, np.where(w < -0.015, -1, 0)))


@pytest.mark.parametrize("codec", CODECS)
def test_codebook_and_ternary_tensors_round_trip_exactly_through_every_codec(codec):
    update = {"a.weight": laplace((32, 48), seed=1), "a.bias": laplace((32,), seed=2), "b.weight": laplace((10, 32))}
    manifest = ParamManifest.from_arrays(update)
    relevance = {k: np.abs(laplace(v.shape, seed=9)) for k, v in update.items()}
    quantizers = [ECQQuantizer(bits, 0.1) for bits in (2, 4, 8)] + [ECQxQuantizer(4, 0.1), EC2TQuantizer(0.1)]
    for quantizer in quantizers:
        tensors = [quantizer.quantize(v, k, relevance[k]) for k, v in update.items()]
        decoded = decode_payload(encode_payload(tensors, manifest, get_codec(codec)), manifest).tensors
        for sent, got in zip(tensors, decoded):
            assert got.kind == sent.kind
            assert np.array_equal(got.dequantize().view(np.int32), sent.dequantize().view(np.int32))


@pytest.mark.parametrize("quantizer", ["ecq", "ecqx", "ec2t"])
def test_named_in_a_spec_with_their_knobs(quantizer):
    spec = CompressionSpec.from_dict({"quantizer": quantizer, "bits": 3, "gamma": 0.2, "p": 0.05,
                                      "relevance_batch": 16, "error_feedback": True})
    update = {"a.weight": laplace((32, 48), seed=1), "a.bias": laplace((32,), seed=2)}
    comp = Compressor(spec, ParamManifest.from_arrays(update))
    relevance = {"a.weight": np.abs(laplace((32, 48), seed=3))}
    payload, reconstruction = comp.compress(update, relevance=relevance)
    assert all(np.array_equal(v, reconstruction[k]) for k, v in decompress(payload, comp.manifest).items())
    levels = len(np.unique(reconstruction["a.weight"]))
    assert levels <= (3 if quantizer == "ec2t" else 8)
    assert np.mean(reconstruction["a.weight"] == 0) > 0.3
    with pytest.raises(ConfigError, match="relevance_batch"):
        CompressionSpec.from_dict({"quantizer": quantizer, "relevance_batch": 0})
    with pytest.raises(ConfigError, match="gamma"):
        CompressionSpec.from_dict({"quantizer": quantizer, "gamma": -1.0})


# A tiny tensor on the centroids {-1, 0, 1}, every cost worked out by hand.
TINY = np.array([-0.9, -0.6, -0.2, 0.1, 0.3, 0.55, 0.8, 1.1], dtype=np.float32)
TINY_CENTROIDS = np.array([-1.0, 0.0, 1.0])
# nearest centroid: -1 -1 0 0 0 1 1 1 -> counts 2, 3, 3; P_0 = 3/8 < 0.5, so the others are scaled by
# 0.5 / (5/8): P = (0.2, 0.5, 0.3) and I = -log2 P
TINY_INFO = np.array([np.log2(5.0), 1.0, np.log2(10.0 / 3.0)])
# lam_max per side: (w**2 - (w - c)**2) / (I_c - I_0); positive side w = 1.1, c = 1; negative w = -0.9, c = -1
TINY_LAM_POS = (1.21 - 0.01) / (np.log2(10.0 / 3.0) - 1.0)   # 1.6283
TINY_LAM_NEG = (0.81 - 0.01) / (np.log2(5.0) - 1.0)          # 0.6052


def test_ecq_assignment_of_a_tiny_tensor_matches_hand_computed_costs():
    from fedcomp.compress.quant.ecq import ecq_indices, ecq_information, lambda_max

    nearest = envelope_assign(TINY, TINY_CENTROIDS, np.zeros(3))
    np.testing.assert_allclose(ecq_information(nearest, 3, 1), TINY_INFO)
    assert np.isclose(lambda_max(TINY, TINY_CENTROIDS, TINY_INFO, 1), TINY_LAM_POS)
    assert np.isclose(lambda_max(TINY, TINY_CENTROIDS, TINY_INFO, 1, min), TINY_LAM_NEG)

    # gamma 0.25 -> lam = 0.4071: zero costs w**2 + lam, the best non-zero (w - c)**2 + lam * I_c
    lam = 0.25 * TINY_LAM_POS
    a = ecq_indices(TINY, TINY_CENTROIDS, 1, 0.25)
    w = TINY.astype(np.float64)
    np.testing.assert_allclose(a.zero_cost, w**2 + lam, rtol=1e-6)
    best_c = np.array([-1, -1, -1, 1, 1, 1, 1, 1])          # -0.2: 0.64 + 0.945 < 1.44 + 0.707
    np.testing.assert_allclose(a.nonzero_cost, (w - best_c) ** 2 + lam * TINY_INFO[best_c + 1], rtol=1e-6)
    # e.g. -0.9: 0.955 (to -1) < 1.217 (to 0); -0.6: 1.105 > 0.767; 0.55: 0.910 > 0.710; 0.8: 0.747 < 1.047
    np.testing.assert_array_equal(a.indices(1) - 1, [-1, 0, 0, 0, 0, 0, 1, 1])


def test_ecqx_zero_scale_of_a_tiny_tensor_matches_hand_computation():
    from fedcomp.compress.quant.ecq import ecq_indices, ecqx_zero_scale

    a = ecq_indices(TINY, TINY_CENTROIDS, 1, 0.25)          # ECQ: 5 zeros of 8 (above)
    r = np.array([0.9, 0.1, 0.5, 0.3, 0.2, 0.9, 0.1, 1.0])  # mean 0.5 -> beta = 1: zero cost times 2 r
    scale = ecqx_zero_scale(a, 1, r, p=0.1)
    np.testing.assert_allclose(scale, 2 * r)
    # 0.55 (r 0.9): 2 * 0.9 * 0.710 = 1.277 > 0.910 stays 1; 0.8 (r 0.1): 0.2 * 1.047 = 0.209 < 0.747 goes to 0
    np.testing.assert_array_equal(a.indices(1, scale) - 1, [-1, 0, 0, 0, 0, 1, 0, 1])
    # mean r 0.9125 would start beta at 7.6 (2 r**beta ~ 1, ECQ's assignment); the cap keeps it at 1,
    # so the factor is 1.8: -0.6 (1.8 * 0.767 = 1.381 > 1.105) and 0.8 stay non-zero, 3 zeros instead of 5
    high = np.array([0.9] * 7 + [1.0])
    capped = ecqx_zero_scale(a, 1, high, p=0.1)
    np.testing.assert_allclose(capped, 2 * high)
    np.testing.assert_array_equal(a.indices(1, capped) - 1, [-1, -1, 0, 0, 0, 1, 1, 1])


def test_ec2t_lambda_comes_from_the_smaller_side():
    # gamma 0.5 with the negative side's lam_max (0.303): -0.9 keeps -w_n (0.713 < 1.113); with the
    # positive side's (0.814) it would go to zero (1.624 < 1.900), as ECQ's max would have it
    symbols, pos, neg = EC2TQuantizer(gamma=0.5).assign(TINY, pos=1.0, neg=1.0)
    assert (pos, neg) == (1.0, 1.0)
    np.testing.assert_array_equal(symbols, [-1, 0, 0, 0, 0, 0, 1, 1])
    from fedcomp.compress.quant.ecq import ecq_indices
    assert ecq_indices(TINY, TINY_CENTROIDS, 1, 0.5).indices(1)[0] == 1
