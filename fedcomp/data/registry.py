"""Resolving a dataset name to a loaded ``DatasetBundle`` through a registry of loaders.

A registry key without a colon is a whole name (``digits``); a key ending in a colon is a
prefix (``csv:``) whose loader receives the rest of the name (a path, a plugin reference).

Each loader's module is imported only when that loader runs: torchvision (1.4 s, it pulls in
``torch._dynamo``), pyarrow and scikit-learn are paid for only by the runs that read such data,
not by every process that imports this registry (a deployed ClientApp starts one per message).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fedcomp.data.bundle import DataOptions, DatasetBundle
from fedcomp.data.labels import labels_of
from fedcomp.errors import DatasetError
from fedcomp.plugins import PLUGIN_FORM, PLUGIN_PREFIX, load_plugin


@dataclass(frozen=True)
class Loader:
    """One registry entry: how the name is written (for help and errors) and the loading function."""

    form: str
    load: Callable[[str, DataOptions], DatasetBundle]
    path: bool = False  # the rest of the name is a file-system path


def _path(rest: str) -> Path:
    return Path(rest).expanduser()


def _function(module: str, name: str) -> Callable:
    """``fedcomp.data.<module>.<name>``, imported now (a loader's module is imported when it first loads)."""
    return getattr(importlib.import_module(f"fedcomp.data.{module}"), name)


def _fashion_mnist(options: DataOptions) -> DatasetBundle:
    return _function("fashion_mnist", "load_fashion_mnist")(
        _function("fashion_mnist", "fashion_mnist_dir")(_path(options.data_dir)))


def _load_plugin_dataset(rest: str, options: DataOptions) -> DatasetBundle:
    """Call the user's ``python:module:function`` and check what it returned."""
    reference = PLUGIN_PREFIX + rest
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
    example = train[0][0]
    if not (isinstance(example, torch.Tensor) and example.ndim >= 1 and example.is_floating_point()):
        raise DatasetError(
            f"{reference}: items must be (float tensor of the example's shape, label), e.g. (F,) for a table row "
            f"or (C, H, W) for an image; the first example is {getattr(example, 'dtype', type(example).__name__)} "
            f"{tuple(getattr(example, 'shape', ()))}"
        )
    for split, dataset in (("train", train), ("test", test)):
        labels = labels_of(dataset)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DatasetError(
                f"{reference}: {split} labels span {labels.min()}..{labels.max()}, outside range({num_classes})"
            )
    input_shape = tuple(int(d) for d in example.shape)
    return DatasetBundle(train, test, num_classes, input_shape, name=reference)


LOADERS: dict[str, Loader] = {
    "cifar10": Loader("cifar10", lambda _, o: _function("cifar10", "load_cifar10")(_path(o.data_dir), o.download)),
    "digits": Loader("digits", lambda _, o: _function("digits", "load_digits")(o.seed)),
    "fashion-mnist": Loader("fashion-mnist", lambda _, o: _fashion_mnist(o)),
    "folder:": Loader("folder:PATH", lambda rest, o: _function("folder", "load_folder")(_path(rest)), path=True),
    "clients:": Loader("clients:PATH", lambda rest, o: _function("clients", "load_clients")(_path(rest), o),
                       path=True),
    "csv:": Loader("csv:PATH", lambda rest, o: _function("tables", "load_table")(_path(rest), o, ".csv"), path=True),
    "parquet:": Loader("parquet:PATH", lambda rest, o: _function("tables", "load_table")(_path(rest), o, ".parquet"),
                       path=True),
    "hf:": Loader("hf:PATH", lambda rest, o: _function("tables", "load_table")(_path(rest), o, "hf"), path=True),
    PLUGIN_PREFIX: Loader(PLUGIN_FORM, _load_plugin_dataset),
}


def dataset_names() -> list[str]:
    """Every accepted dataset name: the built-ins, then the open forms (``csv:PATH``, ``python:...``)."""
    return [entry.form for entry in LOADERS.values()]


def absolute_paths(name: str) -> str:
    """``name`` with a relative path made absolute (the simulation's processes run in another folder)."""
    prefix, colon, rest = name.partition(":")
    entry = LOADERS.get(prefix + colon)
    if entry is None or not entry.path:
        return name
    return f"{prefix}{colon}{_path(rest).resolve()}"


def load_dataset(name: str, options: DataOptions | None = None, **fields) -> DatasetBundle:
    """Load the dataset called ``name`` (see ``dataset_names()``).

    ``options`` (or its fields as keywords: ``data_dir`` where on-disk datasets such as
    cifar10 live, ``download``, ``seed`` fixing any split the loader makes, and ``label``,
    ``features``, ... for tables and client folders) say what the loader needs to know.
    """
    if options is None:
        options = DataOptions(**{**fields, "data_dir": str(fields.get("data_dir", DataOptions.data_dir))})
    prefix, colon, rest = name.partition(":")
    entry = LOADERS.get(prefix + colon)
    if entry is None:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    return entry.load(rest, options)
