"""The quantized tensor: the one type every quantizer produces and every codec consumes.

A :class:`QuantizedTensor` holds int32 *symbols* (the integers an entropy coder sees) and
the few parameters that turn them back into float32 values. Reconstruction is defined
here, once, so the sender's reconstruction and the receiver's decoded tensor are computed
by the same float32 arithmetic and agree bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import torch

from fedcomp.compress.quant.arrays import Array, as_tensor, like, to_numpy, wrap


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

    A quantizer fed a device tensor leaves the symbols on that device (a torch tensor);
    :meth:`host` moves them to a numpy array, which is what codecs take.

    ``params`` depends on ``kind``: ``()`` for FLOAT32, ``(qp, qp_density)`` for
    UNIFORM_QP, ``(step,)`` for UNIFORM_STEP, ``(offset,)`` for CODEBOOK (values in
    ``codebook``), ``(pos, neg)`` for TERNARY. Floats are float32-representable.
    """

    name: str
    symbols: Array
    kind: QuantKind
    params: tuple = ()
    codebook: np.ndarray | None = field(default=None)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.symbols.shape)

    def dequantize(self) -> Array:
        """The float32 values these symbols stand for (same shape, where the symbols are).

        Computed once per tensor (a sender reads them for its residual, its second stage and
        its reconstruction); treat the result as read-only.
        """
        return self._values

    @functools.cached_property
    def _values(self) -> Array:
        return dequantize(self.symbols, self.kind, self.params, self.codebook)

    def host(self) -> "QuantizedTensor":
        """The same tensor with numpy symbols (itself when they already are), and its values
        on the host too when they were already dequantized."""
        if isinstance(self.symbols, np.ndarray):
            return self
        moved = QuantizedTensor(self.name, to_numpy(self.symbols), self.kind, self.params, self.codebook)
        if "_values" in self.__dict__:  # what the cached property holds
            moved.__dict__["_values"] = to_numpy(self._values)
        return moved


def dequantize(symbols: Array, kind: QuantKind, params: tuple = (), codebook: np.ndarray | None = None) -> Array:
    """Reconstruct float32 values from int32 ``symbols`` for quantization ``kind``.

    Numpy symbols give a numpy array, tensor symbols a tensor on their device: the same
    float32 arithmetic either way, so the sender's reconstruction and the receiver's agree.
    """
    s = wrap(symbols)
    s = s if s.dtype == torch.int32 else s.to(torch.int32)
    if kind == QuantKind.FLOAT32:
        out = s.view(torch.float32).clone()
    elif kind in (QuantKind.UNIFORM_QP, QuantKind.UNIFORM_STEP):
        step = qp_step(*params) if kind == QuantKind.UNIFORM_QP else params[0]
        out = s.to(torch.float32) * float(np.float32(step))
    elif kind == QuantKind.CODEBOOK:
        book = wrap(np.asarray(codebook, dtype=np.float32)).to(s.device)
        out = book[s.to(torch.int64) - int(params[0])]
    elif kind == QuantKind.TERNARY:
        pos, neg = (float(np.float32(p)) for p in params)
        out = torch.zeros(s.shape, dtype=torch.float32, device=s.device)
        out[s > 0] = pos
        out[s < 0] = -neg
    else:
        raise ValueError(f"unknown quantization kind {kind!r}")
    return like(out, symbols)


def float32_tensor(name: str, values: Array) -> QuantizedTensor:
    """Lossless passthrough: the float32 bit patterns as symbols (where ``values`` are)."""
    bits = as_tensor(values).contiguous().view(torch.int32).clone()
    return QuantizedTensor(name, like(bits, values), QuantKind.FLOAT32)
