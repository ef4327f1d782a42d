"""Datasets: the registry of loaders, label access, and partitioning among clients."""

from fedcomp.data.bundle import DataOptions, DatasetBundle
from fedcomp.data.labels import labels_of
from fedcomp.data.partition import partition
from fedcomp.data.registry import dataset_names, load_dataset

__all__ = ["DataOptions", "DatasetBundle", "dataset_names", "labels_of", "load_dataset", "partition"]
