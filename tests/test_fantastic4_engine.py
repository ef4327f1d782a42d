"""FantastIC4 engine: bit-exact against the integer dense reference, requantization by multiply and shift."""

import numpy as np
import pytest

from fedcomp.fantastic4.compile import requant_parameters
from fedcomp.fantastic4.engine import FLOAT32_EXACT, IntLayer, dense_reference, prepare, requantize, run
from fedcomp.fantastic4.formats import Groups

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


def test_engine_switches_to_float64_when_float32_could_round_and_stays_exact():
    rng = np.random.default_rng(7)
    n = 3000
    w = np.full((4, n), 7, dtype=np.int8)  # bound 7 * 3000 * 32767 > 2**24
    layer = IntLayer("wide", w, np.zeros(4, np.int64), None, None, -(2**62), 2**62, 32767)
    assert layer.accumulator_bound() >= FLOAT32_EXACT
    prepared = prepare(layer)
    assert prepared.dtype == np.float64
    inputs = rng.integers(-32768, 32768, size=(5, n))
    assert np.array_equal(run([prepared], inputs), dense_reference([layer], inputs))


def test_engine_computes_rows_as_value_times_group_sum():
    """The structure the engine runs: one group (row, value) per row of the group-sum matrix."""
    w = np.array([[2, 0, 2, -1], [0, 0, 0, 0], [5, 5, 5, 5]], dtype=np.int8)
    prepared = prepare(IntLayer("l", w, np.zeros(3, np.int64), None, None, -(2**31), 2**31 - 1, 10))
    groups = Groups.of(w)
    assert prepared.group_sums.shape == (groups.num_groups, 4) == (3, 4)  # (0, 2), (0, -1), (2, 5)
    assert prepared.group_sums.nnz == 7 and set(prepared.group_sums.data) == {1.0}
    assert sorted(prepared.values.data) == [-1, 2, 5]
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
