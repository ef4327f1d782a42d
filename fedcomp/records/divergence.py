"""When a run stops as diverged, and when a finished run says it did not learn (issue 18).

A run stops with `DivergedError`, naming the round, when every sampled client failed for
``server.max_failed_rounds`` rounds in a row (the strategy counts them), or when the central test loss of
the new global model is non-finite or more than ``server.max_loss_ratio`` times the initial model's
(:meth:`DivergenceRules.check_loss`; a finite model can still have exploded). A run that finishes at
chance accuracy is a result, not a divergence (a hard non-iid split can keep every scheme there): it
finishes, and its summary says so (:func:`chance_warning`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fedcomp.errors import DivergedError
from fedcomp.settings import NON_NEGATIVE, build, setting

CHANCE_MARGIN = 0.02  # a final accuracy up to 1/num_classes plus this is chance level


@dataclass(frozen=True)
class DivergenceRules:
    """The server's rules for stopping a run as diverged."""

    max_failed_rounds: int = setting("server.max_failed_rounds", 3, "rounds in a row in which every sampled client "
                                     "fails before the run stops as diverged (0: never stop)", check=NON_NEGATIVE)
    max_loss_ratio: float = setting("server.max_loss_ratio", 1000.0, "the run stops as diverged when the central "
                                    "test loss of a round's global model is more than this many times the initial "
                                    "model's (round 0) loss (0: never); a non-finite loss always stops it",
                                    check=NON_NEGATIVE)

    @classmethod
    def from_config(cls, config: Mapping) -> "DivergenceRules":
        return build(cls, config)

    def check_loss(self, server_round: int, loss: float, initial_loss: float | None) -> None:
        """Raise DivergedError naming ``server_round`` if its central test ``loss`` is non-finite, or more than
        ``max_loss_ratio`` times ``initial_loss`` (the round-0 loss; None when unknown: then only the first test).

        Parameters
        ----------
        server_round : int
            The round whose global model was evaluated.
        loss, initial_loss : float
            The central test loss of that model and of the initial one.
        """
        if not math.isfinite(loss):
            raise DivergedError(f"the run diverged in round {server_round}: the central test loss is {loss}",
                                server_round)
        if self.max_loss_ratio and initial_loss is not None and loss > self.max_loss_ratio * initial_loss:
            raise DivergedError(f"the run diverged in round {server_round}: the central test loss {loss:.4g} is more "
                                f"than {self.max_loss_ratio:g} times the initial model's {initial_loss:.4g} "
                                "(server.max_loss_ratio)", server_round)


def chance_warning(accuracy: float | None, num_classes: int) -> str | None:
    """The warning a finished run's summary carries when its final ``accuracy`` is chance level
    (at most ``1 / num_classes + CHANCE_MARGIN``); None otherwise."""
    if accuracy is None or num_classes < 2 or accuracy > 1 / num_classes + CHANCE_MARGIN:
        return None
    return (f"final accuracy {accuracy:.3f} is chance level for {num_classes} classes: the model did not learn")
