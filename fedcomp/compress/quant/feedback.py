"""Error feedback (error accumulation), usable by any sender (DESIGN 4.3).

Per sender: ``U' = U + R``, transmit ``P = Q(U')``, keep ``R = U' - deQ(P)``. Then the
sum of everything delivered plus the current residual equals the sum of the true updates.
The residual lives where the update does (float32 tensors, on the GPU that trained a
model); a residual loaded from the host (numpy) is moved to the update's device when used.
"""

from __future__ import annotations

from typing import Mapping

import torch

from fedcomp.compress.quant.arrays import Array, as_tensor, at_rest


class ErrorFeedback:
    """The residual memory of one sender (a client upstream or the server downstream)."""

    def __init__(self) -> None:
        self.residual: dict[str, Array] = {}

    def corrected(self, update: Mapping[str, Array]) -> dict[str, torch.Tensor]:
        """``U + R`` for every tensor of ``update`` (R = 0 where none is held yet), on the update's device."""
        out = {}
        for name, values in update.items():
            values = as_tensor(values)
            held = self.residual.get(name)
            out[name] = values + as_tensor(held, values.device) if held is not None else values.clone()
        return out

    def record(self, corrected: Mapping[str, torch.Tensor], delivered: Mapping[str, Array]) -> None:
        """Keep ``R = U' - delivered`` for the tensors just sent."""
        for name, values in corrected.items():
            self.residual[name] = values - as_tensor(delivered[name], values.device)

    def state_dict(self) -> dict[str, Array]:
        """The residual: float32 numpy copies on the host, tensors on an accelerator."""
        return {name: at_rest(as_tensor(r)) for name, r in self.residual.items()}

    def load_state_dict(self, state: Mapping[str, Array]) -> None:
        """Restore a residual saved by :meth:`state_dict` (numpy arrays or tensors)."""
        self.residual = {name: as_tensor(r) for name, r in state.items()}
