"""Models: a registry of builders ``(num_classes, input_shape) -> nn.Module``.

Importing this package registers the built-in models.
"""

from fedcomp.models import batchnorm, resnet_cifar, small, torchvision_adapted  # noqa: F401  (registration)
from fedcomp.models.registry import build_model, model_names, register_model

__all__ = ["build_model", "model_names", "register_model"]
