"""Resolving a dataset name to a loaded ``DatasetBundle``."""

from __future__ import annotations

from pathlib import Path

import torch

from fedcomp.data.bundle import DatasetBundle
from fedcomp.data.cifar10 import load_cifar10
from fedcomp.data.digits import load_digits
from fedcomp.data.folder import load_folder
from fedcomp.data.labels import labels_of
from fedcomp.errors import DatasetError
from fedcomp.plugins import PLUGIN_FORM, is_plugin, load_plugin

FOLDER_PREFIX = "folder:"
FOLDER_FORM = "folder:PATH"

BUILTIN_NAMES = ("cifar10", "digits")


def dataset_names() -> list[str]:
    """Every accepted dataset name: the built-ins, then the ``folder:`` and ``python:`` forms."""
    return [*BUILTIN_NAMES, FOLDER_FORM, PLUGIN_FORM]


def load_dataset(name: str, data_dir: str | Path = "data", download: bool = False, seed: int = 0) -> DatasetBundle:
    """Load the dataset called ``name`` (see ``dataset_names()``).

    ``data_dir`` is where on-disk datasets (cifar10) live; ``download`` lets torchvision
    fetch a missing one there; ``seed`` fixes any split the loader makes (digits).
    """
    if name.startswith(FOLDER_PREFIX):
        return load_folder(Path(name.removeprefix(FOLDER_PREFIX)).expanduser())
    if is_plugin(name):
        return _load_plugin_dataset(name)
    if name == "digits":
        return load_digits(seed)
    if name == "cifar10":
        return load_cifar10(Path(data_dir).expanduser(), download)
    raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")


def _load_plugin_dataset(reference: str) -> DatasetBundle:
    """Call the user's ``python:module:function`` and check what it returned."""
    returned = load_plugin(reference, DatasetError)()
    expected = "expected (train_dataset, test_dataset, num_classes)"
    if not (isinstance(returned, tuple) and len(returned) == 3):
        raise DatasetError(f"{reference} returned {type(returned).__name__}; {expected}")
    train, test, num_classes = returned
    for split, dataset in (("train", train), ("test", test)):
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")) or not len(dataset):
            raise DatasetError(f"{reference}: the {split} dataset is not a non-empty Dataset; {expected}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DatasetError(f"{reference}: num_classes must be a positive int, got {num_classes!r}")
    image = train[0][0]
    if not (isinstance(image, torch.Tensor) and image.ndim == 3):
        raise DatasetError(
            f"{reference}: items must be (tensor of shape (C, H, W), label); "
            f"the first image is {getattr(image, 'shape', type(image).__name__)}"
        )
    for split, dataset in (("train", train), ("test", test)):
        labels = labels_of(dataset)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DatasetError(
                f"{reference}: {split} labels span {labels.min()}..{labels.max()}, outside range({num_classes})"
            )
    input_shape = tuple(int(d) for d in image.shape)
    return DatasetBundle(train, test, num_classes, input_shape, name=reference)
