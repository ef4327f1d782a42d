"""``cnn_bn``: a small convolutional network with BatchNorm, for partial updates (issue 19).

`cnn` has no BatchNorm on purpose; fine-tuning a pretrained model by its BatchNorm layers,
biases, filter scales and head (``partial.groups``) needs a model that has them.
"""

from __future__ import annotations

from torch import nn

from fedcomp.models.registry import register_model
from fedcomp.models.small import CNN_POOLED_SIDE, he_initialised

CNN_BN_CHANNELS = (16, 32, 64)
CNN_BN_HIDDEN = 64


def _conv_block(inputs: int, outputs: int) -> list[nn.Module]:
    """3x3 convolution, BatchNorm, ReLU. The conv keeps its bias: BatchNorm cancels it only while it
    normalises with batch statistics, and FSFL trains with the statistics frozen."""
    return [nn.Conv2d(inputs, outputs, kernel_size=3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU()]


@register_model("cnn_bn", images=True)
def cnn_bn(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Three conv-BN-ReLU blocks (16, 32, 64 filters; 2x2 max-pooling after the first two),
    pooled to 4x4, a 64-unit hidden layer and the classifier.

    About 90k parameters for 10 classes, whatever the input size (28x28 Fashion-MNIST,
    8x8 digits): the feature maps are pooled down to 4x4 before the head.
    """
    first, second, third = CNN_BN_CHANNELS
    return he_initialised(
        nn.Sequential(
            *_conv_block(input_shape[0], first),
            nn.MaxPool2d(2),
            *_conv_block(first, second),
            nn.MaxPool2d(2),
            *_conv_block(second, third),
            nn.AdaptiveMaxPool2d(CNN_POOLED_SIDE),
            nn.Flatten(),
            nn.Linear(third * CNN_POOLED_SIDE**2, CNN_BN_HIDDEN),
            nn.ReLU(),
            nn.Linear(CNN_BN_HIDDEN, num_classes),
        )
    )
