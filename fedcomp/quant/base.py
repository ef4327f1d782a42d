"""The quantizer interface.

A quantizer maps one float tensor to a :class:`~fedcomp.quant.tensor.QuantizedTensor`.
``relevance`` is the hook for the relevance-aware quantizers (ECQx takes per-weight LRP
relevances of the same shape); quantizers that do not use it ignore it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedcomp.quant.tensor import MAX_SYMBOL, QuantizedTensor


class Quantizer(Protocol):
    """Anything that turns a float tensor into symbols plus reconstruction parameters."""

    def quantize(
        self, values: np.ndarray, name: str = "", relevance: np.ndarray | None = None
    ) -> QuantizedTensor: ...


def round_to_symbols(values: np.ndarray, step: float, dead_zone: float = 0.0) -> np.ndarray:
    """``round(values / step)`` as int32, clipped to +-MAX_SYMBOL.

    ``dead_zone`` widens only the zero bin: values with ``|x| < (0.5 + dead_zone) * step``
    become 0, the other levels are unchanged. Non-finite input raises ``ValueError``
    (a NaN update is a bug upstream, not something to transmit silently).
    """
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantize non-finite values (NaN or inf in the update)")
    scaled = x / step
    symbols = np.rint(scaled)
    if dead_zone > 0:
        symbols[np.abs(scaled) < 0.5 + dead_zone] = 0
    return np.clip(symbols, -MAX_SYMBOL, MAX_SYMBOL).astype(np.int32)
