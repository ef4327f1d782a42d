"""Quantizers, sparsifiers and error feedback on numpy arrays or torch tensors on any device (no Flower, no Ray)."""

from fedcomp.quant.base import Quantizer, round_to_symbols
from fedcomp.quant.ecq import EC2TQuantizer, ECQQuantizer, ECQxQuantizer
from fedcomp.quant.feedback import ErrorFeedback
from fedcomp.quant.sparsify import RandomK, Sparsifier, StatisticsThreshold, StructuredFilters, TopK
from fedcomp.quant.stc import STCQuantizer
from fedcomp.quant.tensor import MAX_SYMBOL, QuantizedTensor, QuantKind, dequantize, float32_tensor, qp_step
from fedcomp.quant.uniform import UniformQuantizer

__all__ = [
    "EC2TQuantizer",
    "ECQQuantizer",
    "ECQxQuantizer",
    "MAX_SYMBOL",
    "ErrorFeedback",
    "QuantKind",
    "QuantizedTensor",
    "Quantizer",
    "RandomK",
    "STCQuantizer",
    "Sparsifier",
    "StatisticsThreshold",
    "StructuredFilters",
    "TopK",
    "UniformQuantizer",
    "dequantize",
    "float32_tensor",
    "qp_step",
    "round_to_symbols",
]
