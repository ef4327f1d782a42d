"""``deepcabac``: DeepCABAC from nncodec (the NNC reference implementation).

Uses nncodec's low-level ``deepCABAC`` encoder on int32 symbols, all tensors in one CABAC
stream, context models re-initialised per tensor (as NNC does per layer); no NNC
bitstream syntax around it, the wire format carries the rest. Optional: install with
``pip install 'fedcomp[deepcabac]'``.

The C++ decoder reads its input through a raw pointer without bounds checks. It is
therefore handed a zero-padded copy whose padding covers the most bytes the DeepCABAC
syntax can consume for the given number of symbols (``_MAX_BYTES_PER_SYMBOL`` each), so a
crafted stream cannot make it read outside the buffer. The padding is allocated zeroed
(lazily mapped), bounded by the expected manifest, and untouched for a valid stream.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedcomp.compress.codec.base import Codec, register
from fedcomp.errors import ConfigError, PayloadError

INSTALL_HINT = "the deepcabac codec needs nncodec: pip install 'fedcomp[deepcabac]' (or nncodec==2.1.3)"

# NNC's default cabac_unary_length_minus1 (nncodec uses 10) plus one.
_UNARY_LENGTH = 11
# Per symbol at most: significance, sign, gtx flags, 31 remainder-prefix bins (regular, at
# most 7 bits each after renormalisation) and 31 bypass bins.
_MAX_BYTES_PER_SYMBOL = ((2 + _UNARY_LENGTH + 31) * 7 + 31) // 8 + 1


def _module():
    try:
        from nncodec.extensions import deepCABAC
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(INSTALL_HINT) from exc
    return deepCABAC


def available() -> bool:
    """Whether nncodec's deepCABAC extension can be imported."""
    try:
        _module()
    except ConfigError:
        return False
    return True


def _as_layer(symbols: np.ndarray) -> np.ndarray:
    # DeepCABAC codes rows of a 2-D layer; a 1-D tensor is one row of one element each.
    s = np.ascontiguousarray(symbols, dtype=np.int32)
    return s.reshape(s.shape[0], -1) if s.ndim >= 2 else s.reshape(-1)


@register
class DeepCabacCodec(Codec):
    """All tensors in one DeepCABAC stream (scan order 0, no dependent quantization)."""

    name = "deepcabac"
    id = 2

    def __init__(self) -> None:
        self._dc = _module()
        self._hdsp = (self._dc.HdspMode.AlwaysOff, np.zeros(2, dtype=np.int8))

    def encode(self, symbols: Sequence[np.ndarray]) -> bytes:
        enc = self._dc.Encoder()
        for s in symbols:
            if np.size(s) == 0:
                continue
            layer = _as_layer(s)
            enc.initCtxModels(_UNARY_LENGTH, 0)
            rows = np.zeros(layer.shape[0], dtype=np.int32)
            enc.encodeLayer(layer, 0, 0, 0, 0, 0, rows, *self._hdsp, 0, 0)
        return enc.finish().tobytes()

    def decode(self, data: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        total = sum(int(np.prod(s, dtype=np.int64)) for s in shapes)
        if total == 0:
            if data != self.encode([]):
                raise PayloadError("deepcabac body does not match an empty stream")
            return [np.zeros(s, dtype=np.int32) for s in shapes]
        if len(data) < 2:
            raise PayloadError("deepcabac body shorter than the 2 bytes a stream starts with")
        buffer = np.zeros(len(data) + _MAX_BYTES_PER_SYMBOL * total + 16, dtype=np.uint8)
        buffer[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        dec = self._dc.Decoder()
        out = []
        try:
            dec.setStream(buffer)
            for shape in shapes:
                layer = np.zeros(shape, dtype=np.int32)
                if layer.size:
                    flat = _as_layer(layer)
                    dec.initCtxModels(_UNARY_LENGTH)
                    dec.decodeLayer(flat, 0, 0, 0, 0, *self._hdsp, 0, 0)
                    layer = flat.reshape(shape)
                out.append(layer)
            read = dec.finish()
        except RuntimeError as exc:
            raise PayloadError(f"deepcabac stream is malformed: {exc}") from exc
        if read != len(data):
            raise PayloadError(f"deepcabac stream used {read} of {len(data)} bytes")
        return out
