"""The value every dataset loader returns, the options loaders read, and an in-memory dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class DatasetBundle:
    """A train/test pair ready for training.

    Items of ``train`` and ``test`` are ``(float32 tensor of shape input_shape, int label)``
    with labels in ``range(num_classes)``. ``input_shape`` is the shape of one example,
    whatever its rank: ``(F,)`` for table rows, ``(C, H, W)`` for images, ``(T, F)`` for sequences.

    ``groups``, when the data itself says which client holds which example (one folder per
    client, or a table's ``data.partition_by`` column), holds one key per training example;
    ``groups_from`` says where the keys come from, for error messages.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    groups: np.ndarray | None = None
    groups_from: str = ""


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class DataOptions:
    """What loaders may need besides the dataset's name (hashable, so loads can be cached)."""

    data_dir: str = "data"
    download: bool = False
    seed: int = 0
    label: str = "label"
    features: tuple[str, ...] = ()
    partition_by: str = ""
    test_fraction: float = 0.2
    classes: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping) -> "DataOptions":
        """The data options of a run's settings."""
        return cls(data_dir=str(config["data.dir"]), download=bool(config["data.download"]), seed=int(config["seed"]),
                   label=str(config["data.label"]), features=_names(str(config["data.features"])),
                   partition_by=str(config["data.partition_by"]), test_fraction=float(config["data.test_fraction"]),
                   classes=_names(str(config["data.classes"])))


class TensorExamples(Dataset):
    """In-memory examples ``(N, *input_shape)`` float32 with int labels, exposing ``targets``."""

    def __init__(self, examples: torch.Tensor, targets: np.ndarray) -> None:
        self.examples = examples
        self.targets = np.asarray(targets).astype(np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.examples[index], int(self.targets[index])
