"""The quantizer interface.

A quantizer maps one float tensor to a :class:`~fedcomp.compress.quant.tensor.QuantizedTensor`.
``relevance`` is the hook for the relevance-aware quantizers (ECQx takes per-weight LRP
relevances of the same shape); quantizers that do not use it ignore it.
"""

from __future__ import annotations

from typing import Protocol

import torch

from fedcomp.compress.quant.arrays import Array, finite_peak, like, wrap
from fedcomp.compress.quant.tensor import MAX_SYMBOL, QuantizedTensor


class Quantizer(Protocol):
    """Anything that turns a float tensor into symbols plus reconstruction parameters."""

    def quantize(
        self, values: Array, name: str = "", relevance: Array | None = None
    ) -> QuantizedTensor: ...


def round_to_symbols(values: Array, step: float, dead_zone: float = 0.0) -> Array:
    """``round(values / step)`` as int32, clipped to +-MAX_SYMBOL, where ``values`` are (numpy or device).

    ``dead_zone`` widens only the zero bin: values with ``|x| < (0.5 + dead_zone) * step``
    become 0, the other levels are unchanged. Non-finite input raises ``ValueError``
    (a NaN update is a bug upstream, not something to transmit silently).
    """
    x = wrap(values)
    peak = finite_peak(x)
    scaled = x.to(torch.float64) / step
    symbols = torch.round(scaled)  # half to even, as numpy's rint
    if dead_zone > 0:
        symbols[scaled.abs() < 0.5 + dead_zone] = 0
    if peak / step >= MAX_SYMBOL:
        symbols = symbols.clamp(-MAX_SYMBOL, MAX_SYMBOL)
    return like(symbols.to(torch.int32), values)
