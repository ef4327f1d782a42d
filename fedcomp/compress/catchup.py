"""Compact catch-up: the global model as ``W_0`` plus integers on a fixed grid (issue 18).

Every exchanged tensor has a fixed quantization step ``g`` (its grid), and every version
``t`` of the global model is

    W_t = float32(W_0 + g * N_t)          (float64 arithmetic, rounded once to float32)

with ``N_t`` an int32 array of *counts*. ``W_0`` is what every party builds from the seed,
so a model version is fully described by its counts, and the difference between any two
versions is an integer array ``N_t - N_v`` that codes losslessly. A client holding version
``v`` needs exactly one payload, ``N_t - N_v`` entropy coded, to reach ``W_t`` bit for bit;
one that holds nothing (or a version the server no longer remembers) gets ``N_t - N_0 =
N_t``; and the float32 model only when that is smaller.

Why this is small: downstream updates are sparse and recur at the same coordinates (the
largest ones, which error feedback keeps large), so the union of the supports of k
updates grows far slower than k, and summed values grow by about ``sqrt(k)``, i.e. by
half a bit per doubling of k. The coded size of k missed rounds is sublinear in k.

What this asks of the rest:

* the server's per-round update must land on the grid: :meth:`ModelGrid.snap` rounds any
  quantizer's reconstruction to multiples of ``g`` and returns what rounding left over,
  which the sender adds to its error-feedback residual (for a uniform quantizer whose step
  is ``g`` the leftover is exactly zero, so nothing changes);
* FSFL's fold ``W <- s*W, s <- 1`` is not a grid move; :meth:`ModelGrid.refold` does it on
  the grid: the folded weights are rounded to the grid, the scales return to 1 (count 0),
  and the rounding leftover goes to the residual like any other.

Pure numpy; no Flower. The server keeps a :class:`CountHistory`; both sides use
:class:`ModelGrid` to materialise versions and to code differences.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcomp.compress.codec.base import Codec
from fedcomp.compress.codec.wire import decode_payload, encode_payload
from fedcomp.compress.params import ParamManifest
from fedcomp.compress.quant.tensor import QuantizedTensor, QuantKind, qp_step
from fedcomp.errors import ConfigError, PayloadError, accepted_by

Counts = dict[str, np.ndarray]  # name -> int32 counts (or count differences) on the tensor's grid
Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class GridStep:
    """One tensor's grid: a quantization kind the wire format knows (UNIFORM_QP or UNIFORM_STEP) and its params."""

    kind: QuantKind
    params: tuple

    @classmethod
    def from_qp(cls, qp: int, qp_density: int = 2) -> "GridStep":
        return cls(QuantKind.UNIFORM_QP, (int(qp), int(qp_density)))

    @classmethod
    def from_step(cls, step: float) -> "GridStep":
        return cls(QuantKind.UNIFORM_STEP, (float(np.float32(step)),))

    @property
    def step(self) -> float:
        """The step as a float32-representable float."""
        raw = qp_step(*self.params) if self.kind == QuantKind.UNIFORM_QP else self.params[0]
        return float(np.float32(raw))


class OffGrid(ValueError):
    """Values the grid cannot hold as int32 counts: non-finite, or beyond 2**31 steps (a diverging run)."""


class ModelGrid:
    """The fixed grid of every exchanged tensor, and ``W_0``.

    Parameters
    ----------
    manifest : ParamManifest
        The exchanged tensors, the same on every party.
    base : dict
        ``W_0`` (float32), built from the seed on every party.
    steps : dict
        Each tensor's :class:`GridStep`.
    """

    def __init__(self, manifest: ParamManifest, base: Mapping[str, np.ndarray], steps: Mapping[str, GridStep]) -> None:
        missing = sorted(set(manifest.names) - set(base) | set(manifest.names) - set(steps))
        if missing:
            raise ValueError(f"the grid needs W_0 and a step for every tensor; missing {missing[:5]}")
        self.manifest = manifest
        self.base = {k: np.asarray(base[k], dtype=np.float32) for k in manifest.names}
        self.steps = {k: steps[k] for k in manifest.names}

    def zeros(self) -> Counts:
        """The counts of ``W_0``."""
        return {k: np.zeros(v.shape, np.int32) for k, v in self.base.items()}

    def materialize(self, counts: Mapping[str, np.ndarray]) -> Tensors:
        """``float32(W_0 + g * N)`` per tensor: bit-identical on every party (float64, one rounding)."""
        return {k: (self.base[k].astype(np.float64) + counts[k].astype(np.float64) * self.steps[k].step
                    ).astype(np.float32) for k in self.manifest.names}

    def snap(self, values: Mapping[str, np.ndarray]) -> tuple[Counts, Tensors]:
        """``values`` (float updates) rounded to the grid: the integer counts, and what rounding left over.

        The leftover is ``values - g * counts`` in float32; a sender with error feedback adds
        it to its residual so that nothing is lost.
        """
        counts, leftover = {}, {}
        for name, v in values.items():
            step = self.steps[name].step
            v = np.asarray(v, dtype=np.float64)
            c = np.rint(v / step)
            if not np.all(np.isfinite(c)) or np.abs(c).max(initial=0) >= 2**31 - 1:
                raise OffGrid(f"tensor {name!r} cannot go on the grid: non-finite or too large (step {step:g})")
            counts[name] = c.astype(np.int32)
            leftover[name] = (v - c * step).astype(np.float32)
        return counts, leftover

    def refold(self, counts: Mapping[str, np.ndarray], fold: Callable[[Tensors], Tensors]) -> tuple[Counts, Tensors]:
        """FSFL's fold on the grid: the counts of ``fold(materialize(counts))`` and the rounding leftover.

        ``fold`` maps a full model to a full model (``W <- s*W, s <- 1``). Tensors that ``fold``
        leaves unchanged keep their counts exactly; a scale folded back to 1 gets count 0.
        """
        current = self.materialize(counts)
        folded = fold(current)
        changed = [k for k in self.manifest.names if not np.array_equal(folded[k], current[k])]
        snapped, _ = self.snap({k: folded[k].astype(np.float64) - self.base[k] for k in changed})
        out = {**counts, **snapped}
        landed = self.materialize(out)
        return out, {k: (folded[k].astype(np.float64) - landed[k]).astype(np.float32) for k in changed}

    # ---- the catch-up payload --------------------------------------------------------

    def encode(self, diff: Mapping[str, np.ndarray], codec: Codec) -> bytes:
        """One payload of the count differences ``diff`` (all-zero tensors left out), coded losslessly."""
        tensors = [QuantizedTensor(k, np.ascontiguousarray(diff[k], dtype=np.int32), self.steps[k].kind,
                                   self.steps[k].params)
                   for k in self.manifest.names if k in diff and np.any(diff[k])]
        return encode_payload(tensors, self.manifest, codec)

    def decode(self, payload: bytes) -> Counts:
        """The count differences of a payload made by :meth:`encode` (tensors it leaves out: zero).

        Raises PayloadError if the payload is malformed or is not on this grid.
        """
        out = {}
        for t in decode_payload(payload, self.manifest).tensors:
            if GridStep(t.kind, tuple(t.params)) != self.steps[t.name]:
                raise PayloadError(f"catch-up tensor {t.name!r} is quantized as {t.kind.name}{tuple(t.params)}, "
                                   f"not on this run's grid {self.steps[t.name]}")
            out[t.name] = np.asarray(t.symbols, dtype=np.int32)
        return out


def parse_grid(text: str) -> float:
    """``down`` (0.0: the downstream quantizer's step) or ``rms:R`` (R > 0); ConfigError otherwise."""
    name, _, raw = str(text).partition(":")
    try:
        ratio = float(raw) if name == "rms" else 0.0 if name == "down" and not raw else -1.0
    except ValueError:
        ratio = -1.0
    if ratio < 0 or (name == "rms" and not (np.isfinite(ratio) and ratio > 0)):
        raise ConfigError(f"sync.grid {text!r}: give 'down' or 'rms:R' with R > 0 (e.g. rms:0.02)")
    return ratio


valid_grid = accepted_by(parse_grid)  # the setting's check


def add_counts(counts: Mapping[str, np.ndarray], diff: Mapping[str, np.ndarray]) -> Counts:
    """``counts + diff`` per tensor (``diff`` may leave tensors out); int32, overflow refused."""
    out = dict(counts)
    for name, d in diff.items():
        total = counts[name].astype(np.int64) + d
        if np.abs(total).max(initial=0) >= 2**31 - 1:
            raise ValueError(f"counts of {name!r} overflow int32")
        out[name] = total.astype(np.int32)
    return out


class CountHistory:
    """The server's counts ``N_t`` and the per-version changes of the last ``keep`` versions.

    Changes are stored sparsely (flat indices and values of the non-zero entries), so memory
    follows what moved, not the model size times the history.
    """

    def __init__(self, counts: Counts, version: int = 0, keep: int = 20) -> None:
        self.counts = counts
        self.version = version
        self.changes: deque[tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]] = deque(maxlen=keep)

    def advance(self, new_counts: Mapping[str, np.ndarray]) -> None:
        """Make ``new_counts`` version ``version + 1``, remembering the change."""
        change = {}
        for name, c in new_counts.items():
            flat = (c.astype(np.int64) - self.counts[name]).reshape(-1)
            where = np.flatnonzero(flat)
            if where.size:
                change[name] = (where.astype(np.int32), flat[where].astype(np.int32))
        self.counts = {k: np.asarray(v, dtype=np.int32) for k, v in new_counts.items()}
        self.version += 1
        self.changes.append((self.version, change))

    def remembers(self, version: int) -> bool:
        """Whether `since` knows ``version``: 0, the current one, or one whose later changes are all kept."""
        return version in (0, self.version) or (0 < version < self.version and bool(self.changes)
                                                 and self.changes[0][0] <= version + 1)

    def since(self, version: int) -> Counts | None:
        """``N_t - N_version``, or None when ``version`` is older than the remembered changes (or unknown).

        Version 0 is always known: ``N_0 = 0`` (``W_0`` is built from the seed).
        """
        if version == 0:
            return {k: v.copy() for k, v in self.counts.items()}
        if version == self.version:
            return {}
        if not self.remembers(version):
            return None
        diff: dict[str, np.ndarray] = {}
        for v, change in self.changes:
            if v <= version:
                continue
            for name, (where, values) in change.items():
                flat = diff.setdefault(name, np.zeros(self.counts[name].size, np.int64))
                flat[where] += values
        return {k: d.reshape(self.counts[k].shape).astype(np.int32) for k, d in diff.items()}

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays (counts and sparse changes) and JSON metadata, for a checkpoint."""
        arrays = {f"counts/{k}": v for k, v in self.counts.items()}
        for v, change in self.changes:
            for name, (where, values) in change.items():
                arrays[f"change/{v}/where/{name}"] = where
                arrays[f"change/{v}/values/{name}"] = values
        return arrays, {"version": self.version, "changes": [v for v, _ in self.changes], "keep": self.changes.maxlen}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> "CountHistory":
        """Rebuild what :meth:`state_dict` saved."""
        counts = {k[len("counts/"):]: np.asarray(v, np.int32) for k, v in arrays.items() if k.startswith("counts/")}
        history = cls(counts, int(meta["version"]), int(meta["keep"]))
        for v in meta["changes"]:
            prefix = f"change/{v}/where/"
            change = {k[len(prefix):]: (np.asarray(arrays[k], np.int32),
                                        np.asarray(arrays[f"change/{v}/values/{k[len(prefix):]}"], np.int32))
                      for k in arrays if k.startswith(prefix)}
            history.changes.append((int(v), change))
        return history
