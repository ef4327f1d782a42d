"""``float32``: the symbols' 32-bit patterns stored as they are (little endian).

With FLOAT32 tensors (symbols = float32 bit patterns) this is the lossless passthrough
that lets uncompressed FedAvg travel in the same payload format.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedcomp.compress.codec.base import Codec, register
from fedcomp.errors import PayloadError


@register
class Float32Codec(Codec):
    """Four little-endian bytes per symbol, tensors back to back."""

    name = "float32"
    id = 0

    def encode(self, symbols: Sequence[np.ndarray]) -> bytes:
        return b"".join(np.ascontiguousarray(s, dtype="<i4").tobytes() for s in symbols)

    def decode(self, data: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        counts = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        if 4 * sum(counts) != len(data):
            raise PayloadError(f"float32 body is {len(data)} bytes, the tensors need {4 * sum(counts)}")
        flat = np.frombuffer(data, dtype="<i4").astype(np.int32)
        bounds = np.cumsum([0] + counts)
        return [flat[a:b].reshape(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes)]
