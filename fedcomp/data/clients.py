"""Each client's own data: ``clients:PATH`` holds one folder per client and an optional ``test/``.

A client folder is an image folder (``<class>/<image>`` subfolders, read with torchvision's
``make_dataset`` and PIL) or holds one ``.csv``/``.parquet`` table (see `fedcomp.data.tables`);
every folder has the same kind. Client ``i`` is the ``i``-th folder in name order.

- Classes are the union of the class names found in all client folders (integers in numeric
  order, else sorted), or ``data.classes``, so a class maps to the same label on every client.
- ``test/`` is the central test set. Without it, each client holds out a seeded share
  ``data.test_fraction`` of its examples; the held-out shares together are the test set and
  each client trains on the rest of its own folder.
- Tables are standardised with the statistics of the clients' training rows.
- A SuperNode given ``data-path`` in its node config reads that one folder instead
  (`load_client_folder`), taking the classes from ``data.classes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from fedcomp.data.bundle import DataOptions, DatasetBundle, TensorExamples
from fedcomp.data.folder import image_transform, open_as
from fedcomp.data.tables import (
    TABLE_READERS,
    Standardiser,
    class_names,
    encode_labels,
    feature_columns,
    hold_out,
    read_table,
    table_examples,
    table_labels,
)
from fedcomp.errors import DatasetError

TEST_FOLDER = "test"
LAYOUT = ("one folder per client, each holding class subfolders of images or one .csv/.parquet file, "
          "and optionally test/ in the same form")


@dataclass(frozen=True)
class Part:
    """One folder's examples before labels are encoded: ``items`` (image paths or feature rows),
    their class ``names``, and a ``signature`` that must agree across folders."""

    folder: Path
    items: np.ndarray
    names: np.ndarray
    signature: str


class FolderKind(Protocol):
    """How one kind of client folder is read and turned into a dataset."""

    def read(self, folder: Path, options: DataOptions) -> Part: ...

    def datasets(self, train: np.ndarray, labels: np.ndarray, others: list[tuple[np.ndarray, np.ndarray]],
                 source: str) -> tuple[list[Dataset], tuple[int, ...]]: ...


class ImageFiles(Dataset):
    """Image files with int labels, decoded on access; exposes ``samples`` and ``targets``."""

    def __init__(self, paths: np.ndarray, targets: np.ndarray, mode: str, transform) -> None:
        self.samples = list(zip(paths.tolist(), targets.tolist()))
        self.targets = targets.astype(np.int64)
        self.loader = partial(open_as, mode=mode)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        return self.transform(self.loader(path)), int(target)


class ImageFolders:
    """Class subfolders of images. Every image's header is read up front, so an unreadable
    file or one of another size stops the run at start-up."""

    def read(self, folder: Path, options: DataOptions) -> Part:
        subfolders = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        samples = make_dataset(str(folder), {name: i for i, name in enumerate(subfolders)},
                               extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise DatasetError(f"client folder {folder} has class subfolders ({', '.join(subfolders)}) but no "
                               f"images in them ({', '.join(IMG_EXTENSIONS)})")
        sizes: dict[tuple[int, int], str] = {}
        for path, _ in samples:
            try:
                with Image.open(path) as image:
                    sizes.setdefault(image.size, path)
            except OSError as exc:
                raise DatasetError(f"cannot read image {path}: {exc}") from exc
            if len(sizes) > 1:
                (a, first), (b, other) = sizes.items()
                raise DatasetError(f"images of different sizes in {folder}: {first} is {a[0]}x{a[1]} but {other} "
                                   f"is {b[0]}x{b[1]}; resize them to one size first")
        (size,) = sizes
        return Part(folder, np.asarray([p for p, _ in samples]), np.asarray([subfolders[i] for _, i in samples]),
                    f"{size[0]}x{size[1]} images")

    def datasets(self, train: np.ndarray, labels: np.ndarray, others: list[tuple[np.ndarray, np.ndarray]],
                 source: str) -> tuple[list[Dataset], tuple[int, ...]]:
        to_tensor, mode, input_shape = image_transform(Path(train[0]), source)
        sets = [ImageFiles(items, targets, mode, to_tensor) for items, targets in [(train, labels), *others]]
        return sets, input_shape


class TableFolders:
    """One ``.csv``/``.parquet`` file per folder; features standardised with the training rows' statistics."""

    def read(self, folder: Path, options: DataOptions) -> Part:
        (path,) = _table_files(folder)
        table = read_table(path)
        if not table.num_rows:
            raise DatasetError(f"{path} has no rows: every client needs at least one example")
        features = feature_columns(table, options)
        names = table_labels(table, options.label, path)
        return Part(folder, table_examples(table, features, path), names, f"feature columns {', '.join(features)}")

    def datasets(self, train: np.ndarray, labels: np.ndarray, others: list[tuple[np.ndarray, np.ndarray]],
                 source: str) -> tuple[list[Dataset], tuple[int, ...]]:
        scale = Standardiser.fit(train)
        sets = [TensorExamples(scale(items), targets) for items, targets in [(train, labels), *others]]
        return sets, tuple(int(d) for d in train.shape[1:])


FOLDER_KINDS: dict[str, FolderKind] = {"images": ImageFolders(), "table": TableFolders()}


def _table_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TABLE_READERS)


def folder_kind(folder: Path) -> str:
    """``images`` (class subfolders) or ``table`` (one table file); anything else is refused."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DatasetError(f"client folder {folder} is empty; expected {LAYOUT}")
    if any(p.is_dir() for p in entries):
        return "images"
    tables = _table_files(folder)
    if len(tables) > 1:
        raise DatasetError(f"client folder {folder} holds {len(tables)} table files "
                           f"({', '.join(p.name for p in tables)}); put exactly one in each client folder")
    if not tables:
        raise DatasetError(f"client folder {folder} holds neither class subfolders nor a .csv/.parquet file; "
                           f"expected {LAYOUT}")
    return "table"


def _read_all(folders: list[Path], options: DataOptions) -> tuple[FolderKind, list[Part]]:
    kinds = {folder: folder_kind(folder) for folder in folders}
    if len(set(kinds.values())) > 1:
        described = ", ".join(f"{f.name}: {k}" for f, k in kinds.items())
        raise DatasetError(f"client folders mix images and tables ({described}); use one kind for every folder")
    kind = FOLDER_KINDS[kinds[folders[0]]]
    parts = [kind.read(folder, options) for folder in folders]
    for part in parts[1:]:
        if part.signature != parts[0].signature:
            raise DatasetError(f"{part.folder} has {part.signature} but {parts[0].folder} has "
                               f"{parts[0].signature}; every folder needs the same")
    return kind, parts


def client_folders(root: Path) -> list[Path]:
    """The client folders of a ``clients:`` root in client order (name order; ``test/`` and hidden ones excluded)."""
    if not root.is_dir():
        raise DatasetError(f"clients:{root}: no such folder; expected {LAYOUT}")
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != TEST_FOLDER and not p.name.startswith("."))


def load_clients(root: Path, options: DataOptions) -> DatasetBundle:
    """All client folders of ``root`` as one training set whose ``groups`` are the client numbers."""
    folders = client_folders(root)
    if not folders:
        raise DatasetError(f"clients:{root} holds no client folders; expected {LAYOUT}")
    test_folder = root / TEST_FOLDER
    has_test = test_folder.is_dir()
    kind, parts = _read_all([*folders, test_folder] if has_test else folders, options)
    test_part = parts.pop() if has_test else None
    classes = class_names((name for part in parts for name in part.names), options)
    train_items, train_labels, groups, held_out = [], [], [], []
    for client, part in enumerate(parts):
        labels = encode_labels(part.names, classes, part.folder)
        if test_part is None:
            rows, test_rows = hold_out(labels, options.test_fraction, options.seed, f"client folder {part.folder}")
            held_out.append((part.items[test_rows], labels[test_rows]))
        else:
            rows = np.arange(len(labels))
        train_items.append(part.items[rows])
        train_labels.append(labels[rows])
        groups.append(np.full(len(rows), client, dtype=np.int64))
    if test_part is not None:
        held_out = [(test_part.items, encode_labels(test_part.names, classes, test_part.folder))]
    test = (np.concatenate([items for items, _ in held_out]), np.concatenate([labels for _, labels in held_out]))
    (train, test_set), input_shape = kind.datasets(np.concatenate(train_items), np.concatenate(train_labels),
                                                   [test], f"clients:{root}")
    return DatasetBundle(train, test_set, num_classes=len(classes), input_shape=input_shape, name=f"clients:{root}",
                         groups=np.concatenate(groups), groups_from=f"the {len(folders)} client folders of {root} "
                         f"({', '.join(f.name for f in folders)})")


def load_client_folder(folder: Path, options: DataOptions) -> DatasetBundle:
    """One client's own folder (a SuperNode's ``data-path``), every example for training.

    The classes must come from ``data.classes`` so that every node labels them alike; a table
    is standardised with this folder's own statistics (the node sees no other data).
    """
    if not options.classes:
        raise DatasetError(f"this node reads its own data-path {folder}; set data.classes=NAME,NAME,... (every "
                           "class name in label order) so that every node maps classes to the same labels")
    if not folder.is_dir():
        raise DatasetError(f"data-path {folder}: no such folder; expected a client folder: {LAYOUT}")
    kind, (part,) = _read_all([folder], options)
    labels = encode_labels(part.names, options.classes, folder)
    (train,), input_shape = kind.datasets(part.items, labels, [], f"data-path {folder}")
    return DatasetBundle(train, Subset(train, []), num_classes=len(options.classes), input_shape=input_shape,
                         name=f"data-path:{folder}", groups=np.zeros(len(labels), dtype=np.int64),
                         groups_from=f"data-path {folder}")
