"""The model registry: names to builders ``(num_classes, input_shape) -> nn.Module``.

``input_shape`` is the shape of one example: ``(C, H, W)`` for images, ``(F,)`` for table
rows, ``(T, F)`` for sequences. A model registered with ``images=True`` accepts only images,
and `build_model` refuses any other shape with one clear error before anything starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from fedcomp.errors import ModelError
from fedcomp.plugins import PLUGIN_FORM, is_plugin, load_plugin

ModelBuilder = Callable[[int, tuple[int, ...]], nn.Module]
BuilderT = TypeVar("BuilderT", bound=ModelBuilder)

BUILTIN_MODELS: dict[str, ModelBuilder] = {}
IMAGE_MODELS: set[str] = set()  # the registered models that need (C, H, W) inputs


def register_model(name: str, images: bool = False) -> Callable[[BuilderT], BuilderT]:
    """Decorator registering a builder ``(num_classes, input_shape) -> nn.Module`` as ``name``;
    ``images``: the model takes only ``(C, H, W)`` images."""

    def register(builder: BuilderT) -> BuilderT:
        if name in BUILTIN_MODELS:
            raise ModelError(f"a model is already registered under the name {name!r}")
        BUILTIN_MODELS[name] = builder
        if images:
            IMAGE_MODELS.add(name)
        return builder

    return register


def model_names() -> list[str]:
    """The registered model names, sorted (``python:module:function`` is accepted too)."""
    return sorted(BUILTIN_MODELS)


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A freshly initialised model ``name`` for examples of shape ``input_shape``."""
    if is_plugin(name):
        model = load_plugin(name, ModelError)(num_classes, tuple(input_shape))
        if not isinstance(model, nn.Module):
            raise ModelError(f"{name} returned {type(model).__name__}, expected a torch.nn.Module")
        return model
    if name not in BUILTIN_MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join([*model_names(), PLUGIN_FORM])}")
    if name in IMAGE_MODELS and len(input_shape) != 3:
        raise ModelError(f"model {name!r} needs images of shape (C, H, W), but this dataset's examples have shape "
                         f"{tuple(input_shape)}; use model=mlp (it flattens any shape) or a python: model")
    return BUILTIN_MODELS[name](num_classes, tuple(input_shape))
