"""Reading a dataset's labels without decoding its images where the dataset allows it."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Subset, TensorDataset


def labels_of(dataset: Dataset) -> np.ndarray:
    """The labels of ``dataset`` in item order, as int64.

    Uses a ``targets`` attribute (torchvision datasets, ``ImageFolder``), a ``Subset`` of
    such a dataset, or a ``TensorDataset``'s second tensor; otherwise reads every item.
    """
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].numpy().astype(np.int64).reshape(-1)
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return np.asarray(targets, dtype=np.int64).reshape(-1)
    return np.fromiter((int(dataset[i][1]) for i in range(len(dataset))), np.int64, len(dataset))
