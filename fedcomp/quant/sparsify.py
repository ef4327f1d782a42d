"""Sparsifiers: zero most entries of an update before quantization (DESIGN 4.2).

Each sparsifier maps an update dict ``name -> float32 array`` to a new dict with the same
keys and shapes. Tensors with fewer than two dimensions (biases, BatchNorm, filter scales)
pass through untouched unless ``include_1d`` is set.
"""

from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np

Update = Mapping[str, np.ndarray]


class Sparsifier(Protocol):
    """Zeroes entries of an update; ``rng`` drives the randomised ones."""

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]: ...


def _eligible(values: np.ndarray, include_1d: bool) -> bool:
    return values.size > 0 and (include_1d or values.ndim >= 2)


def keep_count(fraction: float, size: int) -> int:
    """How many of ``size`` entries a fraction keeps: at least one of a non-empty tensor."""
    return 0 if size == 0 else min(size, max(1, int(round(fraction * size))))


def _keep_largest(values: np.ndarray, k: int) -> np.ndarray:
    flat = values.reshape(-1)
    out = np.zeros_like(flat)
    if k > 0:
        idx = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
        out[idx] = flat[idx]
    return out.reshape(values.shape)


def _check_fraction(fraction: float) -> float:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return float(fraction)


class TopK:
    """Keep the ``fraction`` largest magnitudes, per tensor or over all eligible tensors."""

    def __init__(self, fraction: float, scope: str = "tensor", include_1d: bool = False) -> None:
        if scope not in ("tensor", "global"):
            raise ValueError(f"scope must be 'tensor' or 'global', got {scope!r}")
        self.fraction, self.scope, self.include_1d = _check_fraction(fraction), scope, include_1d

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Top-k by magnitude; ties broken arbitrarily but deterministically."""
        eligible = [k for k, v in update.items() if _eligible(v, self.include_1d)]
        out = {k: np.asarray(v, dtype=np.float32) for k, v in update.items()}
        if self.scope == "tensor":
            for k in eligible:
                out[k] = _keep_largest(out[k], keep_count(self.fraction, out[k].size))
            return out
        if not eligible:
            return out
        joined = np.concatenate([out[k].reshape(-1) for k in eligible])
        kept = _keep_largest(joined, keep_count(self.fraction, joined.size))
        offset = 0
        for k in eligible:
            n = out[k].size
            out[k] = kept[offset : offset + n].reshape(out[k].shape)
            offset += n
        return out


class RandomK:
    """Keep a uniformly random ``fraction`` of each eligible tensor's entries."""

    def __init__(self, fraction: float, include_1d: bool = False) -> None:
        self.fraction, self.include_1d = _check_fraction(fraction), include_1d

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Random-k; ``rng`` is required so that runs are reproducible."""
        if rng is None:
            raise ValueError("RandomK needs an rng")
        out = {k: np.asarray(v, dtype=np.float32) for k, v in update.items()}
        for k, v in out.items():
            if _eligible(v, self.include_1d):
                flat = v.reshape(-1)
                keep = rng.choice(flat.size, keep_count(self.fraction, flat.size), replace=False)
                sparse = np.zeros_like(flat)
                sparse[keep] = flat[keep]
                out[k] = sparse.reshape(v.shape)
        return out


class StatisticsThreshold:
    """NNCodec's statistics-based sparsification with a target sparsity.

    Zero every ``|x| <= max(|mu - delta*sigma|, |mu + delta*sigma|)`` (= ``|mu| + delta*sigma``
    for ``delta >= 0``), never a threshold below ``min_step / 2``, with ``delta`` the
    smallest value that reaches ``target_sparsity``. NNCodec raises delta in small
    increments until the target is met; here the same smallest delta is solved for
    directly from the quantile of ``|x|``.
    """

    def __init__(self, target_sparsity: float, min_step: float = 0.0, include_1d: bool = False) -> None:
        if not 0.0 <= target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
        self.target, self.min_step, self.include_1d = float(target_sparsity), float(min_step), include_1d

    def threshold(self, values: np.ndarray) -> float:
        """The magnitude at or below which this tensor's entries are zeroed.

        The smallest ``|mu| + delta * sigma`` (delta >= 0) that zeroes the target fraction
        is ``max(|mu|, q)`` with ``q`` the target quantile of ``|x|`` (taken at or above
        the target, so ties cannot leave the sparsity short of it).
        """
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        needed = float(np.quantile(np.abs(x), self.target, method="higher")) if self.target > 0 else 0.0
        return max(abs(float(x.mean())), needed, self.min_step / 2)

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Zero the entries below each eligible tensor's statistics threshold."""
        out = {k: np.asarray(v, dtype=np.float32) for k, v in update.items()}
        for k, v in out.items():
            if _eligible(v, self.include_1d):
                out[k] = np.where(np.abs(v) <= self.threshold(v), np.float32(0), v)
        return out


class StructuredFilters:
    """Zero whole output filters (axis 0) whose mean |update| is below ``gain`` x the mean."""

    def __init__(self, gain: float = 1.0, include_1d: bool = False) -> None:
        if gain < 0:
            raise ValueError(f"gain must be >= 0, got {gain}")
        self.gain, self.include_1d = float(gain), include_1d

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Filter-wise zeroing; a 1-D tensor (if included) treats each entry as a filter."""
        out = {k: np.asarray(v, dtype=np.float32) for k, v in update.items()}
        for k, v in out.items():
            if _eligible(v, self.include_1d):
                per_filter = np.abs(v.reshape(v.shape[0], -1)).mean(axis=1)
                weak = per_filter < self.gain * per_filter.mean()
                sparse = v.copy()
                sparse[weak] = 0
                out[k] = sparse
        return out


class Chained:
    """Several sparsifiers applied in turn (NNCodec's recipe: structured filters, then a threshold)."""

    def __init__(self, *steps: Sparsifier) -> None:
        self.steps = steps

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        out = dict(update)
        for step in self.steps:
            out = step.sparsify(out, rng)
        return out
