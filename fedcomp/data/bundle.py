"""The value every dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass(frozen=True)
class DatasetBundle:
    """A train/test pair ready for training.

    Items of ``train`` and ``test`` are ``(float32 tensor of shape input_shape, int label)``
    with labels in ``range(num_classes)``.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    name: str
