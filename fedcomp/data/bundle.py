"""The value every dataset loader returns, the options loaders read, and an in-memory dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from fedcomp.settings import OPEN_UNIT_INTERVAL, build, setting


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

    data_dir: str = setting("data.dir", "data", "directory holding local dataset copies (cifar10 etc.)")
    download: bool = setting("data.download", False, "let torchvision download a missing dataset (needs a network)")
    seed: int = 0
    # your own data: tables and one folder per client (README "Bring your own data")
    label: str = setting("data.label", "label", "label column of a csv:/parquet:/hf: table or of each client's table")
    features: tuple[str, ...] = setting("data.features", "", "feature columns, comma-separated; empty means every "
                                        "column but the label and data.partition_by", parse=_names)
    partition_by: str = setting("data.partition_by", "", "column whose values are the clients of partition=natural "
                                "(a writer, a hospital, a device id)")
    test_fraction: float = setting("data.test_fraction", 0.2, "share of a table, or of each client folder without "
                                   "test/, held out for central evaluation", check=OPEN_UNIT_INTERVAL)
    classes: tuple[str, ...] = setting("data.classes", "", "class names in label order, comma-separated; empty means "
                                       "the sorted classes found in the data (needed when a node reads its own "
                                       "data-path)", parse=_names)

    @classmethod
    def from_config(cls, config: Mapping) -> "DataOptions":
        """The data options of a run's settings."""
        return build(cls, config, seed=config["seed"])


class TensorExamples(Dataset):
    """In-memory examples ``(N, *input_shape)`` float32 with int labels, exposing ``targets``."""

    def __init__(self, examples: torch.Tensor, targets: np.ndarray) -> None:
        self.examples = examples
        self.targets = np.asarray(targets).astype(np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.examples[index], int(self.targets[index])
