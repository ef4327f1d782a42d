"""Bit-exact integer inference of a compiled 4-bit network, vectorized, and its dense reference.

The engine computes every output the FantastIC4 way (DESIGN 4.9): for each row, the sum
over the layer's distinct values ``k`` of ``k * (sum of the inputs whose weight is k)``.
Both steps are sparse matrix products over the row's value groups (`formats.Groups`):
``S = P @ x`` forms every group sum (``P`` holds a 1 per non-zero weight, one row per
group), ``acc = V @ S`` multiplies each group sum by its value and adds it to its row
(``V`` holds one value per group). Then the bias is added, and the accumulator is
requantized by an integer multiply and a right shift and clipped to the activation range.

Exactness: the two products run on scipy's sparse kernels in float32 (float64 when a
layer's bound needs it). Every operand is an integer and every partial sum is bounded by
``sum_j |k_ij| * max|x|``; below 2**24 (float32) or 2**53 (float64) every such integer is
represented exactly, so the result is the exact integer whatever the summation order. The
bound is checked when a layer is prepared, and `dense_reference` (plain int64 matrix
products) is the reference the tests hold the engine to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fedcomp.fantastic4.formats import Groups

FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53


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
    layer: IntLayer
    group_sums: sp.csr_matrix  # G x n, ones
    values: sp.csr_matrix  # m x G, the group values
    dtype: type


def prepare(layer: IntLayer) -> PreparedLayer:
    """The layer's group matrices, in the narrowest float type that keeps it exact."""
    bound = layer.accumulator_bound()
    if bound >= FLOAT64_EXACT:
        raise ValueError(f"layer {layer.name}: accumulator bound {bound} exceeds exact float64 range")
    dtype = np.float32 if bound < FLOAT32_EXACT else np.float64
    groups = Groups.of(layer.weights)
    m, n = groups.shape
    group_sums = sp.csr_matrix((np.ones(groups.nnz, dtype), groups.cols, groups.starts), shape=(groups.num_groups, n))
    row_ptr = np.searchsorted(groups.rows, np.arange(m + 1))
    values = sp.csr_matrix((groups.values.astype(dtype), np.arange(groups.num_groups), row_ptr),
                           shape=(m, groups.num_groups))
    return PreparedLayer(layer, group_sums, values, dtype)


def run(prepared: list[PreparedLayer], inputs: np.ndarray) -> np.ndarray:
    """Integer outputs (``batch x outputs``, int64) of the network for integer ``inputs`` (``batch x n``)."""
    x = np.ascontiguousarray(np.asarray(inputs).T)  # features x batch: each group sum is a contiguous row op
    for p in prepared:
        acc = p.values @ (p.group_sums @ x.astype(p.dtype, copy=False))
        x = requantize(acc.astype(np.int64), p.layer)
    return x.T


def dense_reference(layers: list[IntLayer], inputs: np.ndarray) -> np.ndarray:
    """The same network computed with plain int64 dense matrix products."""
    x = np.asarray(inputs, dtype=np.int64).T
    for layer in layers:
        x = requantize(layer.weights.astype(np.int64) @ x, layer)
    return x.T
