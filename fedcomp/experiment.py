"""What a run is made of, built from its settings: data, partitions, loaders and the model.

Server and clients call the same functions with the same settings, so they agree on the
split, the partitions and the model architecture without exchanging them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset, TensorDataset

from fedcomp.data import DatasetBundle, labels_of, load_dataset, partition
from fedcomp.device import resolve_device
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


def run_device(config: Mapping) -> torch.device:
    """The device this party trains and evaluates on (``sim.device`` resolved here)."""
    return resolve_device(str(config["sim.device"]))


@lru_cache(maxsize=8)
def _resident(data: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An in-memory dataset's images and labels as tensors on ``device``, copied there once per process.

    Only datasets that already hold their images as one tensor qualify (the built-in digits and
    ``python:`` plugins returning `ImageTensorDataset`); others keep torch's per-sample loader.
    """
    images, targets = getattr(data, "images", None), getattr(data, "targets", None)
    if not isinstance(images, torch.Tensor) or targets is None:
        return None
    return images.to(device), torch.as_tensor(targets, dtype=torch.int64).to(device)


def _loader(data: Dataset, indices: np.ndarray | None, batch_size: int, device: torch.device,
            generator: torch.Generator | None) -> DataLoader:
    """Batches of ``data[indices]`` (all of it when None), shuffled by ``generator`` when given.

    A resident dataset is sliced a whole batch at a time on ``device`` (no per-sample Python
    work, no host-to-device copy per batch); the batches are the ones torch's per-sample
    loader gives for the same generator, so results do not depend on the path taken.
    """
    resident = _resident(data, device)
    if resident is None:
        subset = data if indices is None else Subset(data, indices.tolist())
        return DataLoader(subset, batch_size=batch_size, shuffle=generator is not None, generator=generator)
    images, targets = resident
    if indices is not None:
        position = torch.as_tensor(indices, dtype=torch.int64).to(device)
        images, targets = images[position], targets[position]
    tensors = TensorDataset(images, targets)
    order = SequentialSampler(tensors) if generator is None else RandomSampler(tensors, generator=generator)
    # the generator also seeds the loader's base seed, as in torch's loader: same draws, same batches
    return DataLoader(tensors, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                      generator=generator)


def client_loader(config: Mapping, partition_id: int, server_round: int) -> DataLoader:
    """Shuffled loader over one client's partition; the shuffle is seeded by (seed, round, client)."""
    generator = torch.Generator().manual_seed(local_seed(config, server_round, partition_id))
    return _loader(run_dataset(config).train, client_indices(config, partition_id), int(config["batch_size"]),
                   run_device(config), generator)


def eval_loader(config: Mapping) -> DataLoader:
    """Loader over the central test set, in order."""
    return _loader(run_dataset(config).test, None, int(config["eval.batch_size"]), run_device(config), None)


def local_seed(config: Mapping, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round."""
    return (int(config["seed"]) * 1_000_003 + server_round * 10_007 + partition_id) % (2**31)


def run_model(config: Mapping) -> torch.nn.Module:
    """The run's model, initialised from the run's seed (identical on every party), on the run's device."""
    bundle = run_dataset(config)
    torch.manual_seed(int(config["seed"]))
    return build_model(str(config["model"]), bundle.num_classes, bundle.input_shape).to(run_device(config))
