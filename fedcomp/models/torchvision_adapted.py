"""torchvision's ImageNet models adapted to small inputs (8x8 to 32x32), never pretrained.

torchvision is imported by the builders, not here: importing it costs 1.4 s (it pulls in
``torch._dynamo`` through ``torchvision.ops``), which every process importing the model
registry would pay, whatever model it builds.

Each gets a stride-1 3x3 stem taking the dataset's channel count, loses the downsampling
that would shrink a small image below 1x1, and a classifier sized to ``num_classes``.
"""

from __future__ import annotations

import math

from torch import nn

from fedcomp.models.registry import register_model


@register_model("resnet18", images=True)
def resnet18(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pooling (the usual CIFAR variant)."""
    from torchvision import models

    model = models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model("mobilenet_v2", images=True)
def mobilenet_v2(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """MobileNetV2 with stride 1 in the stem and in the first 24-channel stage (32x32 -> 4x4)."""
    # torchvision's default setting (expansion t, channels c, repeats n, stride s) with the
    # second stage's stride lowered from 2 to 1.
    setting = [
        [1, 16, 1, 1],
        [6, 24, 2, 1],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    from torchvision import models

    model = models.mobilenet_v2(weights=None, num_classes=num_classes, inverted_residual_setting=setting)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(input_shape[0], stem.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    return model


@register_model("vgg11_bn", images=True)
def vgg11_bn(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """VGG-11 with BatchNorm, a linear 512 -> num_classes head, and only as many of its five
    2x2 max-pools as the input side allows (all five on 32x32, three on 8x8)."""
    from torchvision import models

    model = models.vgg11_bn(weights=None)
    first = model.features[0]
    model.features[0] = nn.Conv2d(input_shape[0], first.out_channels, kernel_size=3, padding=1)
    pools_allowed = int(math.log2(min(input_shape[1:])))
    pool_positions = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    for position in pool_positions[pools_allowed:]:
        model.features[position] = nn.Identity()
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(512, num_classes)
    return model
