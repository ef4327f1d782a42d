"""Partial updates: which parameter groups a client trains and sends (DESIGN 4.6).

A selection is a comma-separated list of groups, resolved against the exchanged tensor
names of a model (its state-dict tensors, plus FSFL scales when scaling is on):

* ``scales``: the FSFL filter scales;
* ``bias``: the biases of Conv/Linear layers;
* ``bn``: BatchNorm weights, biases and running statistics;
* ``head``: the weight and bias of the last Linear layer;
* ``last:N``: every tensor of the last N top-level blocks that hold tensors;
* anything else is a name glob (``fnmatch``), e.g. ``features.3.*``.

An empty selection means the whole model. The tensors not selected stay frozen at the
global values and are not sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fnmatch import fnmatch

from torch import nn

from fedcomp.errors import ConfigError
from fedcomp.local.scaling import SCALED_LAYERS, is_scale

GroupRule = Callable[[nn.Module, Sequence[str], str], set[str]]


def _modules_of(model: nn.Module, kinds: tuple[type, ...]) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def _prefixed(names: Sequence[str], prefixes: list[str]) -> set[str]:
    return {n for n in names for p in prefixes if n.startswith(p + ".") or (not p and "." not in n)}


def _scales(model: nn.Module, names: Sequence[str], arg: str) -> set[str]:
    return {n for n in names if is_scale(n)}


def _bias(model: nn.Module, names: Sequence[str], arg: str) -> set[str]:
    layers = _modules_of(model, SCALED_LAYERS)
    return {n for n in names if n.endswith(".bias") and n[: -len(".bias")] in layers}


def _bn(model: nn.Module, names: Sequence[str], arg: str) -> set[str]:
    return {n for n in _prefixed(names, _modules_of(model, (nn.modules.batchnorm._BatchNorm,))) if not is_scale(n)}


def _head(model: nn.Module, names: Sequence[str], arg: str) -> set[str]:
    linear = _modules_of(model, (nn.Linear,))
    if not linear:
        raise ConfigError("partial group 'head' needs a Linear layer; this model has none")
    return {n for n in _prefixed(names, linear[-1:]) if not is_scale(n)}


def _last(model: nn.Module, names: Sequence[str], arg: str) -> set[str]:
    try:
        count = int(arg)
    except ValueError:
        raise ConfigError(f"partial group 'last:{arg}' needs a whole number of blocks") from None
    blocks = [name for name, child in model.named_children() if _prefixed(names, [name])]
    if not 0 < count <= len(blocks):
        raise ConfigError(f"partial group 'last:{count}': the model has {len(blocks)} blocks with tensors")
    return _prefixed(names, blocks[-count:])


GROUPS: dict[str, GroupRule] = {"scales": _scales, "bias": _bias, "bn": _bn, "head": _head, "last": _last}


def select(model: nn.Module, names: Sequence[str], groups: str) -> list[str]:
    """The names (in ``names`` order) that ``groups`` selects; all of them when ``groups`` is empty."""
    chosen: set[str] = set()
    items = [g.strip() for g in groups.split(",") if g.strip()]
    if not items:
        return list(names)
    for item in items:
        key, _, arg = item.partition(":")
        if key in GROUPS:
            chosen |= GROUPS[key](model, names, arg)  # a group the model lacks (bn without BatchNorm) adds nothing
        elif any(c in item for c in "*?[") or item in names:
            found = {n for n in names if fnmatch(n, item)}
            if not found:
                raise ConfigError(f"partial group {item!r} selects no tensor of this model")
            chosen |= found
        else:
            raise ConfigError(f"unknown partial group {item!r}; use {', '.join(GROUPS)} (last:N) or a name glob")
    if not chosen:
        raise ConfigError(f"partial.groups = {groups!r} selects no tensor of this model")
    return [n for n in names if n in chosen]
