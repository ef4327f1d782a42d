"""What a run is made of, built from its settings: data, partitions, loaders and the model.

Server and clients call the same functions with the same settings, so they agree on the
split, the partitions and the model architecture without exchanging them. A client node
may also pass its Flower node config: a SuperNode started with ``data-path=FOLDER`` under
``dataset=clients:PATH`` reads that folder as its own data instead of its folder under PATH.

With ``init.weights`` every party also loads the same initial weights from the same file
(issue 19): the initial model is never sent, exactly as ``W_0`` from the seed is not.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset, TensorDataset

from fedcomp.data import DataOptions, DatasetBundle, dataset_names, labels_of, load_dataset, partition
from fedcomp.data.bundle import TensorExamples
from fedcomp.data.partition_cache import cache_dir
from fedcomp.data.view import DataView
from fedcomp.local.partial import select
from fedcomp.local.training import TrainSettings, evaluate, train
from fedcomp.run.device import resolve_device
from fedcomp.errors import ConfigError
from fedcomp.models import build_model, model_names
from fedcomp.settings import NON_NEGATIVE, POSITIVE, Setting
from fedcomp.models.weights import load_weights, read_weights

DATA_PATH = "data-path"  # node-config key of a SuperNode's own client folder
CLIENTS_PREFIX = "clients:"


def _dataset_names() -> list[str]:
    return [name for name in dataset_names() if ":" not in name]  # the open forms come from `prefixes`


#: What a run is made of (the data's own options are `DataOptions`'s fields).
SETTINGS: dict[str, Setting] = {
    "dataset": Setting("digits", "dataset: a built-in name, folder:PATH, clients:PATH, csv:PATH, parquet:PATH, "
                       "hf:PATH or python:module:function", choices=_dataset_names,
                       prefixes=("folder:", "python:", CLIENTS_PREFIX, "csv:", "parquet:", "hf:")),
    "model": Setting("cnn", "model: a registered name or python:module:function", choices=model_names,
                     prefixes=("python:",)),
    "num_clients": Setting(10, "number of simulated clients (SuperNodes)", check=POSITIVE),
    "partition": Setting("iid", "how the training set is split among clients",
                         choices=("iid", "dirichlet", "pathological", "natural")),
    "data.alpha": Setting(0.5, "Dirichlet concentration (smaller = more skewed)", check=POSITIVE),
    "data.classes_per_client": Setting(2, "classes per client for 'pathological'", check=POSITIVE),
    "batch_size": Setting(32, "local training batch size", check=POSITIVE),
    "eval.batch_size": Setting(512, "batch size of the central evaluation", check=POSITIVE),
    "seed": Setting(0, "seed for data split, partitioning, model init, sampling and training", check=NON_NEGATIVE),
    "init.weights": Setting("", "initial weights, loaded by every party: a model.npz fedcomp saved (or its run "
                            "folder), a torch state_dict file (tensors only) or python:module:function; empty: "
                            "initialised from the seed"),
    "init.reset_head": Setting(False, "with init.weights: start a new classifier (the last Linear layer) from "
                               "the seed, for a new label set"),
}


@lru_cache(maxsize=4)
def dataset(name: str, options: DataOptions, view: DataView) -> DatasetBundle:
    """The dataset of a run seen through ``view`` (``data.subset``, ``data.resize``), loaded once per process."""
    return view.apply(load_dataset(name, options))


@lru_cache(maxsize=4)
def own_dataset(data_path: str, options: DataOptions, view: DataView) -> DatasetBundle:
    """A node's own client folder (its ``data-path``) seen through ``view``, loaded once per process."""
    from fedcomp.data.clients import load_client_folder  # torchvision and pyarrow: only for this data

    return view.apply(load_client_folder(Path(data_path).expanduser(), options))


def _data_path(config: Mapping, node_config: Mapping | None) -> str | None:
    path = (node_config or {}).get(DATA_PATH)
    if path is None:
        return None
    if not str(config["dataset"]).startswith(CLIENTS_PREFIX):
        raise ConfigError(f"this node has {DATA_PATH}={path} in its node config, which needs "
                          f"dataset=clients:PATH; the run has dataset={config['dataset']}")
    return str(path)


def run_dataset(config: Mapping, node_config: Mapping | None = None) -> DatasetBundle:
    """The run's dataset, or on a node with a ``data-path`` that node's own folder."""
    options, view = DataOptions.from_config(config), DataView.from_config(config)
    data_path = _data_path(config, node_config)
    if data_path is not None:
        return own_dataset(data_path, options, view)
    return dataset(str(config["dataset"]), options, view)


@lru_cache(maxsize=4)
def _partitions(name: str, options: DataOptions, view: DataView, num_clients: int, scheme: str, alpha: float,
                classes_per_client: int) -> tuple[np.ndarray, ...]:
    bundle = dataset(name, options, view)
    if name.startswith(CLIENTS_PREFIX):
        if scheme not in ("iid", "natural"):
            raise ConfigError(f"dataset {name} gives each client its own folder, so partition={scheme} does not "
                              "apply; leave partition at its default or set it to natural")
        scheme = "natural"
    return tuple(partition(labels_of(bundle.train), num_clients, scheme=scheme, seed=options.seed, alpha=alpha,
                           classes_per_client=classes_per_client, groups=bundle.groups,
                           groups_from=bundle.groups_from, cache=cache_dir()))


def client_indices(config: Mapping, partition_id: int, node_config: Mapping | None = None) -> np.ndarray:
    """Indices into the training set (``run_dataset(config, node_config).train``) held by client ``partition_id``.

    Under ``clients:PATH`` client ``i`` holds exactly the training examples of the ``i``-th
    client folder; a node with a ``data-path`` holds all of its own folder.
    """
    if _data_path(config, node_config) is not None:
        return np.arange(len(run_dataset(config, node_config).train))
    parts = _partitions(str(config["dataset"]), DataOptions.from_config(config), DataView.from_config(config),
                        int(config["num_clients"]),
                        str(config["partition"]), float(config["data.alpha"]), int(config["data.classes_per_client"]))
    if not 0 <= partition_id < len(parts):
        raise ValueError(f"partition id {partition_id} is outside 0..{len(parts) - 1} (num_clients={len(parts)})")
    return parts[partition_id]


def run_device(config: Mapping) -> torch.device:
    """The device this party trains and evaluates on (``sim.device`` resolved here)."""
    return resolve_device(str(config["sim.device"]))


@lru_cache(maxsize=8)
def _resident(data: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An in-memory dataset's examples and labels as tensors on ``device``, copied there once per process.

    Only `TensorExamples` qualify (digits, tables, ``python:`` plugins returning one); other
    datasets keep torch's per-sample loader.
    """
    if not isinstance(data, TensorExamples):
        return None
    return data.examples.to(device), torch.as_tensor(data.targets, dtype=torch.int64).to(device)


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


def client_loader(config: Mapping, partition_id: int, server_round: int,
                  node_config: Mapping | None = None) -> DataLoader:
    """Shuffled loader over one client's partition; the shuffle is seeded by (seed, round, client)."""
    generator = torch.Generator().manual_seed(local_seed(config, server_round, partition_id))
    return _loader(run_dataset(config, node_config).train, client_indices(config, partition_id, node_config),
                   int(config["batch_size"]), run_device(config), generator)


def central_loader(config: Mapping, epoch: int) -> DataLoader:
    """Shuffled loader over the whole training set (central pretraining); the shuffle is seeded by (seed, epoch)."""
    generator = torch.Generator().manual_seed(local_seed(config, epoch, 0))
    return _loader(run_dataset(config).train, None, int(config["batch_size"]), run_device(config), generator)


def eval_loader(config: Mapping) -> DataLoader:
    """Loader over the central test set, in order."""
    return _loader(run_dataset(config).test, None, int(config["eval.batch_size"]), run_device(config), None)


def local_seed(config: Mapping, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round."""
    return (int(config["seed"]) * 1_000_003 + server_round * 10_007 + partition_id) % (2**31)


@lru_cache(maxsize=2)
def initial_weights(reference: str) -> dict[str, torch.Tensor]:
    """The state dict ``init.weights`` names, read once per process (`fedcomp.models.weights.read_weights`)."""
    return read_weights(reference)


def run_model(config: Mapping, node_config: Mapping | None = None) -> torch.nn.Module:
    """The run's model, on the run's device, identical on every party: initialised from the run's
    seed, then, with ``init.weights``, loaded from that file (its classifier kept fresh from the seed
    with ``init.reset_head``)."""
    bundle = run_dataset(config, node_config)
    torch.manual_seed(int(config["seed"]))
    model = build_model(str(config["model"]), bundle.num_classes, bundle.input_shape)
    reference = str(config["init.weights"])
    if reference:
        fresh = select(model, list(model.state_dict()), "head") if config["init.reset_head"] else ()
        load_weights(model, initial_weights(reference), f"init.weights {reference}", fresh=fresh)
    return model.to(run_device(config))


def pretrain(config: Mapping, epochs: int,
             on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> torch.nn.Module:
    """The run's model trained centrally on its whole training set for ``epochs`` epochs, with the
    local training loop and settings (``lr``, ``batch_size``, ``train.*``); ``on_epoch(epoch, metrics)``
    gets the training and test metrics after each epoch."""
    model = run_model(config)
    settings = replace(TrainSettings.from_config(config), epochs=1)
    for epoch in range(1, epochs + 1):
        stats = train(model, central_loader(config, epoch), settings)
        if on_epoch is not None:
            on_epoch(epoch, {**stats, **evaluate(model, eval_loader(config))})
    return model


def check_run(config: Mapping) -> torch.nn.Module:
    """Load the data, build the model and split the data among the clients once, so that any
    problem with them stops the run before anything starts; returns the model."""
    model = run_model(config)
    client_indices(config, 0)
    return model
