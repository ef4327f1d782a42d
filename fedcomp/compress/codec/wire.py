"""The wire format of one compressed payload (format version 1).

A payload is one message's compressed content: which tensors of the model it carries, how
to reconstruct them, and their entropy-coded symbols. All integers are little endian;
``varint`` is LEB128 (7 bits per byte, at most 5 bytes here), ``zvarint`` a zigzag-mapped
signed varint.

========  ========  ============================================================
size      field     meaning
========  ========  ============================================================
2         magic     ``b"FC"``
1         version   format version, 1
1         codec     codec id: 0 float32, 1 raw, 2 deepcabac, 3 ans
1         flags     bit 0 ``FLAG_FULL_MODEL`` (carries weights, not an update);
                    the other bits are reserved and must be 0
varint    count     number of tensors that follow (at most the manifest's length)
...       tensors   ``count`` tensor entries, see below
varint    body_len  length of the coded body
body_len  body      the codec's output for all tensors' symbols, in entry order
4         crc32     ``zlib.crc32`` of every byte before it
========  ========  ============================================================

A tensor entry:

- ``varint index``: position in the model's :class:`~fedcomp.compress.params.ParamManifest`;
  indices strictly increase, so a tensor appears at most once. A payload may carry any
  subset of the manifest (partial updates).
- ``1 byte kind``: bits 0-3 the :class:`~fedcomp.compress.quant.tensor.QuantKind`, or 15 for
  "same quantization as the previous entry"; bits 4-6 the qp density (UNIFORM_QP only,
  else 0); bit 7 reserved, 0.
- parameters by kind: FLOAT32 none; UNIFORM_QP ``zvarint qp``; UNIFORM_STEP ``float32
  step``; CODEBOOK ``zvarint offset``, ``varint size`` (1..65536), ``size x float32``
  values (symbol ``s`` means ``values[s - offset]``); TERNARY ``float32 pos, float32 neg``.

The shape of a tensor is not transmitted: it is the manifest's shape at ``index``, which
both sides hold, so a payload cannot declare a size the model does not have. The codecs
code all tensors' symbols in one body (ANS and CABAC streams would each pay a flush of a
few bytes per tensor otherwise); the body length is the one coded length stored. For a
typical payload the header costs 8 bytes plus 2-3 bytes per tensor (5-6 with an explicit
float32 step), plus the 4-byte CRC.

Decoding checks, before it allocates anything sized by the payload: the magic, version,
codec and flags; that the total length is exactly header + body + CRC; the CRC; every
index and parameter against the manifest. Symbol arrays are then allocated at the
manifest's sizes, and decoded symbols outside what their quantization kind allows are
rejected. Every malformed payload raises :class:`~fedcomp.errors.PayloadError`; nothing is
ever unpickled. (A well-formed payload of an optional codec this installation lacks raises
:class:`~fedcomp.errors.ConfigError` saying what to install.)
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fedcomp.compress.codec.base import Codec, codec_by_id
from fedcomp.errors import PayloadError
from fedcomp.compress.params import ParamManifest
from fedcomp.compress.quant.tensor import QuantizedTensor, QuantKind

MAGIC = b"FC"
VERSION = 1
FLAG_FULL_MODEL = 0x01
_KNOWN_FLAGS = FLAG_FULL_MODEL
_REPEAT = 15
_MAX_CODEBOOK = 65536
_FIXED_HEAD = len(MAGIC) + 3
_CRC = 4


@dataclass(frozen=True)
class Payload:
    """A decoded payload: its codec, flags and tensors (in manifest order)."""

    codec: str
    flags: int
    tensors: list[QuantizedTensor]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63) if value < 0 else value << 1


def _unzigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def _params_bytes(t: QuantizedTensor) -> tuple[int, bytes]:
    """(kind byte, parameter bytes) of one tensor entry."""
    kind = QuantKind(t.kind)
    if kind == QuantKind.FLOAT32:
        return kind, b""
    if kind == QuantKind.UNIFORM_QP:
        qp, density = (int(p) for p in t.params)
        return kind | (density << 4), _varint(_zigzag(qp))
    if kind == QuantKind.UNIFORM_STEP:
        return kind, struct.pack("<f", t.params[0])
    if kind == QuantKind.CODEBOOK:
        book = np.asarray(t.codebook, dtype="<f4")
        return kind, _varint(_zigzag(int(t.params[0]))) + _varint(book.size) + book.tobytes()
    return kind, struct.pack("<ff", *t.params)


def encode_payload(
    tensors: Sequence[QuantizedTensor], manifest: ParamManifest, codec: Codec, flags: int = 0
) -> bytes:
    """Serialise quantized tensors (named as in ``manifest``) with ``codec``."""
    if flags & ~_KNOWN_FLAGS or not 0 <= flags < 256:
        raise ValueError(f"unknown payload flags {flags:#x}")
    ordered = sorted(tensors, key=lambda t: manifest.index(t.name))
    head = bytearray(MAGIC + bytes([VERSION, codec.id, flags]) + _varint(len(ordered)))
    previous, last_index = None, -1
    for t in ordered:
        index = manifest.index(t.name)
        if index == last_index:
            raise ValueError(f"tensor {t.name!r} given twice")
        if tuple(t.shape) != tuple(manifest[index].shape):
            raise ValueError(f"tensor {t.name!r} has shape {t.shape}, manifest says {manifest[index].shape}")
        entry = _params_bytes(t)
        head += _varint(index)
        if entry == previous:
            head.append(_REPEAT)
        else:
            head.append(entry[0])
            head += entry[1]
        previous, last_index = entry, index
    body = codec.encode([t.symbols for t in ordered])
    out = bytes(head + _varint(len(body)) + body)
    return out + struct.pack("<I", zlib.crc32(out))


class _Reader:
    """Bounds-checked reads from the header."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data, self.pos, self.end = data, 0, end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise PayloadError(f"payload truncated while reading {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def varint(self, what: str, limit: int) -> int:
        value = 0
        for shift in range(0, 35, 7):
            byte = self.take(1, what)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value > limit:
                    raise PayloadError(f"{what} {value} exceeds its limit {limit}")
                return value
        raise PayloadError(f"{what} varint longer than 5 bytes")

    def float32(self, what: str) -> float:
        value = struct.unpack("<f", self.take(4, what))[0]
        if not np.isfinite(value):
            raise PayloadError(f"{what} is not finite")
        return float(value)


def _read_entry(r: _Reader, kind_byte: int, index: int) -> tuple:
    """(kind, params, codebook) of one tensor entry after its kind byte."""
    if kind_byte & 0x80:
        raise PayloadError(f"tensor {index}: reserved bit set in kind byte")
    try:
        kind = QuantKind(kind_byte & 0x0F)
    except ValueError:
        raise PayloadError(f"tensor {index}: unknown quantization kind {kind_byte & 0x0F}") from None
    density = kind_byte >> 4
    if density and kind != QuantKind.UNIFORM_QP:
        raise PayloadError(f"tensor {index}: qp density given for a {kind.name} tensor")
    if kind == QuantKind.FLOAT32:
        return kind, (), None
    if kind == QuantKind.UNIFORM_QP:
        qp = _unzigzag(r.varint("qp", 255))
        if not -128 <= qp <= 127:
            raise PayloadError(f"tensor {index}: qp {qp} outside -128..127")
        return kind, (qp, density), None
    if kind == QuantKind.UNIFORM_STEP:
        step = r.float32("step")
        if step <= 0:
            raise PayloadError(f"tensor {index}: step {step} is not positive")
        return kind, (step,), None
    if kind == QuantKind.CODEBOOK:
        offset = _unzigzag(r.varint("codebook offset", 2**32))
        size = r.varint("codebook size", _MAX_CODEBOOK)
        if size == 0:
            raise PayloadError(f"tensor {index}: empty codebook")
        book = np.frombuffer(r.take(4 * size, "codebook"), dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(book)):
            raise PayloadError(f"tensor {index}: codebook value is not finite")
        return kind, (offset,), book
    return kind, (r.float32("ternary pos"), r.float32("ternary neg")), None


def _check_symbols(symbols: np.ndarray, kind: QuantKind, params: tuple, codebook, index: int) -> None:
    if symbols.size == 0:
        return
    if kind == QuantKind.CODEBOOK:
        low, high = params[0], params[0] + codebook.size - 1
    elif kind == QuantKind.TERNARY:
        low, high = -1, 1
    else:
        return
    if symbols.min() < low or symbols.max() > high:
        raise PayloadError(f"tensor {index}: symbols outside {low}..{high} for {kind.name}")


def decode_payload(payload: bytes, manifest: ParamManifest) -> Payload:
    """Parse and validate a payload against the expected ``manifest``; PayloadError if bad."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise PayloadError(f"payload must be bytes, got {type(payload).__name__}")
    data = bytes(payload)
    if len(data) < _FIXED_HEAD + 1 + 1 + _CRC:
        raise PayloadError(f"payload of {len(data)} bytes is shorter than the smallest valid one")
    if data[:2] != MAGIC:
        raise PayloadError("not a fedcomp payload (bad magic)")
    if data[2] != VERSION:
        raise PayloadError(f"unsupported payload format version {data[2]} (this build reads {VERSION})")
    end = len(data) - _CRC
    if zlib.crc32(data[:end]) != struct.unpack("<I", data[end:])[0]:
        raise PayloadError("payload CRC32 mismatch (corrupted or truncated)")
    codec = codec_by_id(data[3])
    if codec is None:
        raise PayloadError(f"unknown codec id {data[3]}")
    flags = data[4]
    if flags & ~_KNOWN_FLAGS:
        raise PayloadError(f"reserved payload flags set: {flags:#x}")
    r = _Reader(data, end)
    r.pos = _FIXED_HEAD
    count = r.varint("tensor count", len(manifest))
    entries, last_index, previous = [], -1, None
    for _ in range(count):
        index = r.varint("tensor index", len(manifest) - 1)
        if index <= last_index:
            raise PayloadError(f"tensor index {index} is not above the previous {last_index}")
        kind_byte = r.take(1, "kind")[0]
        if kind_byte == _REPEAT:
            if previous is None:
                raise PayloadError("first tensor repeats a previous quantization")
            entry = previous
        else:
            entry = _read_entry(r, kind_byte, index)
        entries.append((index, *entry))
        last_index, previous = index, entry
    body_len = r.varint("body length", end - r.pos)
    if r.pos + body_len != end:
        raise PayloadError(f"lengths do not add up: header {r.pos} + body {body_len} + CRC != {len(data)}")
    shapes = [manifest[index].shape for index, *_ in entries]
    symbols = codec.decode(data[r.pos : end], shapes)
    tensors = []
    for (index, kind, params, book), sym in zip(entries, symbols):
        _check_symbols(sym, kind, params, book, index)
        tensors.append(QuantizedTensor(manifest[index].name, sym, kind, params, book))
    return Payload(codec.name, flags, tensors)
