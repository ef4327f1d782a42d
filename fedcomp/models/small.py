"""Small models for small inputs: ``cnn`` (the digits default) and ``mlp``."""

from __future__ import annotations

import math

from torch import nn

from fedcomp.models.registry import register_model

CNN_POOLED_SIDE = 4  # feature maps are pooled to 4x4 before the head, whatever the input size


@register_model("cnn")
def cnn(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Two 3x3 conv layers (16, 32 filters, same padding), 2x2 max-pooling, a 64-unit head.

    About 38k parameters for 1x8x8 inputs and 10 classes; larger inputs are pooled down to
    4x4 so the size stays the same. No BatchNorm on purpose: averaging BN running statistics
    in FedAvg confounds compression experiments, and filter-wise scaling (FSFL) acts on the
    conv filters directly, which a following BN would cancel.
    """
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveMaxPool2d(CNN_POOLED_SIDE),
        nn.Flatten(),
        nn.Linear(32 * CNN_POOLED_SIDE**2, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


@register_model("mlp")
def mlp(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Fully connected 64-64 ReLU network on the flattened image (the FantastIC4 target)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
