"""Sparsifiers: zero most entries of an update before quantization (DESIGN 4.2).

Each sparsifier maps an update dict ``name -> float32 array`` to a new dict with the same
keys and shapes. Tensors with fewer than two dimensions (biases, BatchNorm, filter scales)
pass through untouched unless ``include_1d`` is set.

The values may be numpy arrays or torch tensors on any device; each comes back in its own
form, sparsified where it lives (:mod:`fedcomp.compress.quant.arrays`). Ties are broken the same way
everywhere (of equal magnitudes, the lower index is kept), so every device and both forms
give the same result.
"""

from __future__ import annotations

import math
from typing import Mapping, Protocol

import numpy as np
import torch

from fedcomp.compress.quant.arrays import Array, as_tensor, exact_sum, kth_smallest, like

Update = Mapping[str, Array]


class Sparsifier(Protocol):
    """Zeroes entries of an update; ``rng`` drives the randomised ones."""

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, Array]: ...


def _eligible(values: torch.Tensor, include_1d: bool) -> bool:
    return values.numel() > 0 and (include_1d or values.ndim >= 2)


def _tensors(update: Update) -> dict[str, torch.Tensor]:
    return {k: as_tensor(v) for k, v in update.items()}


def _back(out: Mapping[str, torch.Tensor], update: Update) -> dict[str, Array]:
    return {k: like(v, update[k]) for k, v in out.items()}


def keep_count(fraction: float, size: int) -> int:
    """How many of ``size`` entries a fraction keeps: at least one of a non-empty tensor."""
    return 0 if size == 0 else min(size, max(1, int(round(fraction * size))))


def keep_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """``values`` with all but its ``k`` largest magnitudes zeroed; of equal magnitudes the lower
    (flat) index is kept, so the result does not depend on the device."""
    flat = values.reshape(-1)
    if k >= flat.numel():
        return values.clone()
    if k <= 0:
        return torch.zeros_like(values)
    magnitude = flat.abs()
    kth = kth_smallest(magnitude, flat.numel() - k + 1)  # the k-th largest magnitude
    keep = magnitude >= kth
    extra = int(keep.sum()) - k  # entries equal to the k-th largest beyond k: the last ones go
    if extra:
        ties = torch.nonzero(magnitude == kth).reshape(-1)
        keep[ties[ties.numel() - extra:]] = False
    return torch.where(keep, flat, 0.0).reshape(values.shape)


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

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, Array]:
        """Top-k by magnitude; of equal magnitudes the lower index wins."""
        out = _tensors(update)
        eligible = [k for k, v in out.items() if _eligible(v, self.include_1d)]
        if self.scope == "tensor":
            for k in eligible:
                out[k] = keep_largest(out[k], keep_count(self.fraction, out[k].numel()))
            return _back(out, update)
        if not eligible:
            return _back(out, update)
        joined = torch.cat([out[k].reshape(-1) for k in eligible])
        kept = keep_largest(joined, keep_count(self.fraction, joined.numel()))
        offset = 0
        for k in eligible:
            n = out[k].numel()
            out[k] = kept[offset : offset + n].reshape(out[k].shape)
            offset += n
        return _back(out, update)


class RandomK:
    """Keep a uniformly random ``fraction`` of each eligible tensor's entries."""

    def __init__(self, fraction: float, include_1d: bool = False) -> None:
        self.fraction, self.include_1d = _check_fraction(fraction), include_1d

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, Array]:
        """Random-k; ``rng`` is required so that runs are reproducible (the positions are drawn
        on the host, the same whatever the device)."""
        if rng is None:
            raise ValueError("RandomK needs an rng")
        out = _tensors(update)
        for k, v in out.items():
            if _eligible(v, self.include_1d):
                flat = v.reshape(-1)
                keep = torch.from_numpy(rng.choice(flat.numel(), keep_count(self.fraction, flat.numel()),
                                                   replace=False)).to(flat.device)
                sparse = torch.zeros_like(flat)
                sparse[keep] = flat[keep]
                out[k] = sparse.reshape(v.shape)
        return _back(out, update)


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

    def threshold(self, values: Array) -> float:
        """The magnitude at or below which this tensor's entries are zeroed (compared in float32).

        The smallest ``|mu| + delta * sigma`` (delta >= 0) that zeroes the target fraction
        is ``max(|mu|, q)`` with ``q`` the target quantile of ``|x|`` (numpy's "higher"
        quantile: taken at or above the target, so ties cannot leave the sparsity short of it).
        """
        x = as_tensor(values).reshape(-1)
        needed = 0.0
        if self.target > 0:
            needed = float(kth_smallest(x.abs(), math.ceil(self.target * (x.numel() - 1)) + 1))
        mean = float(exact_sum(x)) / x.numel()
        return max(abs(mean), needed, self.min_step / 2)

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, Array]:
        """Zero the entries below each eligible tensor's statistics threshold."""
        out = _tensors(update)
        for k, v in out.items():
            if _eligible(v, self.include_1d):
                threshold = float(np.float32(self.threshold(v)))
                out[k] = torch.where(v.abs() <= threshold, 0.0, v)
        return _back(out, update)


class StructuredFilters:
    """Zero whole output filters (axis 0) whose mean |update| is below ``gain`` x the mean."""

    def __init__(self, gain: float = 1.0, include_1d: bool = False) -> None:
        if gain < 0:
            raise ValueError(f"gain must be >= 0, got {gain}")
        self.gain, self.include_1d = float(gain), include_1d

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, Array]:
        """Filter-wise zeroing; a 1-D tensor (if included) treats each entry as a filter."""
        out = _tensors(update)
        for k, v in out.items():
            if _eligible(v, self.include_1d):
                rows = v.reshape(v.shape[0], -1)
                per_filter = exact_sum(rows.abs(), dim=1) / rows.shape[1]
                weak = per_filter < self.gain * (float(exact_sum(per_filter)) / per_filter.numel())
                out[k] = torch.where(weak.reshape((-1,) + (1,) * (v.ndim - 1)), 0.0, v)
        return _back(out, update)


class Chained:
    """Several sparsifiers applied in turn (NNCodec's recipe: structured filters, then a threshold)."""

    def __init__(self, *steps: Sparsifier) -> None:
        self.steps = steps

    def sparsify(self, update: Update, rng: np.random.Generator | None = None) -> dict[str, Array]:
        out = dict(update)
        for step in self.steps:
            out = step.sparsify(out, rng)
        return out
