"""The model registry: names to builders ``(num_classes, input_shape) -> nn.Module``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from fedcomp.errors import ModelError
from fedcomp.plugins import PLUGIN_FORM, is_plugin, load_plugin

ModelBuilder = Callable[[int, tuple[int, int, int]], nn.Module]
BuilderT = TypeVar("BuilderT", bound=ModelBuilder)

BUILTIN_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[BuilderT], BuilderT]:
    """Decorator registering a builder ``(num_classes, input_shape) -> nn.Module`` as ``name``."""

    def register(builder: BuilderT) -> BuilderT:
        if name in BUILTIN_MODELS:
            raise ModelError(f"a model is already registered under the name {name!r}")
        BUILTIN_MODELS[name] = builder
        return builder

    return register


def model_names() -> list[str]:
    """The registered model names, sorted (``python:module:function`` is accepted too)."""
    return sorted(BUILTIN_MODELS)


def build_model(name: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """A freshly initialised model ``name`` for inputs of ``input_shape`` (C, H, W)."""
    if is_plugin(name):
        model = load_plugin(name, ModelError)(num_classes, tuple(input_shape))
        if not isinstance(model, nn.Module):
            raise ModelError(f"{name} returned {type(model).__name__}, expected a torch.nn.Module")
        return model
    if name not in BUILTIN_MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join([*model_names(), PLUGIN_FORM])}")
    return BUILTIN_MODELS[name](num_classes, tuple(input_shape))
