"""Transfer accounting: one record per message, per direction, per client.

Every figure a run reports (per round, per client, totals) is a sum over these records;
nothing is estimated. A record holds three sizes of the same message:

* ``payload_bytes``: the bytes of model content it carries (coded payload, or the raw
  tensor bytes of a dense record);
* ``message_bytes``: the bytes Flower actually serialises for the whole message
  (content, records, metadata);
* ``dense_bytes``: the float32 bytes of the same tensors sent uncompressed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Literal

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class TransferRecord:
    """The sizes of one message."""

    round: int
    direction: Direction
    client: int
    kind: str  # "train", "evaluate", "setup"
    payload_bytes: int
    message_bytes: int
    dense_bytes: int


SIZE_FIELDS = ("payload_bytes", "message_bytes", "dense_bytes")


class TransferMeter:
    """Collects `TransferRecord`s and sums them by round, direction and client."""

    def __init__(self) -> None:
        self.records: list[TransferRecord] = []

    def record(self, round: int, direction: Direction, client: int, kind: str,
               payload_bytes: int, message_bytes: int, dense_bytes: int) -> TransferRecord:
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        rec = TransferRecord(round, direction, client, kind, int(payload_bytes), int(message_bytes), int(dense_bytes))
        self.records.append(rec)
        return rec

    def rename(self, round: int, old: int, new: int) -> None:
        """Give ``round``'s records of client ``old`` the id ``new`` (the latest round's records only: O(them))."""
        for i in range(len(self.records) - 1, -1, -1):
            rec = self.records[i]
            if rec.round != round:
                break
            if rec.client == old:
                self.records[i] = replace(rec, client=new)

    def select(self, round: int | None = None, direction: Direction | None = None,
               client: int | None = None) -> list[TransferRecord]:
        return [r for r in self.records
                if (round is None or r.round == round)
                and (direction is None or r.direction == direction)
                and (client is None or r.client == client)]

    @staticmethod
    def total(records: Iterable[TransferRecord], field: str = "payload_bytes") -> int:
        return sum(getattr(r, field) for r in records)

    def totals(self, round: int | None = None, upto: int | None = None) -> dict[str, int]:
        """``{bytes_up, bytes_down, message_bytes_up, ..., dense_bytes_down}`` for one round or rounds <= upto."""
        recs = [r for r in self.records
                if (round is None or r.round == round) and (upto is None or r.round <= upto)]
        out: dict[str, int] = {}
        for direction in ("up", "down"):
            chosen = [r for r in recs if r.direction == direction]
            out[f"bytes_{direction}"] = self.total(chosen, "payload_bytes")
            out[f"message_bytes_{direction}"] = self.total(chosen, "message_bytes")
            out[f"dense_bytes_{direction}"] = self.total(chosen, "dense_bytes")
        return out

    def per_client(self, round: int) -> list[dict[str, int]]:
        """Each client's bytes in each direction in ``round``, sorted by client id."""
        sums: dict[int, dict[str, int]] = defaultdict(lambda: {"bytes_up": 0, "bytes_down": 0,
                                                               "message_bytes_up": 0, "message_bytes_down": 0})
        for r in self.select(round=round):
            sums[r.client][f"bytes_{r.direction}"] += r.payload_bytes
            sums[r.client][f"message_bytes_{r.direction}"] += r.message_bytes
        return [{"client": c, **v} for c, v in sorted(sums.items())]

    def as_rows(self) -> list[dict]:
        return [asdict(r) for r in self.records]
