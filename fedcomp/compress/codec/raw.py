"""``raw``: fixed-width bit packing, the no-entropy-coding baseline.

Per tensor: one byte ``w`` (0..32), then the zigzag-mapped symbols (0, -1, 1, -2, ... ->
0, 1, 2, 3, ...) in ``w`` bits each, least significant bit first, padded to a byte.
``w`` is the smallest width that holds the tensor's largest zigzag value.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedcomp.compress.codec.base import Codec, register
from fedcomp.errors import PayloadError


def zigzag(values: np.ndarray) -> np.ndarray:
    """Signed int32 -> unsigned (as int64): 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    v = values.astype(np.int64)
    return (v << 1) ^ (v >> 63)


def unzigzag(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zigzag`, back to int32."""
    v = values.astype(np.int64)
    return ((v >> 1) ^ -(v & 1)).astype(np.int32)


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Non-negative ``values`` in ``width`` bits each, LSB first, byte padded."""
    if width == 0 or values.size == 0:
        return b""
    bits = (values.astype(np.uint64)[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes | memoryview, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` (``data`` must be exactly the packed length)."""
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little", count=count * width)
    weights = np.left_shift(np.int64(1), np.arange(width, dtype=np.int64))
    return bits.reshape(count, width).astype(np.int64) @ weights


def packed_len(count: int, width: int) -> int:
    return (count * width + 7) // 8


@register
class RawCodec(Codec):
    """Fixed-width bit packing of zigzag symbols; one width byte per tensor."""

    name = "raw"
    id = 1

    def encode(self, symbols: Sequence[np.ndarray]) -> bytes:
        out = bytearray()
        for s in symbols:
            z = zigzag(np.asarray(s, dtype=np.int32).reshape(-1))
            width = int(z.max()).bit_length() if z.size else 0
            out.append(width)
            out += pack_bits(z, width)
        return bytes(out)

    def decode(self, data: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        view, pos, out = memoryview(data), 0, []
        for shape in shapes:
            count = int(np.prod(shape, dtype=np.int64))
            if pos >= len(view):
                raise PayloadError("raw body ends before every tensor's width byte")
            width = view[pos]
            if width > 32:
                raise PayloadError(f"raw width {width} exceeds 32 bits")
            size = packed_len(count, width)
            if pos + 1 + size > len(view):
                raise PayloadError("raw body shorter than its declared widths need")
            values = unpack_bits(view[pos + 1 : pos + 1 + size], count, width)
            pos += 1 + size
            if width == 32 and values.size and values.max() > 0xFFFFFFFF:
                raise PayloadError("raw symbol out of range")
            out.append(unzigzag(values).reshape(shape))
        if pos != len(view):
            raise PayloadError(f"raw body has {len(view) - pos} trailing bytes")
        return out
