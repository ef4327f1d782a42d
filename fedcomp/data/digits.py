"""The embedded default dataset: scikit-learn's 8x8 handwritten digits."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits as sklearn_load_digits
from sklearn.model_selection import train_test_split

from fedcomp.data.bundle import DatasetBundle, TensorExamples

TEST_FRACTION = 0.25
MAX_PIXEL = 16.0  # load_digits pixel values are counts in 0..16


def load_digits(seed: int = 0) -> DatasetBundle:
    """1797 greyscale 8x8 digits, 10 classes, a stratified 75/25 split fixed by ``seed``.

    Pixels are scaled to [0, 1], then normalised with the training split's mean and std.
    """
    digits = sklearn_load_digits()
    images = (digits.images / MAX_PIXEL).astype(np.float32)[:, None, :, :]
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=TEST_FRACTION, stratify=digits.target, random_state=seed
    )
    mean, std = train_x.mean(), train_x.std()
    return DatasetBundle(
        train=TensorExamples(torch.from_numpy((train_x - mean) / std), train_y),
        test=TensorExamples(torch.from_numpy((test_x - mean) / std), test_y),
        num_classes=10,
        input_shape=(1, 8, 8),
        name="digits",
    )
