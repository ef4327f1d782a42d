"""FantastIC4 engine: bit-exact against the integer dense reference, requantization by multiply and shift."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from fedcomp.fantastic4.compile import requant_parameters
from fedcomp.errors import ModelError
from fedcomp.fantastic4.engine import ACC_LIMIT, IntLayer, dense_reference, prepare, requantize, run

CASES = [(n, m, density) for n, m in [(1, 1), (5, 3), (64, 64), (64, 10), (250, 128), (17, 300)]
         for density in (0.0, 0.02, 0.3, 1.0)]


def random_layer(rng, n, m, density, *, relu=True, last=False, input_bound=255, name="fc"):
    w = rng.integers(-8, 8, size=(m, n), dtype=np.int64)
    w[rng.random((m, n)) >= density] = 0
    bias = rng.integers(-5000, 5000, size=m)
    if last:
        return IntLayer(name, w.astype(np.int8), bias, None, None, -(2**31), 2**31 - 1, input_bound)
    multiplier, shift = requant_parameters(float(rng.uniform(1e-4, 0.05)))
    return IntLayer(name, w.astype(np.int8), bias, multiplier, shift, 0 if relu else -128, 255 if relu else 127,
                    input_bound)


@pytest.mark.parametrize("n,m,density", CASES)
def test_engine_equals_the_integer_dense_reference_exactly(n, m, density):
    rng = np.random.default_rng(n * 1000 + m + int(density * 100))
    hidden = random_layer(rng, n, m, density, input_bound=128)
    signed = random_layer(rng, m, m, density, relu=False)
    out = random_layer(rng, m, 7, density, last=True, input_bound=128)
    inputs = rng.integers(-128, 128, size=(41, n))
    layers = [hidden, signed, out]
    got = run([prepare(layer) for layer in layers], inputs)
    assert got.dtype == np.int64 and got.shape == (41, 7)
    assert np.array_equal(got, dense_reference(layers, inputs))


def test_a_layer_whose_accumulator_could_overflow_int32_is_refused_by_name():
    w = np.full((4, 3000), 7, dtype=np.int8)
    bias = np.zeros(4, np.int64)
    fits = IntLayer("fits", w, bias, None, None, -(2**31), 2**31 - 1, 100_000)  # 7 * 3000 * 100000 < 2**31
    assert fits.accumulator_bound() < ACC_LIMIT
    inputs = np.random.default_rng(7).integers(-100_000, 100_001, size=(5, 3000))
    assert np.array_equal(run([prepare(fits)], inputs), dense_reference([fits], inputs))
    with pytest.raises(ModelError, match="'wide': its accumulator can reach"):
        prepare(IntLayer("wide", w, bias, None, None, -(2**31), 2**31 - 1, 110_000))


def test_engine_computes_rows_as_value_times_group_sum():
    """The structure the kernel walks: per row, one group per distinct value, holding its columns."""
    w = np.array([[2, 0, 2, -1], [0, 0, 0, 0], [5, 5, 5, 5]], dtype=np.int8)
    prepared = prepare(IntLayer("l", w, np.zeros(3, np.int64), None, None, -(2**31), 2**31 - 1, 10))
    assert list(prepared.row_ptr) == [0, 2, 2, 3]  # row 0: values 2 and -1; row 1: none; row 2: 5
    assert list(prepared.values) == [2, -1, 5]
    assert [list(prepared.cols[a:b]) for a, b in zip(prepared.starts[:-1], prepared.starts[1:])] == \
        [[0, 2], [3], [0, 1, 2, 3]]
    x = np.array([[1, 2, 3, 4]])
    assert run([prepared], x).tolist() == [[2 * (1 + 3) - 4, 0, 5 * 10]]


def test_requantization_is_integer_multiply_and_rounding_shift():
    multiplier, shift = requant_parameters(0.013)
    assert 2**15 <= multiplier < 2**16 and multiplier / 2**shift == pytest.approx(0.013, rel=1e-4)
    layer = IntLayer("l", np.zeros((3, 1), np.int8), np.array([0, 10, -10]), multiplier, shift, 0, 255, 1)
    acc = np.array([[1000], [100000], [-50]], dtype=np.int64)
    expected = np.clip((acc + layer.bias[:, None]) * multiplier + (1 << (shift - 1)) >> shift, 0, 255)
    assert np.array_equal(requantize(acc, layer), expected)
    assert requantize(acc, layer)[1, 0] == 255 and requantize(acc, layer)[2, 0] == 0  # clipped, ReLU


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(1, 40), batch=st.integers(1, 9), density=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1), act_bits=st.integers(2, 12))
def test_engine_equals_the_reference_on_any_small_network(n, m, batch, density, seed, act_bits):
    rng = np.random.default_rng(seed)
    top = 2**act_bits - 1
    hidden = random_layer(rng, n, m, density, input_bound=top + 1)
    hidden = IntLayer("h", hidden.weights, hidden.bias, hidden.multiplier, hidden.shift, 0, top, top + 1)
    out = random_layer(rng, m, 3, density, last=True, input_bound=top)
    inputs = rng.integers(-top - 1, top + 1, size=(batch, n))
    layers = [hidden, out]
    assert np.array_equal(run([prepare(layer) for layer in layers], inputs), dense_reference(layers, inputs))
