"""Entropy-constrained quantization: ECQ, its relevance-aware form ECQx, and EC2T (DESIGN 4.7).

Every value ``w`` goes to the centroid ``c`` minimising ``(w - c)**2 + lam * I_c`` with
``I_c = -log2 P_c``. ``P_c`` comes from a first nearest-centroid pass, raised so that
``P_0 >= 0.5`` (zero stays the cheapest symbol to code, so sparsity follows from ``lam``).
ECQx multiplies the zero centroid's cost per value by ``2 * r**beta`` (``r`` the value's
normalised relevance, beta <= 1), EC2T assigns over the three centroids ``{-w_n, 0, +w_p}``
with ``lam_max`` from the smaller side. ``docs/explanation/ecq.md`` compares all of this with the
authors' code.

The assignment is vectorised without an ``n x K`` cost matrix: the costs are parabolas of
equal curvature, so ``argmin_c`` is the lower envelope of ``K`` lines in ``w`` and one
``searchsorted`` over its breakpoints assigns every value (:func:`envelope_assign`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import Callable

import numpy as np

from fedcomp.compress.quant.arrays import Array, to_numpy
from fedcomp.compress.quant.tensor import QuantizedTensor, QuantKind

#: Smallest probability kept for a centroid no value chose (it then never wins: I is huge).
_P_FLOOR = 1e-12
#: Stabiliser of a layer's relevance normalisation and of beta's search.
_TINY = 1e-12
#: Smallest beta ECQx tries, relative to its starting value.
_BETA_FLOOR = 1e-6
#: Up to this many breakpoints, :func:`envelope_assign` counts them per value (one compare per
#: breakpoint) rather than binary-searching: 4-10x faster on layer-sized arrays.
_MAX_COUNTED_BREAKS = 32
#: Largest beta ECQx uses (the reference implementation's bound): the zero cost of a weight is
#: never scaled below ``2 * r``, so relevance can only bend the assignment so far.
_BETA_CAP = 1.0


def _finite(values: Array) -> np.ndarray:
    x = np.asarray(to_numpy(values), dtype=np.float32)  # ECQ is numpy: a device tensor comes to the host
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantize non-finite values (NaN or inf in the update)")
    return x


def grid_range(bits: int) -> tuple[int, int]:
    """The grid indices ``k`` of a ``2**bits``-level grid containing zero (two's complement)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def grid_step(values: np.ndarray, bits: int, percentile: float = 99.9) -> float:
    """Step (float32) putting the ``percentile`` of the non-zero ``|values|`` on the outermost positive level.

    Non-zero values only, so an already sparse update still gets a useful grid; 1.0 when
    everything is zero.
    """
    mags = np.abs(values[values != 0])
    if mags.size == 0:
        return 1.0
    top = float(np.percentile(mags, percentile))
    step = float(np.float32(top / grid_range(bits)[1]))
    return step if step > 0 else float(np.finfo(np.float32).tiny)


def envelope_assign(values: np.ndarray, centroids: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """``argmin_k (values - centroids[k])**2 + penalty[k]`` for every value; ``centroids`` ascending.

    ``(w - c)**2 + b = w**2 - 2 c w + (c**2 + b)``: the argmin over ``k`` is the lower envelope
    of the lines ``-2 c_k w + c_k**2 + b_k``, found once (K lines); each value's line is the
    number of breakpoints below it (n K compares, or ``searchsorted``, n log K, for many lines).
    Centroids with an infinite penalty never win. Returns int64 indices into ``centroids``, flattened.
    """
    c = np.asarray(centroids, dtype=np.float64)
    b = np.asarray(penalty, dtype=np.float64)
    live = np.flatnonzero(np.isfinite(b))
    if live.size == 0:
        raise ValueError("every centroid has an infinite penalty")
    intercept = c * c + b
    hull: list[int] = []
    breaks: list[float] = []

    def crossing(i: int, j: int) -> float:  # w above which line j (larger c) beats line i
        return (intercept[j] - intercept[i]) / (2.0 * (c[j] - c[i]))

    for j in live:
        while hull:
            x = crossing(hull[-1], j)
            if breaks and x <= breaks[-1]:
                hull.pop()
                breaks.pop()
                continue
            breaks.append(x)
            break
        hull.append(int(j))
    w = np.asarray(values, dtype=np.float32).reshape(-1)
    edges = np.asarray(breaks, dtype=np.float32)
    if edges.size > _MAX_COUNTED_BREAKS:
        positions = np.searchsorted(edges, w, side="left")
    else:  # the same positions as searchsorted, without its mispredicted branches
        positions = np.zeros(w.shape, dtype=np.uint8)  # at most _MAX_COUNTED_BREAKS: one byte each
        for edge in edges:
            positions += w > edge
    if len(hull) == c.size:  # every line on the envelope (always so for equal penalties): positions are the indices
        return positions.astype(np.int64)
    return np.take(np.asarray(hull, dtype=np.int64), positions)  # take: 2-3x faster than fancy indexing here


def ecq_information(nearest: np.ndarray, size: int, zero: int) -> np.ndarray:
    """``I_k = -log2 P_k`` from nearest-centroid indices, with ``P_zero`` raised to at least 0.5.

    Non-zero probabilities are scaled down when ``P_zero < 0.5`` so that they still sum to
    one with ``P_zero = 0.5``. Empty centroids get ``I = inf`` (they stay empty).
    """
    counts = np.bincount(nearest.reshape(-1), minlength=size).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    if p[zero] < 0.5:
        others = 1.0 - p[zero]
        p *= 0.5 / others
        p[zero] = 0.5
    return np.where(p > 0, -np.log2(np.maximum(p, _P_FLOOR)), np.inf)


def lambda_max(values: np.ndarray, centroids: np.ndarray, info: np.ndarray, zero: int,
               combine: Callable[[float, float], float] = max) -> float:
    """The lambda at which the outermost used centroid would empty into zero, per side, ``combine``d.

    Per side: ``(w_max**2 - (w_max - c_max)**2) / (I_max - I_0)``, with ``w_max`` the most
    extreme value and ``c_max`` the outermost centroid a value chose. ECQ takes the larger
    side (``max``); EC2T the smaller (``min``), so that neither ternary value empties. 0 when
    no side has a centroid cheaper to avoid than zero.
    """
    sides: list[float] = []
    extremes = {1.0: float(np.max(values)), -1.0: float(np.min(values))}
    finite = np.isfinite(info)
    finite[zero] = False
    for side in (1.0, -1.0):
        outward = side * np.asarray(centroids, dtype=np.float64)
        used = np.flatnonzero(finite & (outward > 0))
        if not used.size:
            continue
        k = used[np.argmax(outward[used])]
        w = extremes[side]
        gain = w * w - (w - centroids[k]) ** 2
        if info[k] > info[zero] and gain > 0:
            sides.append(gain / (info[k] - info[zero]))
    return float(reduce(combine, sides)) if sides else 0.0


@dataclass(frozen=True)
class Assignment:
    """One layer's entropy-constrained assignment, split so ECQx can re-decide zeros cheaply.

    ``nonzero``: index of the best non-zero centroid per value, ``nonzero_cost`` its cost,
    ``zero_cost`` the unscaled cost of zero (``w**2 + lam * I_0``).
    """

    nonzero: np.ndarray
    nonzero_cost: np.ndarray
    zero_cost: np.ndarray

    def indices(self, zero: int, zero_scale: np.ndarray | float = 1.0) -> np.ndarray:
        """Centroid index per value when zero's cost is multiplied by ``zero_scale``."""
        return np.where(self.zero_cost * zero_scale <= self.nonzero_cost, zero, self.nonzero)


def ecq_assignment(values: np.ndarray, centroids: np.ndarray, zero: int, lam: float,
                   info: np.ndarray) -> Assignment:
    """Best non-zero centroid and both costs for every value (``centroids`` ascending, ``centroids[zero] == 0``).

    Costs are float32 (flattened), the arithmetic of a 10M-value layer stays in a few passes.
    """
    w = np.asarray(values, dtype=np.float32).reshape(-1)
    info = np.asarray(info, dtype=np.float64)
    penalty = np.full(info.shape, np.inf)
    finite = np.isfinite(info)
    penalty[finite] = lam * info[finite]
    square = w * w
    zero_cost = square + np.float32(penalty[zero]) if lam > 0 else square
    nonzero_penalty = penalty.copy()
    nonzero_penalty[zero] = np.inf
    if not np.isfinite(nonzero_penalty).any():  # only zero is usable
        return Assignment(np.full(w.shape, zero, dtype=np.int64), np.full(w.shape, np.inf, np.float32), zero_cost)
    idx = envelope_assign(w, centroids, nonzero_penalty)
    diff = w - np.take(np.asarray(centroids, dtype=np.float32), idx)
    np.square(diff, out=diff)
    if lam > 0:
        diff += np.take(penalty.astype(np.float32), idx)
    return Assignment(idx, diff, zero_cost)


def layer_decay(size: int, max_size: int | None) -> float:
    """``(n_l / n_max + 0.05) / 1.05``: smaller layers get a weaker entropy constraint (1 without ``n_max``)."""
    if not max_size:
        return 1.0
    return (min(size / max_size, 1.0) + 0.05) / 1.05


def ecq_indices(values: np.ndarray, centroids: np.ndarray, zero: int, gamma: float,
                decay: float = 1.0, nearest: np.ndarray | None = None,
                combine: Callable[[float, float], float] = max) -> Assignment:
    """ECQ of one layer onto ``centroids``, split as an :class:`Assignment`.

    Nearest-centroid pass (``nearest``, when the caller has it cheaper) -> probabilities
    (``P_0 >= 0.5``) -> ``lam = gamma * decay * lam_max`` (sides ``combine``d, see
    :func:`lambda_max`) -> entropy-constrained assignment.
    """
    c = np.asarray(centroids, dtype=np.float64)
    if nearest is None:
        nearest = envelope_assign(values, c, np.zeros_like(c))
    info = ecq_information(nearest, c.size, zero)
    lam = gamma * decay * lambda_max(values, c, info, zero, combine) if gamma > 0 else 0.0
    return ecq_assignment(values, c, zero, lam, info)


def normalised_relevance(relevance: np.ndarray) -> np.ndarray:
    """``r = |R| / max|R|`` (all ones when the layer has no relevance at all)."""
    r = np.abs(np.asarray(relevance, dtype=np.float64)).reshape(-1)
    peak = float(r.max()) if r.size else 0.0
    return r / peak if peak > _TINY else np.ones_like(r)


def ecqx_zero_scale(assignment: Assignment, zero: int, r: np.ndarray, p: float) -> np.ndarray:
    """ECQx's per-value zero-cost factor ``2 * r**beta``, with beta tuned as in DESIGN 4.7.

    beta starts where ``mean(r)**beta = 0.5`` and is moved, if needed, so that the sparsity
    lies within ``p`` below plain ECQ's: ``[s_ECQ - p, s_ECQ]``. No search is needed: a value
    with ``0 < r < 1`` goes to zero exactly when ``beta >= t = log(ratio) / log(r)``, with
    ``ratio = nonzero_cost / (2 * zero_cost)``, so the sparsity is a step function of beta
    and the beta giving ``k`` zeros is the ``k``-th smallest ``t`` (one partition). Values
    with ``r = 0`` are always zeroed (beta > 0), those with ``r = 1`` never change with beta.
    When the window cannot be reached, beta goes as near to it as it can.
    """
    n = r.size
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = assignment.nonzero_cost.astype(np.float64) / (2.0 * assignment.zero_cost)
        log_r = np.log(r)
        inner = (r > 0) & (r < 1)
        t = np.log(ratio[inner]) / log_r[inner]  # ratio = 0: +inf (never zero); ratio >= 1: t <= 0
    fixed = int(np.count_nonzero(r == 0)) + int(np.count_nonzero((r >= 1) & (ratio >= 1)))
    target = float(np.mean(assignment.indices(zero) == zero))
    mean_r = float(np.clip(r.mean(), _TINY, 1.0 - 1e-9))
    beta = float(np.log(0.5) / np.log(mean_r))
    floor = beta * _BETA_FLOOR  # beta stays positive: r**0 = 1 would shield zero-relevance values
    zeros = fixed + int(np.count_nonzero(t <= beta))
    low, high = int(np.ceil((target - p) * n - 1e-9)) - fixed, int(np.floor(target * n + 1e-9)) - fixed
    finite = t[np.isfinite(t)]
    if zeros - fixed > high:  # too sparse: the largest beta with at most `high` zeros from t
        beta = floor if high <= 0 else max(floor, float(np.partition(finite, high - 1)[high - 1]))
    elif zeros - fixed < low and finite.size:  # not sparse enough: the smallest beta with `low` zeros
        k = min(low, finite.size)
        beta = max(floor, float(np.partition(finite, k - 1)[k - 1]))
    return 2.0 * r ** min(beta, _BETA_CAP)
class ECQQuantizer:
    """ECQ on the uniform ``2**bits`` grid ``c_k = k * step`` containing zero (DESIGN 4.7).

    ``gamma`` (>= 0) scales the entropy constraint: 0 is nearest-centroid (uniform)
    quantization, larger values zero more weights and lower the symbol entropy.
    ``max_size``: the model's largest layer (``n_max`` of the per-layer decay); without it
    every layer gets the full ``gamma``. The step puts the 99.9th percentile of the
    non-zero ``|values|`` on the outermost positive level.

    Symbols are the grid index ``k`` in ``-2**(bits-1) .. 2**(bits-1)-1``, so
    ``value = symbols * step`` exactly. ``codebook=True`` emits a CODEBOOK tensor (the used
    part of the grid, ``offset`` = the smallest symbol); ``codebook=False`` the same symbols
    as UNIFORM_STEP (4 bytes of parameters instead of the grid: the compact form for updates).
    ``relevance`` is ignored (see :class:`ECQxQuantizer`).
    """

    def __init__(self, bits: int = 4, gamma: float = 0.1, max_size: int | None = None,
                 codebook: bool = True) -> None:
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an integer in 2..8, got {bits!r}")
        if not (np.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if max_size is not None and max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.bits, self.gamma, self.max_size, self.codebook = bits, float(gamma), max_size, codebook

    def grid(self, values: np.ndarray, step: float | None = None) -> tuple[float, np.ndarray, int]:
        """``(step, centroids, zero_index)`` of the grid for ``values`` (or of the given ``step``)."""
        step = grid_step(values, self.bits) if step is None else float(np.float32(step))
        low, high = grid_range(self.bits)
        return step, np.arange(low, high + 1, dtype=np.float32) * np.float32(step), -low

    def assign(self, values: np.ndarray, relevance: np.ndarray | None = None,
               step: float | None = None) -> tuple[np.ndarray, float]:
        """Grid symbols ``k`` (int32, values' shape) and the float32 step.

        ``step``: a grid fixed beforehand (quantization-aware training keeps the grid of the
        starting weights, so that clients starting from one global model share it); by
        default the step comes from ``values``.
        """
        x = _finite(values)
        step, centroids, zero = self.grid(x, step)
        if x.size == 0:
            return np.zeros(x.shape, dtype=np.int32), step
        low, high = grid_range(self.bits)
        nearest = np.clip(np.rint(x.reshape(-1) / np.float32(step)), low, high).astype(np.int64) - low
        assignment = ecq_indices(x, centroids, zero, self.gamma, layer_decay(x.size, self.max_size), nearest)
        idx = self._indices(assignment, zero, relevance)
        return (idx - zero).astype(np.int32).reshape(x.shape), step

    def _indices(self, assignment: Assignment, zero: int, relevance: np.ndarray | None) -> np.ndarray:
        return assignment.indices(zero)

    def quantize(
        self, values: np.ndarray, name: str = "", relevance: np.ndarray | None = None, step: float | None = None
    ) -> QuantizedTensor:
        """ECQ-quantize ``values`` into grid symbols (the kind: see the class; ``step``: see :meth:`assign`)."""
        symbols, step = self.assign(values, relevance, step)
        if not self.codebook:
            return QuantizedTensor(name, symbols, QuantKind.UNIFORM_STEP, (step,))
        low = int(symbols.min()) if symbols.size else 0
        high = int(symbols.max()) if symbols.size else 0
        book = np.arange(low, high + 1, dtype=np.float32) * np.float32(step)
        return QuantizedTensor(name, symbols, QuantKind.CODEBOOK, (low,), book)


class ECQxQuantizer(ECQQuantizer):
    """ECQx: ECQ whose zero cost is scaled per value by ``2 * r**beta`` (relevance ``r``, DESIGN 4.7).

    beta is tuned per layer so that the sparsity stays within ``p`` below plain ECQ's.
    Without a relevance for a tensor (e.g. on the server, which has no training data) this
    is plain ECQ.
    """

    def __init__(self, bits: int = 4, gamma: float = 0.1, p: float = 0.1, max_size: int | None = None,
                 codebook: bool = True) -> None:
        super().__init__(bits, gamma, max_size, codebook)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def _indices(self, assignment: Assignment, zero: int, relevance: np.ndarray | None) -> np.ndarray:
        if relevance is None:
            return assignment.indices(zero)
        r = normalised_relevance(relevance)
        if r.size != assignment.nonzero.size:
            raise ValueError(f"relevance has {r.size} entries, the tensor {assignment.nonzero.size}")
        return assignment.indices(zero, ecqx_zero_scale(assignment, zero, r, self.p))


def _positive_float32(value: float, fallback: float) -> float:
    value = float(np.float32(value))
    return value if np.isfinite(value) and value > 0 else fallback


class EC2TQuantizer:
    """EC2T: per layer the three values ``{-w_n, 0, +w_p}`` with the entropy-constrained assignment.

    :meth:`assign` with given ``pos``/``neg`` assigns onto them (quantization-aware training,
    where they are trained); without, they are set one-shot (:meth:`quantize`): starting from
    twice the mean magnitude per sign, ``iterations`` rounds of assignment and
    ``w_p, w_n = mean`` of the values assigned to them (the MSE-optimal values for a fixed
    assignment). Emits TERNARY tensors (symbols -1, 0, 1; ``relevance`` is ignored).
    """

    def __init__(self, gamma: float = 0.1, max_size: int | None = None, iterations: int = 3) -> None:
        if not (np.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if max_size is not None and max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.gamma, self.max_size, self.iterations = float(gamma), max_size, int(iterations)

    def _symbols(self, x: np.ndarray, pos: float, neg: float) -> np.ndarray:
        assignment = ecq_indices(x, np.array([-neg, 0.0, pos]), 1, self.gamma, layer_decay(x.size, self.max_size),
                                 combine=min)
        return (assignment.indices(1) - 1).astype(np.int32).reshape(x.shape)

    def assign(self, values: np.ndarray, pos: float | None = None,
               neg: float | None = None) -> tuple[np.ndarray, float, float]:
        """Symbols in {-1, 0, 1} (values' shape) and the float32 ``(w_p, w_n)`` used."""
        x = _finite(values)
        if pos is not None and neg is not None:
            pos, neg = _positive_float32(pos, 1.0), _positive_float32(neg, 1.0)
            return (self._symbols(x, pos, neg), pos, neg) if x.size else (np.zeros(x.shape, np.int32), pos, neg)
        if not np.any(x):
            return np.zeros(x.shape, dtype=np.int32), 1.0, 1.0
        mags = np.abs(x[x != 0])
        scale = float(mags.mean())
        pos = _positive_float32(2 * x[x > 0].mean() if np.any(x > 0) else scale, 2 * scale)
        neg = _positive_float32(-2 * x[x < 0].mean() if np.any(x < 0) else scale, 2 * scale)
        for _ in range(self.iterations):
            symbols = self._symbols(x, pos, neg)
            if np.any(symbols > 0):
                pos = _positive_float32(x[symbols > 0].mean(dtype=np.float64), pos)
            if np.any(symbols < 0):
                neg = _positive_float32(-x[symbols < 0].mean(dtype=np.float64), neg)
        return self._symbols(x, pos, neg), pos, neg

    def quantize(
        self, values: np.ndarray, name: str = "", relevance: np.ndarray | None = None
    ) -> QuantizedTensor:
        """One-shot EC2T with MSE-optimal ``w_p, w_n``."""
        symbols, pos, neg = self.assign(values)
        return QuantizedTensor(name, symbols, QuantKind.TERNARY, (pos, neg))
