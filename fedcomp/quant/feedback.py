"""Error feedback (error accumulation), usable by any sender (DESIGN 4.3).

Per sender: ``U' = U + R``, transmit ``P = Q(U')``, keep ``R = U' - deQ(P)``. Then the
sum of everything delivered plus the current residual equals the sum of the true updates.
The residual is a dict of plain float32 arrays so it can live in Flower's ``context.state``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


class ErrorFeedback:
    """The residual memory of one sender (a client upstream or the server downstream)."""

    def __init__(self) -> None:
        self.residual: dict[str, np.ndarray] = {}

    def corrected(self, update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``U + R`` for every tensor of ``update`` (R = 0 where none is held yet)."""
        out = {}
        for name, values in update.items():
            values = np.asarray(values, dtype=np.float32)
            held = self.residual.get(name)
            out[name] = values + held if held is not None else values.copy()
        return out

    def record(self, corrected: Mapping[str, np.ndarray], delivered: Mapping[str, np.ndarray]) -> None:
        """Keep ``R = U' - delivered`` for the tensors just sent."""
        for name, values in corrected.items():
            self.residual[name] = (values - delivered[name]).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The residual as plain float32 arrays (copies)."""
        return {name: r.copy() for name, r in self.residual.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore a residual saved by :meth:`state_dict`."""
        self.residual = {name: np.array(r, dtype=np.float32) for name, r in state.items()}
