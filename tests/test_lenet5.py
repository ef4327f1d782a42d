"""The LeNet-5-sized CNN of the Fashion-MNIST workload."""

from __future__ import annotations

import pytest
import torch

from fedcomp.errors import ModelError
from fedcomp.models import build_model


def test_lenet5_parameters_and_output_shape() -> None:
    model = build_model("lenet5", 10, (1, 28, 28))
    # conv 1->6 5x5, conv 6->16 5x5, FC 400->120->84->10, with biases
    assert sum(p.numel() for p in model.parameters()) == (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (
        120 * 84 + 84) + (84 * 10 + 10) == 61_706
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_lenet5_keeps_its_size_on_other_images_and_refuses_tiny_ones() -> None:
    model = build_model("lenet5", 4, (3, 32, 32))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert sum(p.numel() for p in model.parameters()) == 61_706 + 2 * 6 * 25 - 6 * 84 - 6  # 3 channels, 4 classes
    assert build_model("lenet5", 10, (1, 8, 8))(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(ModelError, match="at least 4x4"):
        build_model("lenet5", 10, (1, 3, 3))
