import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcomp.compress.quant import QuantKind, UniformQuantizer, qp_step


def reference_step(qp: int, density: int) -> float:
    # Same formula written with floor division instead of bit operations.
    k = 2**density
    shift, rest = divmod(qp, k)
    return (k + rest) * 2.0 ** (shift - density)


@pytest.mark.parametrize("density", [0, 1, 2, 3])
def test_qp_table_matches_formula(density):
    for qp in range(-75, 1):
        assert qp_step(qp, density) == reference_step(qp, density)


def test_qp_anchor_values():
    assert qp_step(-32) == 2.0**-8
    assert qp_step(0) == 1.0
    assert qp_step(-1) == 0.875
    # one density period doubles the step
    for qp in range(-75, -3):
        assert qp_step(qp + 4) == 2 * qp_step(qp)


def test_qp_table_matches_nncodec():
    deepCABAC = pytest.importorskip("nncodec.extensions.deepCABAC")
    for qp in range(-75, 1):
        out = np.zeros(1, dtype=np.float32)
        deepCABAC.Decoder().dequantLayer(out, np.ones(1, dtype=np.int32), 2, qp, 0)
        assert out[0] == np.float32(qp_step(qp, 2)), qp


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(deadline=None, max_examples=60)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=8), elements=finite),
       qp=st.integers(-60, 0))
def test_uniform_qp_error_at_most_half_step(x, qp):
    q = UniformQuantizer(qp=qp).quantize(x, "t")
    assert q.kind == QuantKind.UNIFORM_QP and q.params == (qp, 2) and q.symbols.dtype == np.int32
    # half a step, plus float32 rounding of the reconstruction itself
    slack = 2 * np.spacing(np.abs(x)).astype(np.float64)
    assert np.all(np.abs(q.dequantize().astype(np.float64) - x) <= qp_step(qp) / 2 + slack)


@settings(deadline=None, max_examples=60)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=16), elements=finite),
       bits=st.integers(2, 12))
def test_bit_width_bounds_symbols(x, bits):
    q = UniformQuantizer(bits=bits).quantize(x)
    levels = 2 ** (bits - 1) - 1
    assert np.abs(q.symbols).max() <= levels
    slack = 2 * np.spacing(np.abs(x)).astype(np.float64)
    assert np.all(np.abs(q.dequantize().astype(np.float64) - x) <= q.params[0] / 2 + slack)


def test_explicit_step_and_dead_zone():
    x = np.array([0.0, 0.4, 0.6, 0.9, 1.2, -1.6, 2.4], dtype=np.float32)
    q = UniformQuantizer(step=1.0).quantize(x)
    assert q.symbols.tolist() == [0, 0, 1, 1, 1, -2, 2]
    dz = UniformQuantizer(step=1.0, dead_zone=0.5).quantize(x)
    # only the zero bin widens (to |x| < 1.0); other levels unchanged
    assert dz.symbols.tolist() == [0, 0, 0, 0, 1, -2, 2]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        UniformQuantizer()
    with pytest.raises(ValueError):
        UniformQuantizer(qp=-32, step=0.1)
    with pytest.raises(ValueError):
        UniformQuantizer(bits=1)
    with pytest.raises(ValueError):
        UniformQuantizer(qp=-32).quantize(np.array([np.nan], dtype=np.float32))


def test_huge_values_clip_to_int32():
    q = UniformQuantizer(qp=-75).quantize(np.array([3e38, -3e38], dtype=np.float32))
    assert q.symbols.tolist() == [2**31 - 1, -(2**31 - 1)]
