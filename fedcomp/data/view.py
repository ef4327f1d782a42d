"""A view of any loaded dataset: a subset of its classes, relabelled, and images resized.

Transfer workloads (issue 19) need the same data set split by class (Fashion-MNIST classes
0-4 as the source, 5-9 as the target) and images brought to a common size (8x8 digits
resized to Fashion-MNIST's 28x28). `DataView` does both for every loader in the registry,
set by ``data.subset`` and ``data.resize``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fedcomp.data.bundle import DatasetBundle, TensorExamples
from fedcomp.data.labels import labels_of
from fedcomp.errors import ConfigError, DatasetError, accepted_by
from fedcomp.settings import NON_NEGATIVE, Check, build, setting


def parse_classes(text: str) -> tuple[int, ...]:
    """``"5,6,7"`` or ``"5-9"`` (or a mix) to the class ids in that order; ConfigError on anything else."""
    classes: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        low, dash, high = part.partition("-")
        try:
            span = range(int(low), int(high) + 1) if dash else [int(part)]
        except ValueError:
            raise ConfigError(f"data.subset: {part!r} is not a class id or a range such as 5-9") from None
        classes.extend(span)
    if len(set(classes)) != len(classes) or any(c < 0 for c in classes):
        raise ConfigError(f"data.subset = {text!r} names a class twice or a negative class")
    return tuple(classes)


def _resized(images: torch.Tensor, side: int) -> torch.Tensor:
    """``(N, C, H, W)`` images bilinearly resized to ``side x side`` (antialiased when shrinking)."""
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)


class _LazyView(Dataset):
    """Items ``indices`` of ``data``, labels mapped through ``relabel``, images resized per item."""

    def __init__(self, data: Dataset, indices: np.ndarray, targets: np.ndarray, side: int) -> None:
        self.data, self.indices, self.targets, self.side = data, indices, targets, side

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self.data[int(self.indices[index])][0]
        if self.side:
            example = _resized(example[None], self.side)[0]
        return example, int(self.targets[index])


CLASS_LIST = Check(accepted_by(parse_classes), "distinct class ids or ranges, e.g. 5-9 or 0,2,4")


@dataclass(frozen=True)
class DataView:
    """Which classes to keep (in their new label order; empty: all) and the image side (0: unchanged)."""

    classes: tuple[int, ...] = setting("data.subset", "", "keep only these classes, relabelled 0.. in this order: "
                                       "ids or ranges, e.g. 5-9 or 0,2,4; empty keeps every class",
                                       check=CLASS_LIST, parse=parse_classes)
    side: int = setting("data.resize", 0, "resize images to N x N pixels (bilinear); 0 keeps their size",
                        check=NON_NEGATIVE)

    @classmethod
    def from_config(cls, config: Mapping) -> "DataView":
        """The view a run's settings ask for (``data.subset``, ``data.resize``)."""
        return build(cls, config)

    def apply(self, bundle: DatasetBundle) -> DatasetBundle:
        """``bundle`` seen through this view; the bundle itself when the view changes nothing."""
        if not self.classes and not self.side:
            return bundle
        if self.side and len(bundle.input_shape) != 3:
            raise DatasetError(f"data.resize needs images (C, H, W); {bundle.name} has examples of shape "
                               f"{tuple(bundle.input_shape)}")
        outside = [c for c in self.classes if c >= bundle.num_classes]
        if outside:
            raise DatasetError(f"data.subset names class {outside[0]}, but {bundle.name} has classes "
                               f"0..{bundle.num_classes - 1}")
        relabel = np.full(bundle.num_classes, -1, np.int64)
        relabel[list(self.classes or range(bundle.num_classes))] = np.arange(len(self.classes or relabel))
        train, kept = self._split(bundle.train, relabel)
        test, _ = self._split(bundle.test, relabel)
        if not len(train) or not len(test):
            raise DatasetError(f"data.subset = {','.join(map(str, self.classes))} leaves no "
                               f"{'training' if not len(train) else 'test'} example of {bundle.name}")
        shape = (bundle.input_shape[0], self.side, self.side) if self.side else tuple(bundle.input_shape)
        groups = bundle.groups[kept] if bundle.groups is not None else None
        return DatasetBundle(train, test, len(self.classes or relabel), shape, bundle.name, groups, bundle.groups_from)

    def _split(self, data: Dataset, relabel: np.ndarray) -> tuple[Dataset, np.ndarray]:
        """One split through the view, and the kept item indices."""
        labels = relabel[labels_of(data)]
        kept = np.flatnonzero(labels >= 0)
        if isinstance(data, TensorExamples):
            examples = data.examples[torch.as_tensor(kept)]
            return TensorExamples(_resized(examples, self.side) if self.side else examples, labels[kept]), kept
        return _LazyView(data, kept, labels[kept], self.side), kept
