"""STC's ternarization (Sattler et al. 2019), applied after top-k sparsification.

Every kept (non-zero) value becomes ``sign(x) * mean(|kept|)``: one float per tensor. The
result is a uniform quantization with ``step = mean(|kept|)`` and symbols in {-1, 0, 1},
so it travels as a plain UNIFORM_STEP tensor. Compose with :class:`~fedcomp.quant.sparsify.TopK`
(the sparsity) and :class:`~fedcomp.quant.feedback.ErrorFeedback` (the residual) for STC.
"""

from __future__ import annotations

import numpy as np

from fedcomp.quant.tensor import QuantizedTensor, QuantKind


class STCQuantizer:
    """Ternarize the non-zeros of an already sparsified tensor to ``+-mean|kept|``."""

    def quantize(
        self, values: np.ndarray, name: str = "", relevance: np.ndarray | None = None
    ) -> QuantizedTensor:
        """Symbols are ``sign(x)``; the step is the float32 mean magnitude of the non-zeros."""
        values = np.asarray(values, dtype=np.float32)
        if not np.all(np.isfinite(values)):
            raise ValueError("cannot quantize non-finite values (NaN or inf in the update)")
        kept = values[values != 0]
        step = float(np.float32(np.abs(kept, dtype=np.float64).mean())) if kept.size else 1.0
        if step == 0.0:  # only subnormal-small survivors; keep the format valid
            step = float(np.finfo(np.float32).tiny)
        symbols = np.sign(values).astype(np.int32)
        return QuantizedTensor(name, symbols, QuantKind.UNIFORM_STEP, (step,))
