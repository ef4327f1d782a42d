"""Quantizers, sparsifiers and error feedback on numpy arrays or torch tensors on any device (no Flower, no Ray)."""

from fedcomp.compress.quant.base import Quantizer, round_to_symbols
from fedcomp.compress.quant.ecq import EC2TQuantizer, ECQQuantizer, ECQxQuantizer
from fedcomp.compress.quant.feedback import ErrorFeedback
from fedcomp.compress.quant.sparsify import RandomK, Sparsifier, StatisticsThreshold, StructuredFilters, TopK
from fedcomp.compress.quant.stc import STCQuantizer
from fedcomp.compress.quant.tensor import MAX_SYMBOL, QuantizedTensor, QuantKind, dequantize, float32_tensor, qp_step
from fedcomp.compress.quant.uniform import UniformQuantizer

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
