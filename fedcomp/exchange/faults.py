"""Failure injection: clients that fail, send corrupted payloads or are slow (for tests and demos).

Each client draws its faults for a round from a generator seeded by (seed, round,
partition), so a run with faults repeats exactly. A failing client raises before it
touches its state. The ClientApp applies them; the server
must log each failure once and complete the round with the other clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

from fedcomp.exchange.channels import PAYLOAD_STYPE
from fedcomp.settings import NON_NEGATIVE, PROBABILITY, build, setting


class InjectedFault(RuntimeError):
    """A failure the run's ``faults.*`` settings asked for."""


@dataclass(frozen=True)
class FaultPlan:
    """Per-round probabilities of each fault, and how long a slow client waits."""

    failure_rate: float = setting("faults.client_failure_rate", 0.0,
                                  "probability that a client fails in a round (injected)", check=PROBABILITY)
    corrupt_rate: float = setting("faults.corrupt_payload_rate", 0.0,
                                  "probability that a client's reply payload is corrupted (injected)",
                                  check=PROBABILITY)
    slow_rate: float = setting("faults.slow_client_rate", 0.0, "probability that a client is slow in a round "
                               "(injected)", check=PROBABILITY)
    slow_seconds: float = setting("faults.slow_seconds", 1.0, "how long an injected slow client waits",
                                  check=NON_NEGATIVE)
    seed: int = 0

    @classmethod
    def from_config(cls, config: Mapping) -> "FaultPlan":
        return build(cls, config, seed=config["seed"])

    def draw(self, server_round: int, partition: int) -> dict[str, bool]:
        """Which faults client ``partition`` suffers in ``server_round`` (fail, corrupt, slow)."""
        rng = np.random.default_rng([self.seed, server_round, partition, 0xFA17])
        fail, corrupt, slow = rng.random(3)
        return {"fail": bool(fail < self.failure_rate), "corrupt": bool(corrupt < self.corrupt_rate),
                "slow": bool(slow < self.slow_rate)}


def corrupt(record: ArrayRecord, server_round: int, partition: int) -> ArrayRecord:
    """``record`` with its first entry damaged: one byte flipped in a coded payload (its CRC
    catches it), or a dense tensor's bytes cut short (dense records carry no checksum)."""
    name = next(iter(record.keys()))
    array = record[name]
    data = bytearray(array.data)
    if array.stype == PAYLOAD_STYPE:
        at = int(np.random.default_rng([server_round, partition]).integers(len(data)))
        data[at] ^= 0x5A
    else:
        data = data[: len(data) // 2]
    damaged = Array(dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, data=bytes(data))
    return ArrayRecord({**{k: record[k] for k in record.keys()}, name: damaged})
