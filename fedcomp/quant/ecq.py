"""Entropy-constrained quantization: ECQ, its relevance-aware form ECQx, and EC2T (DESIGN 4.7).

Every value ``w`` goes to the centroid ``c`` minimising ``(w - c)**2 + lam * I_c`` with
``I_c = -log2 P_c``. ``P_c`` comes from a first nearest-centroid pass, raised so that
``P_0 >= 0.5`` (zero stays the cheapest symbol to code, so sparsity follows from ``lam``).
ECQx multiplies the zero centroid's cost per value by ``2 * r**beta`` (``r`` the value's
normalised relevance), EC2T assigns over the three centroids ``{-w_n, 0, +w_p}``.

The assignment is vectorised without an ``n x K`` cost matrix: the costs are parabolas of
equal curvature, so ``argmin_c`` is the lower envelope of ``K`` lines in ``w`` and one
``searchsorted`` over its breakpoints assigns every value (:func:`envelope_assign`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcomp.quant.tensor import QuantizedTensor, QuantKind

#: Smallest probability kept for a centroid no value chose (it then never wins: I is huge).
_P_FLOOR = 1e-12
#: Stabiliser of a layer's relevance normalisation and of beta's search.
_TINY = 1e-12
#: beta doubling steps before ECQx gives up matching ECQ's sparsity (2**40 ~ r**beta = 0).
_BETA_STEPS = 40


def _finite(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float32)
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
    of the lines ``-2 c_k w + c_k**2 + b_k``, found once (K lines) and looked up with
    ``searchsorted`` (n log K). Centroids with an infinite penalty never win. Returns int64
    indices into ``centroids``, flattened.
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
    positions = np.searchsorted(np.asarray(breaks, dtype=np.float32), w, side="left")
    return np.asarray(hull, dtype=np.int64)[positions]


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
    with np.errstate(divide="ignore"):
        return np.where(p > 0, -np.log2(np.maximum(p, _P_FLOOR)), np.inf)


def lambda_max(values: np.ndarray, centroids: np.ndarray, info: np.ndarray, zero: int) -> float:
    """The lambda at which the outermost used centroid would empty into zero (the larger side).

    Per side: ``(w_max**2 - (w_max - c_max)**2) / (I_max - I_0)``, with ``w_max`` the most
    extreme value and ``c_max`` the outermost centroid a value chose. 0 when no side has
    a centroid cheaper to avoid than zero.
    """
    best = 0.0
    extremes = {1.0: float(np.max(values)), -1.0: float(np.min(values))}
    for side in (1.0, -1.0):
        used = [k for k in range(len(centroids)) if k != zero and np.isfinite(info[k]) and side * centroids[k] > 0]
        if not used:
            continue
        k = max(used, key=lambda i: side * centroids[i])
        w = extremes[side]
        gain = w * w - (w - centroids[k]) ** 2
        if info[k] > info[zero] and gain > 0:
            best = max(best, gain / (info[k] - info[zero]))
    return best


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
    diff = w - np.asarray(centroids, dtype=np.float32)[idx]
    np.square(diff, out=diff)
    if lam > 0:
        diff += penalty.astype(np.float32)[idx]
    return Assignment(idx, diff, zero_cost)


def layer_decay(size: int, max_size: int | None) -> float:
    """``(n_l / n_max + 0.05) / 1.05``: smaller layers get a weaker entropy constraint (1 without ``n_max``)."""
    if not max_size:
        return 1.0
    return (min(size / max_size, 1.0) + 0.05) / 1.05


def ecq_indices(values: np.ndarray, centroids: np.ndarray, zero: int, gamma: float,
                decay: float = 1.0, nearest: np.ndarray | None = None) -> Assignment:
    """ECQ of one layer onto ``centroids``, split as an :class:`Assignment`.

    Nearest-centroid pass (``nearest``, when the caller has it cheaper) -> probabilities
    (``P_0 >= 0.5``) -> ``lam = gamma * decay * lam_max`` -> entropy-constrained assignment.
    """
    c = np.asarray(centroids, dtype=np.float64)
    if nearest is None:
        nearest = envelope_assign(values, c, np.zeros_like(c))
    info = ecq_information(nearest, c.size, zero)
    lam = gamma * decay * lambda_max(values, c, info, zero) if gamma > 0 else 0.0
    return ecq_assignment(values, c, zero, lam, info)


def normalised_relevance(relevance: np.ndarray) -> np.ndarray:
    """``r = |R| / max|R|`` (all ones when the layer has no relevance at all)."""
    r = np.abs(np.asarray(relevance, dtype=np.float64)).reshape(-1)
    peak = float(r.max()) if r.size else 0.0
    return r / peak if peak > _TINY else np.ones_like(r)


def ecqx_zero_scale(assignment: Assignment, zero: int, r: np.ndarray, p: float) -> np.ndarray:
    """ECQx's per-value zero-cost factor ``2 * r**beta``, with beta tuned as in DESIGN 4.7.

    beta starts where ``mean(r)**beta = 0.5`` and is doubled (then bisected) until the
    sparsity is at least ECQ's minus ``p``; a larger beta shrinks ``r**beta`` and so lets
    more low-relevance values fall to zero.
    """
    target = float(np.mean(assignment.indices(zero) == zero)) - p

    def sparsity(beta: float) -> float:
        return float(np.mean(assignment.indices(zero, 2.0 * r**beta) == zero))

    mean_r = float(np.clip(r.mean(), _TINY, 1.0 - 1e-9))
    beta = float(np.log(0.5) / np.log(mean_r))
    if sparsity(beta) >= target:
        return 2.0 * r**beta
    low, high = beta, beta
    for _ in range(_BETA_STEPS):
        low, high = high, high * 2.0
        if sparsity(high) >= target:
            break
    for _ in range(20):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if sparsity(mid) < target else (low, mid)
    return 2.0 * r**high


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

    def grid(self, values: np.ndarray) -> tuple[float, np.ndarray, int]:
        """``(step, centroids, zero_index)`` of the grid for ``values``."""
        step = grid_step(values, self.bits)
        low, high = grid_range(self.bits)
        return step, np.arange(low, high + 1, dtype=np.float32) * np.float32(step), -low

    def assign(self, values: np.ndarray, relevance: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Grid symbols ``k`` (int32, values' shape) and the float32 step."""
        x = _finite(values)
        step, centroids, zero = self.grid(x)
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
        self, values: np.ndarray, name: str = "", relevance: np.ndarray | None = None
    ) -> QuantizedTensor:
        """ECQ-quantize ``values`` into grid symbols (see the class docstring for the kind)."""
        symbols, step = self.assign(values, relevance)
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
