"""What a sender does with an error-feedback residual that waited while it sat out rounds (issue 18).

Under partial participation a client's residual ``R`` (DESIGN 4.3) was formed the last time
it trained, ``missed + 1`` rounds ago, against a model that has since moved on. A policy
turns the saved residual into the one the next update is corrected with:

* ``keep``: use it as it is (plain error feedback);
* ``decay:B``: multiply it by ``B ** missed`` (0 < B <= 1);
* ``reset:K``: drop it once ``missed >= K`` rounds were missed.

Policies are looked up by name in :data:`STALE_POLICIES`; :func:`parse_policy` checks a
``name[:parameter]`` string once, at configuration time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

from fedcomp.errors import ConfigError, accepted_by

RESIDUAL = "residual/"  # the prefix of residual entries in a sender's state (Compressor.state_dict)

Policy = Callable[[float, int], float]  # (parameter, missed rounds) -> factor for the residual

#: name -> (factor(parameter, missed), default parameter, check of the parameter, what it must be)
STALE_POLICIES: dict[str, tuple[Policy, float, Callable[[float], bool], str]] = {
    "keep": (lambda _, missed: 1.0, 0.0, lambda p: True, ""),
    "decay": (lambda beta, missed: beta ** missed, 0.9, lambda p: 0 < p <= 1, "in (0, 1]"),
    "reset": (lambda k, missed: 0.0 if missed >= k else 1.0, 5.0, lambda p: p >= 1 and p == int(p),
              "a whole number >= 1"),
}


class StalePolicy(NamedTuple):
    """A parsed policy: its name and parameter."""

    name: str
    parameter: float

    def factor(self, missed: int) -> float:
        """What the residual is multiplied by after ``missed`` rounds without this sender."""
        return STALE_POLICIES[self.name][0](self.parameter, max(int(missed), 0))


def parse_policy(text: str) -> StalePolicy:
    """``keep``, ``decay:B`` or ``reset:K`` (the parameter is optional); ConfigError if invalid."""
    name, _, raw = str(text).partition(":")
    if name not in STALE_POLICIES:
        raise ConfigError(f"stale-residual policy {text!r}: {name!r} is not one of {', '.join(STALE_POLICIES)}")
    _, default, valid, requirement = STALE_POLICIES[name]
    try:
        parameter = float(raw) if raw else default
    except ValueError:
        raise ConfigError(f"stale-residual policy {text!r}: {raw!r} is not a number") from None
    if not valid(parameter):
        raise ConfigError(f"stale-residual policy {text!r}: the parameter must be {requirement}")
    return StalePolicy(name, parameter)


valid_policy = accepted_by(parse_policy)  # the setting's check


def age_residual(state: Mapping[str, np.ndarray], missed: int, policy: StalePolicy) -> dict[str, np.ndarray]:
    """A sender's ``state`` with its residual entries scaled by ``policy.factor(missed)`` (dropped at 0)."""
    factor = policy.factor(missed)
    if factor == 1.0:
        return dict(state)
    if factor == 0.0:
        return {k: v for k, v in state.items() if not k.startswith(RESIDUAL)}
    return {k: (np.asarray(v) * np.float32(factor)).astype(np.float32) if k.startswith(RESIDUAL) else v
            for k, v in state.items()}
