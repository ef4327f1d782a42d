"""STC's ternarization (Sattler et al. 2019), applied after top-k sparsification.

Every kept (non-zero) value becomes ``sign(x) * mean(|kept|)``: one float per tensor. The
result is a uniform quantization with ``step = mean(|kept|)`` and symbols in {-1, 0, 1},
so it travels as a plain UNIFORM_STEP tensor. Compose with :class:`~fedcomp.compress.quant.sparsify.TopK`
(the sparsity) and :class:`~fedcomp.compress.quant.feedback.ErrorFeedback` (the residual) for STC.
"""

from __future__ import annotations

import numpy as np
import torch

from fedcomp.compress.quant.arrays import Array, as_tensor, exact_sum, finite_peak, like
from fedcomp.compress.quant.tensor import QuantizedTensor, QuantKind


class STCQuantizer:
    """Ternarize the non-zeros of an already sparsified tensor to ``+-mean|kept|``."""

    def quantize(
        self, values: Array, name: str = "", relevance: Array | None = None
    ) -> QuantizedTensor:
        """Symbols are ``sign(x)``; the step is the float32 mean magnitude of the non-zeros.

        Computed where ``values`` are; the mean is an order-independent sum, so every device
        gives the same step.
        """
        x = as_tensor(values)
        finite_peak(x)
        kept = int(torch.count_nonzero(x))
        step = float(np.float32(float(exact_sum(x.abs())) / kept)) if kept else 1.0
        if step == 0.0:  # only subnormal-small survivors; keep the format valid
            step = float(np.finfo(np.float32).tiny)
        return QuantizedTensor(name, like(torch.sign(x).to(torch.int32), values), QuantKind.UNIFORM_STEP, (step,))
