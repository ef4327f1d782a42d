"""Bit-exact integer inference of a compiled 4-bit network, vectorized, and its dense reference.

The engine computes every output the FantastIC4 way (DESIGN 4.9): for each row, the sum
over the row's distinct values ``k`` of ``k * (sum of the inputs whose weight is k)``,
walking the layer's value groups (`formats.Groups`). Then the bias is added, and the
accumulator is requantized by an integer multiply and a rounding right shift and clipped
to the activation range.

All arithmetic is integer: activations in int16 (int32 when the activation width needs
it), group sums and accumulators in int32 (the device's accumulator; `prepare` refuses a
layer whose worst case does not fit), the requantization product in int64. The kernel is
compiled with numba and vectorized over the batch: the activations are laid out features
x batch, so adding one input into a group sum is one contiguous vector add over the whole
batch. `dense_reference` (plain int64 matrix products, numpy) is the reference the tests
hold it to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from fedcomp.errors import ModelError
from fedcomp.fantastic4.formats import Groups

ACC_LIMIT = 2**31  # int32 accumulators


@dataclass(frozen=True)
class IntLayer:
    """One fully-connected layer as the device runs it.

    ``weights`` are grid indices (``m x n``), ``bias`` is in accumulator units. With a
    ``shift``, the accumulator is requantized to ``(acc * multiplier + 2**(shift-1)) >> shift``;
    without one (the last layer) the accumulator itself is the output. Either is then
    clipped to ``[low, high]`` (``low = 0`` is the ReLU).
    """

    name: str
    weights: np.ndarray
    bias: np.ndarray
    multiplier: int | None
    shift: int | None
    low: int
    high: int
    input_bound: int  # max |input| this layer can receive

    def accumulator_bound(self) -> int:
        """Largest |accumulator| (before the bias) any input in range can produce."""
        return int(np.abs(self.weights).astype(np.int64).sum(axis=1).max(initial=0)) * self.input_bound


def requantize(acc: np.ndarray, layer: IntLayer) -> np.ndarray:
    """Bias added, integer multiply and rounding shift, clip: the layer's output from its int64 accumulator."""
    acc = acc + layer.bias[:, None]
    if layer.shift is not None:
        acc = (acc * layer.multiplier + (1 << (layer.shift - 1))) >> layer.shift
    return np.clip(acc, layer.low, layer.high)


@dataclass(frozen=True)
class PreparedLayer:
    """A layer's value groups as flat arrays for the kernel (see `formats.Groups`)."""

    layer: IntLayer
    cols: np.ndarray  # int32, the non-zeros' columns grouped by (row, value)
    starts: np.ndarray  # int64, group g covers cols[starts[g]:starts[g + 1]]
    values: np.ndarray  # int32, the value k of every group
    row_ptr: np.ndarray  # int64, row r's groups are row_ptr[r]:row_ptr[r + 1]
    offset: np.ndarray  # int64, bias * multiplier + 2**(shift - 1) (the bias alone without requantization)
    multiplier: int
    shift: int


def prepare(layer: IntLayer) -> PreparedLayer:
    """The layer's groups for the kernel; its accumulator must fit int32 (the device's accumulator)."""
    bound = layer.accumulator_bound() + int(np.abs(layer.bias).max(initial=0))
    if bound >= ACC_LIMIT:
        raise ModelError(f"layer '{layer.name}': its accumulator can reach {bound}, more than a 32-bit accumulator "
                         f"holds")
    groups = Groups.of(layer.weights)
    row_ptr = np.searchsorted(groups.rows, np.arange(groups.shape[0] + 1)).astype(np.int64)
    bias = layer.bias.astype(np.int64)
    if layer.shift is None:
        offset, multiplier, shift = bias, 1, 0
    else:
        offset, multiplier, shift = bias * layer.multiplier + (1 << (layer.shift - 1)), layer.multiplier, layer.shift
    return PreparedLayer(layer, groups.cols.astype(np.int32), groups.starts, groups.values.astype(np.int32),
                         row_ptr, offset, multiplier, shift)


@numba.njit(cache=True, nogil=True)
def _grouped_layer(x, cols, starts, values, row_ptr, offset, multiplier, shift, low, high, out):  # pragma: no cover
    """``out[r] = clip((sum_g values[g] * sum_{j in g} x[cols[j]]) * multiplier + offset[r]) >> shift)``."""
    batch = x.shape[1]
    group_sum = np.empty(batch, np.int32)
    acc = np.empty(batch, np.int32)
    for r in range(row_ptr.shape[0] - 1):
        acc[:] = 0
        for g in range(row_ptr[r], row_ptr[r + 1]):
            group_sum[:] = 0
            for j in range(starts[g], starts[g + 1]):
                row = x[cols[j]]
                for b in range(batch):
                    group_sum[b] += row[b]
            k = values[g]
            for b in range(batch):
                acc[b] += k * group_sum[b]
        for b in range(batch):
            v = (np.int64(acc[b]) * multiplier + offset[r]) >> shift
            out[r, b] = min(max(v, low), high)


def _activation_dtype(bound: int) -> type:
    """int16 when every value fits (half the memory traffic of the group sums), int32 otherwise."""
    return np.int16 if bound < 2**15 else np.int32


def run(prepared: list[PreparedLayer], inputs: np.ndarray) -> np.ndarray:
    """Integer outputs (``batch x outputs``, int64) of the network for integer-valued ``inputs`` (``batch x n``)."""
    x = np.ascontiguousarray(np.asarray(inputs).T, dtype=_activation_dtype(prepared[0].layer.input_bound))
    for p in prepared:
        out = np.empty((len(p.row_ptr) - 1, x.shape[1]), dtype=_activation_dtype(max(-p.layer.low, p.layer.high)))
        _grouped_layer(x, p.cols, p.starts, p.values, p.row_ptr, p.offset, p.multiplier, p.shift,
                       p.layer.low, p.layer.high, out)
        x = out
    return x.T.astype(np.int64)


def dense_reference(layers: list[IntLayer], inputs: np.ndarray) -> np.ndarray:
    """The same network computed with plain int64 dense matrix products."""
    x = np.asarray(inputs, dtype=np.int64).T
    for layer in layers:
        x = requantize(layer.weights.astype(np.int64) @ x, layer)
    return x.T
