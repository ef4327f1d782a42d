"""``ans``: our own entropy coder for sparse symbol tensors, on constriction's ANS coder.

All tensors of a message are coded as one sparse vector (their symbols concatenated in
payload order), in one ANS stream:

1. ``nnz``, the number of non-zero symbols;
2. the positions of the non-zeros, as gaps (zero runs) between them;
3. the magnitudes ``|s| - 1`` of the non-zeros;
4. their signs.

Integers (gaps, magnitudes) are split into a *token* and raw bits, as in JPEG XL's hybrid
integer coding: values below 4 are tokens of their own, larger values are coded by their
exponent and the bit below the leading one (the token, entropy coded) plus the remaining
low bits (coded uniformly). Tokens and signs are coded with *adaptive* categorical models
whose counts are updated after blocks of geometrically growing length (1, 1, 2, 4, ...):
no histogram is transmitted, the model learns as it goes, and a decoder only needs one
model update per block, which keeps the number of Python-level steps logarithmic in the
number of non-zeros. The gap model starts from the geometric distribution implied by
``nnz`` and the vector length, so even a handful of positions code near their entropy.

Work is proportional to the number of non-zeros (one pass over the symbols to find them),
which is what makes this coder faster than a coder visiting every symbol.
"""

from __future__ import annotations

from typing import Sequence

import constriction
import numpy as np

from fedcomp.codec.base import Codec, register
from fedcomp.errors import PayloadError

_DIRECT = 4  # values 0..3 are tokens of their own
_ALPHABET = 64  # tokens cover every value below 2**32
_RAW_CHUNK = 16  # constriction's Uniform model takes sizes below 2**24
_GAP_PRIOR_WEIGHT = 2.0  # pseudo-observations the geometric gap prior is worth
_MAG_PRIOR = 0.25  # pseudo-count of every magnitude token
_SIGN_PRIOR = 0.5  # pseudo-count of each sign (Krichevsky-Trofimov)
_MAX_VECTOR = 2**31 - 1  # positions are coded below this
_MAX_MAGNITUDE = 2**31 - 1  # |s| - 1 of int32 symbols, -2**31 included (float32 bit patterns)

_Uniform = constriction.stream.model.Uniform()


def to_tokens(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split non-negative integers into (token, number of raw bits, raw bits)."""
    v = values.astype(np.int64)
    exponent = np.zeros(v.shape, dtype=np.int64)
    big = v >= _DIRECT
    exponent[big] = np.floor(np.log2(v[big])).astype(np.int64)
    # log2 of large integers in float64 can round up at exact powers of two minus one.
    exponent[big] -= (np.left_shift(1, exponent[big]) > v[big]).astype(np.int64)
    nbits = np.where(big, exponent - 1, 0)
    top = np.where(big, (v >> np.maximum(nbits, 0)) & 1, 0)
    tokens = np.where(big, _DIRECT + 2 * (exponent - 2) + top, v)
    raw = np.where(big, v & ((np.int64(1) << nbits) - 1), 0)
    return tokens.astype(np.int32), nbits.astype(np.int32), raw


def token_bits(tokens: np.ndarray) -> np.ndarray:
    """Number of raw bits that follow each token."""
    t = tokens.astype(np.int64)
    return np.where(t >= _DIRECT, (t - _DIRECT) // 2 + 1, 0).astype(np.int32)


def from_tokens(tokens: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_tokens` (int64)."""
    t = tokens.astype(np.int64)
    nbits = token_bits(tokens).astype(np.int64)
    top = np.where(t >= _DIRECT, (t - _DIRECT) & 1, 0)
    return np.where(t >= _DIRECT, ((2 | top) << nbits) | raw, t)


def token_range(token: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest value of each token and the number of values it covers."""
    t = np.asarray(token, dtype=np.int64)
    nbits = token_bits(t).astype(np.int64)
    low = from_tokens(t, np.zeros_like(t))
    return low, np.left_shift(np.int64(1), nbits)


def block_bounds(count: int) -> list[tuple[int, int]]:
    """Blocks 1, 1, 2, 4, 8, ...: the adaptive model is refreshed between blocks."""
    bounds, start = [], 0
    while start < count:
        end = min(count, max(start + 1, 2 * start))
        bounds.append((start, end))
        start = end
    return bounds


class _Channel:
    """One ANS stream seen from either side: the coding logic is written once.

    Encoding, each call receives the values and records (values, model) operations that
    :meth:`finish` writes in reverse (ANS is a stack). Decoding, each call receives
    ``values=None`` and reads them. Both return the values.
    """

    def __init__(self, words: np.ndarray | None = None) -> None:
        self.encoding = words is None
        self._ops: list[tuple] = []
        self._coder = None if self.encoding else constriction.stream.stack.AnsCoder(words)

    def categorical(self, values: np.ndarray | None, count: int, probs: np.ndarray) -> np.ndarray:
        model = constriction.stream.model.Categorical(probs, perfect=False)
        if self.encoding:
            self._ops.append((values.astype(np.int32), model))
            return values
        return np.asarray(self._coder.decode(model, count), dtype=np.int32)

    def uniform(self, values: np.ndarray | None, sizes: np.ndarray) -> np.ndarray:
        if self.encoding:
            self._ops.append((values.astype(np.int32), _Uniform, sizes.astype(np.int32)))
            return values
        return np.asarray(self._coder.decode(_Uniform, sizes.astype(np.int32)), dtype=np.int64)

    def finish(self) -> bytes:
        coder = constriction.stream.stack.AnsCoder()
        for op in reversed(self._ops):
            if op[0].size:
                coder.encode_reverse(*op)
        return coder.get_compressed().astype("<u4").tobytes()

    def exhausted(self) -> bool:
        return self._coder.is_empty()

    def adaptive(self, values: np.ndarray | None, count: int, prior: np.ndarray) -> np.ndarray:
        """Symbols in ``0..len(prior)-1`` under counts that start at ``prior``."""
        # constriction needs two symbols; a one-symbol alphabet gets a never-used second.
        counts = np.zeros(max(2, prior.size))
        counts[: prior.size] = prior
        out = np.empty(count, dtype=np.int32)
        for start, end in block_bounds(count):
            block = None if values is None else values[start:end]
            out[start:end] = self.categorical(block, end - start, counts)
            counts += np.bincount(out[start:end], minlength=counts.size)
        return out

    def raw_bits(self, values: np.ndarray | None, nbits: np.ndarray) -> np.ndarray:
        """``nbits[i]`` uniform bits per value, in chunks the Uniform model accepts."""
        nbits = nbits.astype(np.int64)
        low_bits = np.minimum(nbits, _RAW_CHUNK)
        has_low, has_high = low_bits > 0, nbits > _RAW_CHUNK
        low = None if values is None else (values & ((np.int64(1) << low_bits) - 1))[has_low]
        high = None if values is None else (values >> _RAW_CHUNK)[has_high]
        low = self.uniform(low, np.left_shift(1, low_bits[has_low]))
        high = self.uniform(high, np.left_shift(1, nbits[has_high] - _RAW_CHUNK))
        out = np.zeros(nbits.shape, dtype=np.int64)
        out[has_low] = low
        out[has_high] |= np.asarray(high, dtype=np.int64) << _RAW_CHUNK
        return out

    def integers(self, values: np.ndarray | None, count: int, prior: np.ndarray) -> np.ndarray:
        """Non-negative integers: adaptive tokens plus raw bits."""
        tokens, raw = (None, None) if values is None else to_tokens(values)[::2]
        tokens = self.adaptive(tokens, count, prior)
        return from_tokens(tokens, self.raw_bits(raw, token_bits(tokens)))


def _uniform_prior(largest: int) -> np.ndarray:
    """Equal pseudo-counts on every token up to the token of ``largest``."""
    return np.full(int(to_tokens(np.array([largest]))[0][0]) + 1, _MAG_PRIOR)


def _gap_prior(nnz: int, length: int) -> np.ndarray:
    """Token probabilities of a geometric gap with success rate ``nnz / length``."""
    last = int(to_tokens(np.array([length - 1]))[0][0])
    low, width = token_range(np.arange(last + 1))
    rate = nnz / length
    if rate >= 1.0:
        mass = (low == 0).astype(np.float64)
    else:
        log_q = np.log1p(-rate)
        mass = np.exp(low * log_q) - np.exp((low + width) * log_q)
    return _GAP_PRIOR_WEIGHT * mass + 1e-3


def _code(ch: _Channel, length: int, flat: np.ndarray | None) -> np.ndarray:
    """Code (or decode, ``flat=None``) a sparse int32 vector of ``length`` symbols."""
    positions = None if flat is None else np.flatnonzero(flat)
    nnz = ch.integers(None if flat is None else np.array([positions.size]), 1, _uniform_prior(length))
    nnz = int(nnz[0])
    if nnz > length:
        raise PayloadError(f"ans stream declares {nnz} non-zeros in {length} symbols")
    out = np.zeros(length, dtype=np.int32)
    if nnz == 0:
        return out
    gaps = None if flat is None else np.diff(positions, prepend=-1) - 1
    gaps = ch.integers(gaps, nnz, _gap_prior(nnz, length))
    positions = np.cumsum(gaps + 1) - 1
    if positions[-1] >= length:
        raise PayloadError("ans stream places a non-zero beyond the end of the tensors")
    values = None if flat is None else flat[positions].astype(np.int64)
    magnitudes = None if flat is None else np.abs(values) - 1
    biggest = None if flat is None else magnitudes.max(keepdims=True)
    biggest = int(ch.integers(biggest, 1, _uniform_prior(_MAX_MAGNITUDE))[0])
    if biggest > _MAX_MAGNITUDE:
        raise PayloadError("ans stream declares a magnitude beyond the int32 range")
    magnitudes = ch.integers(magnitudes, nnz, _uniform_prior(biggest))
    if magnitudes.max() > biggest:
        raise PayloadError("ans stream magnitude exceeds its declared maximum")
    negative = None if flat is None else (values < 0).astype(np.int32)
    negative = ch.adaptive(negative, nnz, np.full(2, _SIGN_PRIOR))
    signed = np.where(negative == 1, -(magnitudes + 1), magnitudes + 1)
    if signed.max() > np.iinfo(np.int32).max:
        raise PayloadError("ans stream holds a positive symbol beyond the int32 range")
    out[positions] = signed
    return out


@register
class AnsCodec(Codec):
    """Sparse-vector coder: positions, magnitudes, signs under adaptive models."""

    name = "ans"
    id = 3

    def encode(self, symbols: Sequence[np.ndarray]) -> bytes:
        flat = np.concatenate([np.asarray(s, dtype=np.int32).reshape(-1) for s in symbols] or [np.zeros(0, np.int32)])
        if flat.size > _MAX_VECTOR:
            raise ValueError(f"ans codes at most {_MAX_VECTOR} symbols per message")
        if flat.size == 0:
            return b""
        ch = _Channel()
        _code(ch, flat.size, flat)
        return ch.finish()

    def decode(self, data: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        length = sum(sizes)
        if length > _MAX_VECTOR:
            raise PayloadError(f"ans codes at most {_MAX_VECTOR} symbols per message")
        if length == 0:
            if data:
                raise PayloadError("ans body is not empty although there are no symbols")
            return [np.zeros(s, dtype=np.int32) for s in shapes]
        if len(data) % 4:
            raise PayloadError(f"ans body length {len(data)} is not a multiple of 4")
        try:
            ch = _Channel(np.frombuffer(data, dtype="<u4").astype(np.uint32))
            flat = _code(ch, length, None)
            exhausted = ch.exhausted()
        except PayloadError:
            raise
        except Exception as exc:  # constriction signals bad streams with assorted types
            raise PayloadError(f"ans stream is malformed: {exc}") from exc
        if not exhausted:
            raise PayloadError("ans stream has data left after the last symbol")
        bounds = np.cumsum([0] + sizes)
        return [flat[a:b].reshape(s) for a, b, s in zip(bounds[:-1], bounds[1:], shapes)]
