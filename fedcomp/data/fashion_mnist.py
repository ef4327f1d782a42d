"""Fashion-MNIST (Xiao et al. 2017) from the original IDX files.

Debian's ``dataset-fashion-mnist`` package installs them under ``/usr/share/datasets/fashion-mnist``;
a copy in ``<data.dir>/fashion-mnist`` is preferred when one exists. Each file may be gzip-compressed
(``.gz``) or plain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedcomp.data.bundle import DatasetBundle, TensorExamples
from fedcomp.data.idx import read_idx
from fedcomp.errors import DatasetError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FOLDER = "fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
NUM_CLASSES = 10
MAX_PIXEL = 255.0


def _find(directory: Path, stem: str) -> Path | None:
    return next((p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()), None)


def fashion_mnist_dir(data_dir: Path) -> Path:
    """Where the files are read from: ``data_dir/fashion-mnist`` when it exists, else the package's folder."""
    own = data_dir / FOLDER
    return own if own.is_dir() else SYSTEM_DIR


def _split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem = FILES[split]
    paths = [_find(directory, stem) for stem in (images_stem, labels_stem)]
    missing = [stem for stem, path in zip((images_stem, labels_stem), paths) if path is None]
    if missing:
        raise DatasetError(f"fashion-mnist: {', '.join(missing)}[.gz] not found in {directory}; install it with "
                           f"`apt-get install {PACKAGE}` (or put the IDX files in <data.dir>/{FOLDER})")
    images, labels = (read_idx(path) for path in paths)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DatasetError(f"{paths[0]}: expected uint8 images of shape (N, H, W), got {images.dtype} "
                           f"{images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetError(f"{paths[1]}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"fashion-mnist {split}: {len(images)} images but {len(labels)} labels in {directory}")
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise DatasetError(f"{paths[1]}: label {labels.max()} outside range({NUM_CLASSES})")
    return images, labels


def load_fashion_mnist(directory: Path) -> DatasetBundle:
    """The 60,000 training and 10,000 test 28x28 images of ``directory``, 10 classes.

    Pixels are scaled to [0, 1], then normalised with the training split's mean and std.
    """
    train_x, train_y = _split(directory, "train")
    test_x, test_y = _split(directory, "test")
    if not len(train_y) or not len(test_y) or train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetError(f"fashion-mnist in {directory}: train images {train_x.shape} and test images "
                           f"{test_x.shape} must be non-empty and of one size")
    train_f = train_x.astype(np.float32) / MAX_PIXEL
    mean, std = float(train_f.mean()), float(train_f.std()) or 1.0

    def examples(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((images.astype(np.float32) / MAX_PIXEL - mean) / std)[:, None, :, :])

    return DatasetBundle(train=TensorExamples(examples(train_x), train_y),
                         test=TensorExamples(examples(test_x), test_y),
                         num_classes=NUM_CLASSES, input_shape=(1, *train_x.shape[1:]), name="fashion-mnist")
