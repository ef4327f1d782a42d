"""What the server accepts of a client's reply, and what it makes of the accepted ones.

A reply is usable when it holds exactly the records its kind carries, a positive whole
example count, finite tensors and an update within the norm bound; anything else raises
`ReplyError` (or the channel's `PayloadError`), which the strategy logs as that client's
failure. Any other exception is a bug of the server and is not caught.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from logging import WARNING
from typing import NamedTuple

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.supercore import log

from fedcomp.errors import PayloadError, ReplyError
from fedcomp.exchange.protocol import ARRAYS, METRICS, NUM_EXAMPLES, PARTITION_ID, TIMINGS
from fedcomp.exchange.updates import bound_update, weighted_mean

#: The errors that make a reply the client's failure (logged, the reply dropped); anything else raises.
CLIENT_FAULTS = (PayloadError, ReplyError)


class ClientResult(NamedTuple):
    """One usable reply: whose it is, how many examples stand behind it, what it carries."""

    partition: int
    examples: int
    tensors: dict[str, np.ndarray]
    metrics: MetricRecord


@dataclass(frozen=True)
class UpdateBound:
    """An L2 bound on each client's update, over all its tensors.

    Parameters
    ----------
    max_norm : float
        The bound (0: none).
    action : str
        ``clip`` (scale the update down to the bound) or ``refuse`` (ReplyError: the reply is dropped).
    """

    max_norm: float = 0.0
    action: str = "clip"

    def apply(self, tensors: dict[str, np.ndarray], base: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """``tensors`` within the bound.

        Parameters
        ----------
        tensors : dict
            A client's update, or its local model when ``base`` is given.
        base : dict or None
            The global model the local one is measured against (None: ``tensors`` is the update).

        Returns
        -------
        dict
            The bounded update, or ``base`` plus it.
        """
        if self.max_norm <= 0:
            return tensors
        if base is None:
            return bound_update(tensors, self.max_norm, self.action)
        update = bound_update({k: tensors[k] - base[k] for k in tensors}, self.max_norm, self.action)
        return {k: base[k] + update[k] for k in update}


def reply_metrics(content: RecordDict, with_arrays: bool) -> MetricRecord:
    """A reply's metrics, once it is known to hold exactly the records its kind carries (ReplyError if not)."""
    expected = {ARRAYS, METRICS} if with_arrays else {METRICS}
    if set(content.keys()) != expected:
        raise ReplyError(f"the reply holds the records {sorted(content.keys())[:5]}, expected {sorted(expected)}")
    if not isinstance(content[METRICS], MetricRecord) or (with_arrays and not isinstance(content[ARRAYS],
                                                                                          ArrayRecord)):
        raise ReplyError("the reply's records are of the wrong types (arrays: ArrayRecord, metrics: MetricRecord)")
    return content[METRICS]


def example_count(metrics: MetricRecord) -> int:
    """A reply's example count, which must be a positive whole number (ReplyError if not)."""
    value = metrics.get(NUM_EXAMPLES)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or value != int(value) or value <= 0:
        raise ReplyError(f"it reports {value!r} examples")
    return int(value)


def check_finite(tensors: dict[str, np.ndarray]) -> None:
    """ReplyError if a tensor holds NaN or inf."""
    bad = [name for name, values in tensors.items() if not np.all(np.isfinite(values))]
    if bad:
        raise ReplyError(f"non-finite values (NaN or inf) in {bad[:3]}")


def timing_summary(received: list[ClientResult]) -> dict[str, float]:
    """``<timing>_mean`` and ``<timing>_max`` over the replies that report each client timing."""
    out: dict[str, float] = {}
    for key in TIMINGS:
        values = [float(r.metrics[key]) for r in received if isinstance(r.metrics.get(key), (int, float))]
        if values:
            name = key.replace("-", "_")
            out[f"{name}_mean"], out[f"{name}_max"] = float(np.mean(values)), float(np.max(values))
    return out


def weighted_metrics(received: list[ClientResult]) -> MetricRecord:
    """Example-weighted mean of every numeric metric the replies share."""
    shared = set.intersection(*(set(r.metrics.keys()) for r in received)) - {NUM_EXAMPLES, PARTITION_ID}
    numeric = [k for k in sorted(shared) if all(isinstance(r.metrics[k], (int, float)) for r in received)]
    means = weighted_mean([{k: r.metrics[k] for k in numeric} for r in received],
                          [float(r.examples) for r in received], np.float64)
    return MetricRecord({**{k: float(means[k]) for k in numeric}, NUM_EXAMPLES: sum(r.examples for r in received)})


def log_missing(server_round: int, asked: list[int], replied: list[int], describe: Callable[[int], str]) -> int:
    """Log each node ``asked`` that sent no reply (the grid's timeout passed), as ``describe`` names it; return
    how many."""
    missing = sorted(set(asked) - set(replied))
    for node in missing:
        log(WARNING, "round %d: %s failed: timed out, no reply within server.round_timeout", server_round,
            describe(node))
    return len(missing)
