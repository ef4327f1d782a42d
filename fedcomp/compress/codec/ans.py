"""``ans``: our own entropy coder for sparse symbol tensors, on constriction's ANS coder.

All tensors of a message go into one ANS stream. Each tensor is cut into *rows* (its
output filters: ``shape[0]`` rows of ``prod(shape[1:])`` symbols; a 1-D tensor is one
row; rows longer than 2**20 are split). Four streams follow, each over every tensor:

1. per row, the number ``k`` of non-zero symbols;
2. the positions of the non-zeros as gaps (zero runs) within their row, under a
   geometric model with the row's own density ``k / width`` (nothing transmitted: the
   decoder knows ``k``);
3. the magnitudes: per tensor the smallest (top-k and thresholds leave a floor below which
   nothing is sent), then the excess over it under an adaptive model per tensor;
4. the signs: per row the number of negative symbols (uniform over ``0..k``), then the
   signs under that row's static Bernoulli model (rows of one sign cost nothing more).

Rows are where updates have structure: some filters change a lot, others barely, and a
filter's entries tend to move in one direction. Modelling density and sign per row codes
real updates well below their zeroth-order entropy.

Integers (counts, gaps, magnitudes) are split into a *token* and raw bits, as in JPEG XL's
hybrid integer coding: values below 4 are tokens of their own, larger values are coded by
their exponent and the bit below the leading one (the token, entropy coded) plus the
remaining low bits (coded uniformly).

*Adaptive* models keep counts per context (a tensor) that start at a small prior and are
refreshed after 1, 2, 4, 8, ... symbols of that context: no histogram is transmitted, and
all contexts' symbols of one refresh level are coded together, so a message costs a
number of vectorised steps logarithmic in its size, not one per symbol. Within one step,
symbols are coded grouped by model: per group with one model, or, when that is small, all
at once with one probability row per symbol.

Work is proportional to the number of rows and non-zeros plus one pass over the symbols to
find the non-zeros; coding order and models are fully determined by what the decoder has
already decoded, which is all it needs.
"""

from __future__ import annotations

import functools
from typing import Sequence

import constriction
import numpy as np

from fedcomp.compress.codec.base import Codec, register
from fedcomp.errors import PayloadError

_RAW_CHUNK = 16  # constriction's Uniform model takes sizes below 2**24
_TOKEN_PRIOR = 0.1  # pseudo-count of every allowed token in an adaptive model
_SIGN_PRIOR = np.array([[0.5, 0.5]])  # Krichevsky-Trofimov, the same for every row
_MAX_ROW = 2**20  # rows are cut to at most this many symbols
_MAX_VECTOR = 2**31 - 1  # symbols per message
_MAX_MAGNITUDE = 2**32 - 1  # bounds every integer coded below (int32 range checked at the end)
_TABLE_LIMIT = 2**18  # probability-table entries per coder call
_MIN_RUN = 64  # runs of one model at least this long (on average) get a model object each

_Categorical = constriction.stream.model.Categorical(perfect=False)
_Uniform = constriction.stream.model.Uniform()


def _floor_log2(values: np.ndarray) -> np.ndarray:
    """``floor(log2(v))`` of integers below 2**53 (exact, via the float exponent); -1 for 0."""
    return np.frexp(values.astype(np.float64))[1].astype(np.int64) - 1


# Tokens: 0..3 stand for themselves; a value v >= 4 with exponent e = floor(log2 v) has
# token 2e + (the bit below its leading one) and e - 1 raw bits. The formulas below fold
# the small values into the same arithmetic.


def to_tokens(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split non-negative integers into (token, number of raw bits, raw bits)."""
    v = np.asarray(values, dtype=np.int64)
    exponent = _floor_log2(v)
    nbits = np.maximum(exponent - 1, 0)
    tokens = np.maximum(2 * exponent + ((v >> nbits) & 1), 0)
    return tokens, nbits, v & ((np.int64(1) << nbits) - 1)


def token_bits(tokens: np.ndarray) -> np.ndarray:
    """Number of raw bits that follow each token."""
    return np.maximum((np.asarray(tokens, dtype=np.int64) >> 1) - 1, 0)


def from_tokens(tokens: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_tokens` (int64)."""
    t = np.asarray(tokens, dtype=np.int64)
    return np.where(t < 2, t, ((2 | (t & 1)) << token_bits(t)) | raw)


def token_range(token: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest value of each token and the number of values it covers."""
    t = np.asarray(token, dtype=np.int64)
    nbits = token_bits(t).astype(np.int64)
    low = from_tokens(t, np.zeros_like(t))
    return low, np.left_shift(np.int64(1), nbits)


def _token_of(value: int) -> int:
    """:func:`to_tokens` of one integer, without numpy's per-call overhead."""
    if value < 4:
        return value
    exponent = value.bit_length() - 1
    return 2 * exponent + ((value >> (exponent - 1)) & 1)


def _levels(contexts: np.ndarray) -> np.ndarray:
    """Refresh level of each symbol within its context: rank 0 is level 0, ranks
    ``[2**(l-1), 2**l)`` level ``l`` (counts are refreshed after 1, 2, 4, 8, ... symbols).

    ``contexts`` must be non-decreasing (symbols of one context are contiguous).
    """
    index = np.arange(contexts.size)
    starts = np.empty(contexts.size, dtype=bool)
    starts[:1] = True
    np.not_equal(contexts[1:], contexts[:-1], out=starts[1:])
    rank = index - np.maximum.accumulate(np.where(starts, index, 0))
    return np.frexp(rank)[1]  # the float exponent: floor(log2(rank)) + 1, and 0 for rank 0


class _Channel:
    """One ANS stream seen from either side: the coding logic is written once.

    Encoding, each call receives the values and records operations that :meth:`finish`
    writes in reverse (ANS is a stack). Decoding, each call receives ``values=None`` and
    reads them. Both return the values.
    """

    def __init__(self, words: np.ndarray | None = None) -> None:
        self.encoding = words is None
        self._ops: list[tuple] = []
        self._coder = None if self.encoding else constriction.stream.stack.AnsCoder(words)

    def _op(self, values: np.ndarray | None, *model) -> np.ndarray:
        if self.encoding:
            self._ops.append((values.astype(np.int32), *model))
            return values
        return np.asarray(self._coder.decode(*model), dtype=np.int64)

    def finish(self) -> bytes:
        coder = constriction.stream.stack.AnsCoder()
        for op in reversed(self._ops):
            if op[0].size:
                coder.encode_reverse(*op)
        return coder.get_compressed().astype("<u4").tobytes()

    def exhausted(self) -> bool:
        return self._coder.is_empty()

    def grouped(
        self, values: np.ndarray | None, groups: np.ndarray, table: np.ndarray, order: np.ndarray | None = None
    ) -> np.ndarray:
        """Symbols in coding order; symbol i uses the model ``table[groups[i]]``.

        ``groups`` is non-decreasing. Small tables, or many short runs, give every symbol its
        probability row (in chunks of bounded size); long runs of one group are coded with
        one model each. With
        ``order``, symbol i is ``values[order[i]]`` and the result is in ``values``' order.
        """
        if order is not None:
            coded = self.grouped(None if values is None else values[order], groups, table)
            out = np.empty_like(coded)
            out[order] = coded
            return out
        n = groups.size
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if n * table.shape[1] <= _TABLE_LIMIT:
            return self._op(values, _Categorical, np.take(table, groups, axis=0))  # take: faster than table[groups]
        bounds = np.append(np.flatnonzero(np.diff(groups)) + 1, n)
        if bounds.size * _MIN_RUN > n:  # many short runs: probability rows, in chunks
            step = max(1, _TABLE_LIMIT // table.shape[1])
            return np.concatenate([
                self._op(None if values is None else values[a : a + step], _Categorical,
                         np.take(table, groups[a : a + step], axis=0))
                for a in range(0, n, step)
            ])
        out, start = [], 0
        for end in bounds:
            model = constriction.stream.model.Categorical(table[groups[start]], perfect=False)
            chunk = None if values is None else values[start:end]
            out.append(self._op(chunk, model) if self.encoding else self._op(None, model, int(end - start)))
            start = end
        return np.concatenate(out)

    def adaptive(self, values: np.ndarray | None, contexts: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Symbols under per-context counts that start at ``prior[context]`` (or a shared row).

        ``contexts`` is non-decreasing; counts are refreshed between refresh levels.
        """
        level = _levels(contexts)
        order = np.argsort(level.astype(np.uint8), kind="stable")  # levels are below 64: a radix sort
        contexts_needed = int(contexts.max()) + 1 if contexts.size else 0
        prior = np.repeat(prior, contexts_needed, axis=0) if prior.shape[0] == 1 else prior.astype(np.float64)
        if self.encoding:
            return self._adaptive_at_once(values, contexts, level, order, prior)
        bounds = np.append(np.flatnonzero(np.diff(level[order])) + 1, level.size)
        ctx_sorted = contexts[order]
        values_sorted = None if values is None else values[order]
        # integer counts plus the prior, added afresh each time: the encoder's shortcut
        # computes the very same floats
        seen = np.zeros(prior.shape, dtype=np.int64)
        coded = np.empty(contexts.size, dtype=np.int64)
        start = 0
        for end in bounds:
            ctx = ctx_sorted[start:end]
            block = None if values is None else values_sorted[start:end]
            coded[start:end] = self.grouped(block, ctx, prior + seen)
            seen += np.bincount(ctx * prior.shape[1] + coded[start:end], minlength=prior.size).reshape(prior.shape)
            start = end
        out = np.empty_like(coded)
        out[order] = coded
        return out

    def _adaptive_at_once(
        self, values: np.ndarray, contexts: np.ndarray, level: np.ndarray, order: np.ndarray, prior: np.ndarray
    ) -> np.ndarray:
        """The encoder's adaptive coding: every level at once, as one :meth:`grouped` stream.

        The encoder knows every symbol, so it has each (level, context) pair's counts up
        front: the same floats the decoder sums level by level (``prior + seen``). In
        coding order (by level, then context) the pairs are runs, and :meth:`grouped`
        pushes them in the same order as the decoder reads them, which writes the same ANS
        stream (with ``perfect=False`` a run's model object and per-symbol rows agree).
        """
        ctx, lev, val = contexts[order], level[order].astype(np.int64), values[order]
        levels, num_ctx, k = int(lev[-1]) + 1, prior.shape[0], prior.shape[1]
        pair = lev * num_ctx + ctx
        seen = np.bincount(pair * k + val, minlength=levels * num_ctx * k).reshape(levels, num_ctx, k)
        before = np.cumsum(seen, axis=0) - seen  # counts from lower levels only
        self.grouped(val, pair, (before + prior).reshape(levels * num_ctx, k))
        return values

    def raw_bits(self, values: np.ndarray | None, nbits: np.ndarray) -> np.ndarray:
        """``nbits[i]`` uniform bits per value, in chunks the Uniform model accepts."""
        nbits = nbits.astype(np.int64)
        out = np.zeros(nbits.shape, dtype=np.int64)
        has_low = nbits > 0
        if not has_low.any():
            return out
        low_bits = np.minimum(nbits[has_low], _RAW_CHUNK)
        low = None if values is None else values[has_low] & ((np.int64(1) << low_bits) - 1)
        out[has_low] = self._op(low, _Uniform, np.left_shift(1, low_bits).astype(np.int32))
        has_high = nbits > _RAW_CHUNK
        if has_high.any():
            high = None if values is None else values[has_high] >> _RAW_CHUNK
            sizes = np.left_shift(1, nbits[has_high] - _RAW_CHUNK).astype(np.int32)
            out[has_high] |= np.asarray(self._op(high, _Uniform, sizes), dtype=np.int64) << _RAW_CHUNK
        return out

    def integers(self, values: np.ndarray | None, code_tokens) -> np.ndarray:
        """Non-negative integers: tokens by ``code_tokens(tokens or None)``, then raw bits."""
        if self.encoding:
            tokens, nbits, raw = to_tokens(values)
            code_tokens(tokens)
            self.raw_bits(raw, nbits)
            return values
        tokens = code_tokens(None)
        return from_tokens(tokens, self.raw_bits(None, token_bits(tokens)))


def _uniform_prior(largest: np.ndarray) -> np.ndarray:
    """Per context, pseudo-counts on every token up to the token of ``largest[context]``."""
    last = to_tokens(np.asarray(largest, dtype=np.int64))[0]
    table = np.zeros((last.size, max(2, int(last.max(initial=0)) + 1)))
    table[np.arange(table.shape[1]) <= last[:, None]] = _TOKEN_PRIOR
    return table


#: Static models for the few per-message integers: the largest excess (any token) and the
#: floors, which are 1 (coded as 0) wherever nothing pushed small values to zero.
_MAGNITUDE_PRIOR = _uniform_prior(np.array([_MAX_MAGNITUDE]))
_FLOOR_PRIOR = _MAGNITUDE_PRIOR + 3 * np.eye(1, _MAGNITUDE_PRIOR.shape[1])


@functools.lru_cache(maxsize=64)
def _token_ranges(alphabet: int) -> tuple[np.ndarray, np.ndarray]:
    return token_range(np.arange(alphabet))


def _geometric_table(rate: np.ndarray, longest: int) -> np.ndarray:
    """Per rate, token probabilities of a geometric gap ``P(g) = rate * (1 - rate)**g``."""
    low, width = _token_ranges(max(2, _token_of(longest) + 1))
    log_q = np.log1p(-np.minimum(rate, 1.0 - 1e-12))[:, None]
    with np.errstate(under="ignore"):
        mass = np.exp(low * log_q) - np.exp((low + width) * log_q)
    return mass + 1e-12


class _Rows:
    """The row layout of a message's tensors: both sides derive it from the shapes.

    Use :func:`_rows_for`, which caches layouts (a sender sends the same shapes each round).
    """

    def __init__(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        widths, tensors = [], []
        for t, shape in enumerate(shapes):
            size = int(np.prod(shape, dtype=np.int64))
            if size == 0:
                continue
            natural = size // shape[0] if len(shape) >= 2 else size
            width = min(natural, _MAX_ROW)
            rows = -(-size // width)
            widths.append(np.full(rows, width, dtype=np.int64))
            widths[-1][-1] = size - (rows - 1) * width
            tensors.append(np.full(rows, t, dtype=np.int64))
        self.width = np.concatenate(widths) if widths else np.zeros(0, dtype=np.int64)
        self.tensor = np.concatenate(tensors) if tensors else np.zeros(0, dtype=np.int64)
        self.start = np.cumsum(self.width) - self.width
        self.length = int(self.width.sum())
        self.bounds = np.append(self.start, self.length)  # where each row starts, and the end
        self.num_tensors = len(shapes)
        # the first row of each tensor that has rows (its tensor: self.tensor[first_row])
        self.first_row = np.flatnonzero(np.diff(self.tensor, prepend=-1))
        widest = np.zeros(self.num_tensors, dtype=np.int64)
        np.maximum.at(widest, self.tensor, self.width)
        self.count_prior = _uniform_prior(widest)  # a row holds 0..width non-zeros
        for array in (self.width, self.tensor, self.start, self.bounds, self.first_row, self.count_prior):
            array.setflags(write=False)


@functools.lru_cache(maxsize=64)
def _cached_rows(shapes: tuple[tuple[int, ...], ...]) -> _Rows:
    return _Rows(shapes)


def _rows_for(shapes: Sequence[Sequence[int]]) -> _Rows:
    """The (cached, read-only) row layout of tensors with these shapes."""
    return _cached_rows(tuple(tuple(int(d) for d in shape) for shape in shapes))


def _code(ch: _Channel, rows: _Rows, flat: np.ndarray | None) -> np.ndarray:
    """Code (or decode, ``flat=None``) the concatenated symbols laid out in ``rows``."""
    enc = flat is not None
    positions = np.flatnonzero(flat != 0) if enc else None  # 5x faster than on int32
    # 1. non-zeros per row, adaptive per tensor
    counts = np.diff(np.searchsorted(positions, rows.bounds)) if enc else None
    counts = ch.integers(counts, lambda tok: ch.adaptive(tok, rows.tensor, rows.count_prior))
    if np.any(counts > rows.width):
        raise PayloadError("ans stream declares more non-zeros in a row than it holds")
    nnz = int(counts.sum())
    if nnz == 0:
        return flat if enc else np.zeros(rows.length, dtype=np.int32)
    full = counts > 0
    # 2. gaps within rows, geometric with the row's density
    row_of = np.repeat(np.arange(counts.size), counts)
    first = np.cumsum(counts) - counts  # index of each row's first non-zero
    if enc:
        column = positions - rows.start[row_of]
        previous = np.empty_like(column)
        previous[1:] = column[:-1]
        previous[first[full]] = -1
        gaps = column - previous - 1
    # (coded row by row in order of their model, so that each model is one run)
    rates, model = np.unique(counts[full] / rows.width[full], return_inverse=True)
    table = _geometric_table(rates, int(rows.width.max()))
    by_model = np.argsort(model, kind="stable")
    sizes = counts[full][by_model]
    order = np.repeat(first[full][by_model] - (np.cumsum(sizes) - sizes), sizes) + np.arange(nnz)
    gaps = ch.integers(gaps if enc else None,
                       lambda tok: ch.grouped(tok, np.repeat(model[by_model], sizes), table, order))
    if not enc:
        steps = np.cumsum(gaps + 1)
        column = steps - np.repeat((steps - gaps - 1)[first[full]], counts[full]) - 1
        if np.any(column >= rows.width[row_of]):
            raise PayloadError("ans stream places a non-zero beyond the end of its row")
        positions = rows.start[row_of] + column
    # 3. magnitudes: per tensor the smallest (top-k and thresholds leave a floor), then the
    #    excess over it under an adaptive model per tensor; the alphabet is bounded by the
    #    message's largest excess
    values = flat[positions].astype(np.int64) if enc else None
    magnitude = np.abs(values) if enc else None
    tensor_of = rows.tensor[row_of]
    per_tensor = np.add.reduceat(counts, rows.first_row)  # non-zeros of each tensor that has rows
    first_of_tensor = (np.cumsum(per_tensor) - per_tensor)[per_tensor > 0]
    floors = np.minimum.reduceat(magnitude, first_of_tensor) - 1 if enc else None
    one_context = np.zeros(first_of_tensor.size, dtype=np.int64)
    floors = 1 + ch.integers(floors, lambda tok: ch.grouped(tok, one_context, _FLOOR_PRIOR))
    floor = np.repeat(floors, np.diff(np.append(first_of_tensor, nnz)))
    excess = magnitude - floor if enc else None
    biggest = excess.max(keepdims=True) if enc else None
    biggest = int(ch.integers(biggest, lambda tok: ch.grouped(tok, np.zeros(1, np.int64), _MAGNITUDE_PRIOR))[0])
    prior = _uniform_prior(np.full(rows.num_tensors, biggest))
    magnitude = floor + ch.integers(excess, lambda tok: ch.adaptive(tok, tensor_of, prior))
    # 4. signs, adaptive per row (a filter's entries tend to move one way)
    negative = ch.adaptive((values < 0).astype(np.int64) if enc else None, row_of, _SIGN_PRIOR)
    if enc:  # the symbols are the input: nothing to rebuild
        return flat
    signed = np.where(negative == 1, -magnitude, magnitude)
    if signed.max() > np.iinfo(np.int32).max or signed.min() < np.iinfo(np.int32).min:
        raise PayloadError("ans stream holds a symbol beyond the int32 range")
    out = np.zeros(rows.length, dtype=np.int32)
    out[positions] = signed
    return out


@register
class AnsCodec(Codec):
    """Row-structured sparse coder: counts, gaps, magnitudes, signs (see module docs)."""

    name = "ans"
    id = 3

    def encode(self, symbols: Sequence[np.ndarray]) -> bytes:
        rows = _rows_for([np.shape(s) for s in symbols])
        if rows.length > _MAX_VECTOR:
            raise ValueError(f"ans codes at most {_MAX_VECTOR} symbols per message")
        if rows.length == 0:
            return b""
        flat = np.concatenate([np.asarray(s, dtype=np.int32).reshape(-1) for s in symbols])
        ch = _Channel()
        _code(ch, rows, flat)
        return ch.finish()

    def decode(self, data: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        rows = _rows_for(shapes)
        if rows.length > _MAX_VECTOR:
            raise PayloadError(f"ans codes at most {_MAX_VECTOR} symbols per message")
        if rows.length == 0:
            if data:
                raise PayloadError("ans body is not empty although there are no symbols")
            return [np.zeros(s, dtype=np.int32) for s in shapes]
        if len(data) % 4:
            raise PayloadError(f"ans body length {len(data)} is not a multiple of 4")
        try:
            ch = _Channel(np.frombuffer(data, dtype="<u4").astype(np.uint32))
            flat = _code(ch, rows, None)
            exhausted = ch.exhausted()
        except PayloadError:
            raise
        except Exception as exc:  # constriction signals bad streams with assorted types
            raise PayloadError(f"ans stream is malformed: {exc}") from exc
        if not exhausted:
            raise PayloadError("ans stream has data left after the last symbol")
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        bounds = np.cumsum([0] + sizes)
        return [flat[a:b].reshape(s) for a, b, s in zip(bounds[:-1], bounds[1:], shapes)]
