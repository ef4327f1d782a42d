"""The quantized tensor: the one type every quantizer produces and every codec consumes.

A :class:`QuantizedTensor` holds int32 *symbols* (the integers an entropy coder sees) and
the few parameters that turn them back into float32 values. Reconstruction is defined
here, once, so the sender's reconstruction and the receiver's decoded tensor are computed
by the same float32 arithmetic and agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class QuantKind(IntEnum):
    """How symbols map back to values; the integer is what the wire format stores."""

    FLOAT32 = 0  # symbols are the float32 bit patterns (lossless passthrough)
    UNIFORM_QP = 1  # value = symbol * step(qp, qp_density), the NNC step table
    UNIFORM_STEP = 2  # value = symbol * step, step an explicit float32
    CODEBOOK = 3  # value = codebook[symbol - offset]
    TERNARY = 4  # symbol in {-1, 0, 1}; value = -neg, 0, +pos


#: Largest |symbol| a quantizer emits; every codec handles the full range.
MAX_SYMBOL = 2**31 - 1


def qp_step(qp: int, qp_density: int = 2) -> float:
    """NNC step size for quantization parameter ``qp`` (DESIGN 4.1).

    ``step = (k + (qp & (k - 1))) * 2**((qp >> d) - d)`` with ``d = qp_density``,
    ``k = 2**d``; qp = -32 with the default density gives ``2**-8``.
    """
    if not 0 <= qp_density <= 7:
        raise ValueError(f"qp_density must be in 0..7, got {qp_density}")
    k = 1 << qp_density
    return float((k + (qp & (k - 1))) * 2.0 ** ((qp >> qp_density) - qp_density))


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """Int32 symbols (in the tensor's shape) plus how to reconstruct them.

    ``params`` depends on ``kind``: ``()`` for FLOAT32, ``(qp, qp_density)`` for
    UNIFORM_QP, ``(step,)`` for UNIFORM_STEP, ``(offset,)`` for CODEBOOK (values in
    ``codebook``), ``(pos, neg)`` for TERNARY. Floats are float32-representable.
    """

    name: str
    symbols: np.ndarray
    kind: QuantKind
    params: tuple = ()
    codebook: np.ndarray | None = field(default=None)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.symbols.shape)

    def dequantize(self) -> np.ndarray:
        """The float32 values these symbols stand for (same shape)."""
        return dequantize(self.symbols, self.kind, self.params, self.codebook)


def dequantize(
    symbols: np.ndarray, kind: QuantKind, params: tuple = (), codebook: np.ndarray | None = None
) -> np.ndarray:
    """Reconstruct float32 values from int32 ``symbols`` for quantization ``kind``."""
    symbols = np.asarray(symbols, dtype=np.int32)
    if kind == QuantKind.FLOAT32:
        return symbols.view(np.float32).copy()
    if kind == QuantKind.UNIFORM_QP:
        return symbols.astype(np.float32) * np.float32(qp_step(*params))
    if kind == QuantKind.UNIFORM_STEP:
        return symbols.astype(np.float32) * np.float32(params[0])
    if kind == QuantKind.CODEBOOK:
        return np.asarray(codebook, dtype=np.float32)[symbols.astype(np.int64) - int(params[0])]
    if kind == QuantKind.TERNARY:
        pos, neg = (np.float32(p) for p in params)
        out = np.zeros(symbols.shape, dtype=np.float32)
        out[symbols > 0] = pos
        out[symbols < 0] = -neg
        return out
    raise ValueError(f"unknown quantization kind {kind!r}")


def float32_tensor(name: str, values: np.ndarray) -> QuantizedTensor:
    """Lossless passthrough: the float32 bit patterns as symbols."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return QuantizedTensor(name, values.view(np.int32).copy(), QuantKind.FLOAT32)
