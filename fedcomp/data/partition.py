"""Splitting a training set among clients with flwr-datasets' partitioners.

flwr-datasets and Hugging Face ``datasets`` are imported when a partition is built, not when
this module is: together they take 2 s (flwr-datasets' visualisation pulls in matplotlib and
seaborn), which a process that finds its partition in the cache (`fedcomp.data.partition_cache`)
never needs to pay.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedcomp.data.partition_cache import cached, partition_key
from fedcomp.errors import ConfigError


def _partitioner(name: str) -> Callable[..., Any]:
    """flwr-datasets' partitioner class ``name`` (imported on first use)."""
    import flwr_datasets.partitioner

    return getattr(flwr_datasets.partitioner, name)


# scheme -> builder (num_clients, seed, alpha, classes_per_client) of a partitioner over the
# columns "label", "idx" and, for natural partitions, "group".
PARTITIONERS: dict[str, Callable[[int, int, float, int], Any]] = {
    "iid": lambda clients, seed, alpha, per_client: _partitioner("IidPartitioner")(num_partitions=clients),
    "dirichlet": lambda clients, seed, alpha, per_client: _partitioner("DirichletPartitioner")(
        num_partitions=clients, partition_by="label", alpha=alpha, min_partition_size=1, seed=seed),
    "pathological": lambda clients, seed, alpha, per_client: _partitioner("PathologicalPartitioner")(
        num_partitions=clients, partition_by="label", num_classes_per_partition=per_client,
        class_assignment_mode="first-deterministic", seed=seed),
    "natural": lambda clients, seed, alpha, per_client: _partitioner("NaturalIdPartitioner")(partition_by="group"),
}
SCHEMES = tuple(PARTITIONERS)


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: str = "iid",
    seed: int = 0,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    groups: np.ndarray | None = None,
    groups_from: str = "",
    cache: Path | None = None,
) -> list[np.ndarray]:
    """Assign the samples with these ``labels`` to ``num_clients`` clients.

    Returns one sorted int64 array of sample indices per client; the arrays are disjoint,
    together cover every sample, none is empty, and they depend only on the arguments.

    - ``iid``: a seeded shuffle cut into equal shards.
    - ``dirichlet``: each class spread over the clients by Dirichlet(``alpha``) proportions
      (small alpha = strong label skew), resampled until no client is empty.
    - ``pathological``: each client holds ``classes_per_client`` classes, the first being
      ``client_id % num_classes`` so every class is held; needs ``num_clients >= num_classes``.
    - ``natural``: one client per distinct value of ``groups`` (a key per sample, e.g. a writer
      or a client folder), in sorted order; needs ``num_clients`` equal to their number.
      ``groups_from`` names where the keys come from, for the error message.

    With ``cache`` (a folder) the partitions are read from there when an earlier call with the
    same arguments saved them, and saved there otherwise (`fedcomp.data.partition_cache`).
    """
    labels = np.asarray(labels)
    _check_arguments(labels, num_clients, scheme, alpha, classes_per_client)
    if cache is None:
        return _build(labels, num_clients, scheme, seed, alpha, classes_per_client, groups, groups_from)
    key = partition_key(labels, groups, num_clients=num_clients, scheme=scheme, seed=seed, alpha=float(alpha),
                        classes_per_client=classes_per_client)
    return list(cached(key, lambda: _build(labels, num_clients, scheme, seed, alpha, classes_per_client, groups,
                                           groups_from), cache))


def _build(labels: np.ndarray, num_clients: int, scheme: str, seed: int, alpha: float, classes_per_client: int,
           groups: np.ndarray | None, groups_from: str) -> list[np.ndarray]:
    columns = {"label": labels.astype(np.int64), "idx": np.arange(len(labels))}
    if scheme == "natural":
        columns["group"] = _check_groups(groups, labels, num_clients, groups_from)
    from datasets import Dataset as HFDataset

    partitioner = PARTITIONERS[scheme](num_clients, seed, float(alpha), classes_per_client)
    table = HFDataset.from_dict(columns)
    if scheme == "iid":
        table = table.shuffle(seed=seed)
    partitioner.dataset = table
    if scheme == "iid":  # the partitioner's contiguous shards, cut from one read of the column (not N selects)
        shuffled = np.asarray(table["idx"], dtype=np.int64)
        size, extra = divmod(len(shuffled), num_clients)
        starts = [size * client + min(client, extra) for client in range(num_clients + 1)]
        return [np.sort(shuffled[starts[client]:starts[client + 1]]) for client in range(num_clients)]
    try:
        # NaturalIdPartitioner draws a tqdm bar on stderr; the user sees the outcome, not the bar.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            # Dirichlet resampling warns on every retry; the outcome is a result or a ConfigError.
            warnings.filterwarnings("ignore", "The specified min_partition_size", UserWarning)
            return [
                np.sort(np.asarray(partitioner.load_partition(client)["idx"], dtype=np.int64))
                for client in range(num_clients)
            ]
    except ValueError as exc:  # the partitioner could not meet its constraints
        raise ConfigError(
            f"{scheme} partition of {len(labels)} samples among {num_clients} clients failed: {exc}"
        ) from exc


def _check_arguments(labels: np.ndarray, num_clients: int, scheme: str, alpha: float, classes_per_client: int) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown partition scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"labels must be a non-empty 1-D integer array, got {labels.dtype} {labels.shape}")
    if not 1 <= num_clients <= len(labels):
        raise ConfigError(f"num_clients must be between 1 and the number of samples ({len(labels)}), got {num_clients}")
    num_classes = len(np.unique(labels))
    if scheme == "dirichlet" and not alpha > 0:
        raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}")
    if scheme == "pathological":
        if not 1 <= classes_per_client <= num_classes:
            raise ConfigError(
                f"classes_per_client must be between 1 and the number of classes ({num_classes}), "
                f"got {classes_per_client}"
            )
        if num_clients < num_classes:
            raise ConfigError(
                f"pathological partitioning needs at least as many clients as classes "
                f"({num_classes}) so that every class is held by some client; got {num_clients}"
            )


def _check_groups(groups: np.ndarray | None, labels: np.ndarray, num_clients: int, groups_from: str) -> list:
    if groups is None:
        raise ConfigError("partition=natural needs data whose examples say their client: a table with "
                          "data.partition_by=COLUMN (csv:, parquet:, hf:) or dataset=clients:PATH")
    if len(groups) != len(labels):
        raise ConfigError(f"natural partition: {len(groups)} group keys for {len(labels)} samples")
    found = len(np.unique(groups))
    if found != num_clients:
        raise ConfigError(f"{groups_from or 'the natural partition'} gives {found} clients but num_clients="
                          f"{num_clients}; set num_clients={found}")
    return groups.tolist()
