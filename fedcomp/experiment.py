"""What a run is made of, built from its settings: data, partitions, loaders and the model.

Server and clients call the same functions with the same settings, so they agree on the
split, the partitions and the model architecture without exchanging them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from fedcomp.data import DatasetBundle, labels_of, load_dataset, partition
from fedcomp.models import build_model


@lru_cache(maxsize=4)
def dataset(name: str, data_dir: str, download: bool, seed: int) -> DatasetBundle:
    """The dataset of a run, loaded once per process."""
    return load_dataset(name, data_dir=data_dir, download=download, seed=seed)


def run_dataset(config: Mapping) -> DatasetBundle:
    return dataset(str(config["dataset"]), str(config["data.dir"]), bool(config["data.download"]), int(config["seed"]))


@lru_cache(maxsize=4)
def _partitions(name: str, data_dir: str, download: bool, seed: int, num_clients: int, scheme: str,
                alpha: float, classes_per_client: int) -> tuple[np.ndarray, ...]:
    labels = labels_of(dataset(name, data_dir, download, seed).train)
    return tuple(partition(labels, num_clients, scheme=scheme, seed=seed, alpha=alpha,
                           classes_per_client=classes_per_client))


def client_indices(config: Mapping, partition_id: int) -> np.ndarray:
    """Indices into the training set held by client ``partition_id``."""
    parts = _partitions(str(config["dataset"]), str(config["data.dir"]), bool(config["data.download"]),
                        int(config["seed"]), int(config["num_clients"]), str(config["partition"]),
                        float(config["data.alpha"]), int(config["data.classes_per_client"]))
    if not 0 <= partition_id < len(parts):
        raise ValueError(f"partition id {partition_id} is outside 0..{len(parts) - 1} (num_clients={len(parts)})")
    return parts[partition_id]


def client_loader(config: Mapping, partition_id: int, server_round: int) -> DataLoader:
    """Shuffled loader over one client's partition; the shuffle is seeded by (seed, round, client)."""
    subset = Subset(run_dataset(config).train, client_indices(config, partition_id).tolist())
    generator = torch.Generator().manual_seed(local_seed(config, server_round, partition_id))
    return DataLoader(subset, batch_size=int(config["batch_size"]), shuffle=True, generator=generator)


def eval_loader(config: Mapping) -> DataLoader:
    return DataLoader(run_dataset(config).test, batch_size=int(config["eval.batch_size"]), shuffle=False)


def local_seed(config: Mapping, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round."""
    return (int(config["seed"]) * 1_000_003 + server_round * 10_007 + partition_id) % (2**31)


def run_model(config: Mapping) -> torch.nn.Module:
    """The run's model, initialised from the run's seed (identical on every party)."""
    bundle = run_dataset(config)
    torch.manual_seed(int(config["seed"]))
    return build_model(str(config["model"]), bundle.num_classes, bundle.input_shape)
