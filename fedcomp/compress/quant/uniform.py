"""Uniform scalar quantization: NNC quantization parameter, explicit step, or bit width."""

from __future__ import annotations

import numpy as np

from fedcomp.compress.quant.arrays import Array, wrap
from fedcomp.compress.quant.base import round_to_symbols
from fedcomp.compress.quant.tensor import QuantizedTensor, QuantKind, qp_step


class UniformQuantizer:
    """``symbol = round(x / step)``; exactly one of ``qp``, ``step``, ``bits`` is given.

    - ``qp`` (with ``qp_density``, NNC default 2): the NNC step table (DESIGN 4.1); the
      payload carries the qp itself (2 bytes) rather than the step.
    - ``step``: an explicit step, rounded to float32 so that reconstruction is exact.
    - ``bits``: symmetric signed levels ``-(2**(bits-1)-1) .. 2**(bits-1)-1`` spanning the
      tensor's max |x|, i.e. a per-tensor step.

    ``dead_zone`` (in steps) widens the zero bin only; see :func:`round_to_symbols`.
    """

    def __init__(
        self,
        qp: int | None = None,
        qp_density: int = 2,
        step: float | None = None,
        bits: int | None = None,
        dead_zone: float = 0.0,
    ) -> None:
        if sum(v is not None for v in (qp, step, bits)) != 1:
            raise ValueError("give exactly one of qp, step, bits")
        if qp is not None and not -128 <= qp <= 127:
            raise ValueError(f"qp must be in -128..127, got {qp}")
        if step is not None and not (np.isfinite(step) and np.float32(step) > 0):
            raise ValueError(f"step must be a positive finite float32, got {step}")
        if bits is not None and not 2 <= bits <= 32:
            raise ValueError(f"bits must be in 2..32, got {bits}")
        if not 0.0 <= dead_zone < 1e6:
            raise ValueError(f"dead_zone must be >= 0, got {dead_zone}")
        self.qp, self.qp_density, self.bits, self.dead_zone = qp, qp_density, bits, dead_zone
        self.step = None if step is None else float(np.float32(step))
        if qp is not None:
            qp_step(qp, qp_density)  # validates the density

    def step_for(self, values: Array) -> float:
        """The step this quantizer uses for ``values`` (float32-representable)."""
        if self.qp is not None:
            return qp_step(self.qp, self.qp_density)
        if self.step is not None:
            return self.step
        levels = 2 ** (self.bits - 1) - 1
        x = wrap(values)
        peak = float(x.abs().max()) if x.numel() else 0.0
        step = float(np.float32(peak / levels)) if peak > 0 else 1.0
        return step if step > 0 else float(np.finfo(np.float32).tiny)

    def quantize(
        self, values: Array, name: str = "", relevance: Array | None = None
    ) -> QuantizedTensor:
        """Quantize ``values`` where they are (numpy or a device tensor); ``relevance`` is ignored."""
        step = self.step_for(values)
        symbols = round_to_symbols(values, step, self.dead_zone)
        if self.bits is not None:
            levels = 2 ** (self.bits - 1) - 1
            symbols = symbols.clip(-levels, levels)
        if self.qp is not None:
            return QuantizedTensor(name, symbols, QuantKind.UNIFORM_QP, (self.qp, self.qp_density))
        return QuantizedTensor(name, symbols, QuantKind.UNIFORM_STEP, (step,))
