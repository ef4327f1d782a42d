"""Partitioning among clients with flwr-datasets' partitioners."""

from __future__ import annotations

import numpy as np
import pytest

from fedcomp.data import partition
from fedcomp.errors import ConfigError

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """600 labels, 60 per class, in a shuffled order."""
    return np.random.default_rng(7).permutation(np.repeat(np.arange(NUM_CLASSES), 60))


def label_distributions(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    counts = np.stack([np.bincount(labels[p], minlength=NUM_CLASSES) for p in parts])
    return counts / counts.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_parts_are_sorted_disjoint_nonempty_and_cover(labels: np.ndarray, scheme: str) -> None:
    parts = partition(labels, 12, scheme, seed=1)
    assert len(parts) == 12
    for part in parts:
        assert part.dtype == np.int64 and len(part) > 0
        assert np.all(np.diff(part) > 0)
    everything = np.concatenate(parts)
    assert len(everything) == len(labels)
    assert np.array_equal(np.sort(everything), np.arange(len(labels)))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_deterministic_for_a_seed(labels: np.ndarray, scheme: str) -> None:
    first = partition(labels, 10, scheme, seed=5)
    again = partition(labels, 10, scheme, seed=5)
    other = partition(labels, 10, scheme, seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_iid_is_balanced_and_mixed(labels: np.ndarray) -> None:
    parts = partition(labels, 7, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    # A contiguous cut of label-sorted data would give each client one or two classes.
    sorted_labels = np.sort(labels)
    assert all(len(np.unique(sorted_labels[p])) >= 8 for p in partition(sorted_labels, 7, "iid"))


def test_dirichlet_skew_grows_as_alpha_shrinks(labels: np.ndarray) -> None:
    overall = np.full(NUM_CLASSES, 1 / NUM_CLASSES)

    def mean_distance_from_overall(alpha: float) -> float:
        parts = partition(labels, 10, "dirichlet", seed=0, alpha=alpha)
        return float(np.abs(label_distributions(labels, parts) - overall).sum(axis=1).mean() / 2)

    skewed, near_iid = mean_distance_from_overall(0.1), mean_distance_from_overall(1000.0)
    assert skewed > 0.5
    assert near_iid < 0.15


@pytest.mark.parametrize("classes_per_client", [1, 2, 3])
def test_pathological_gives_the_requested_classes(labels: np.ndarray, classes_per_client: int) -> None:
    parts = partition(labels, 20, "pathological", seed=2, classes_per_client=classes_per_client)
    for client, part in enumerate(parts):
        held = set(labels[part].tolist())
        assert len(held) == classes_per_client
        assert client % NUM_CLASSES in held


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"scheme": "shards"}, "unknown partition scheme 'shards'; choose one of: iid, dirichlet, pathological"),
        ({"num_clients": 601}, "num_clients must be between 1 and the number of samples \\(600\\)"),
        ({"num_clients": 0}, "num_clients must be between 1"),
        ({"scheme": "dirichlet", "alpha": 0.0}, "alpha must be > 0"),
        ({"scheme": "dirichlet", "alpha": -1.0}, "alpha must be > 0"),
        ({"scheme": "pathological", "classes_per_client": 11}, "between 1 and the number of classes \\(10\\)"),
        ({"scheme": "pathological", "classes_per_client": 0}, "between 1 and the number of classes"),
        ({"scheme": "pathological", "num_clients": 5}, "at least as many clients as classes"),
    ],
)
def test_bad_parameters_raise_config_errors(labels: np.ndarray, kwargs: dict, complaint: str) -> None:
    arguments = {"num_clients": 10, **kwargs}
    with pytest.raises(ConfigError, match=complaint):
        partition(labels, **arguments)


def test_labels_must_be_integers() -> None:
    with pytest.raises(ConfigError, match="integer"):
        partition(np.array([0.0, 1.0, 2.0]), 2)


def test_unreachable_dirichlet_is_a_config_error() -> None:
    # 30 samples, 30 clients, tiny alpha: no draw leaves every client a sample.
    with pytest.raises(ConfigError, match="dirichlet partition of 30 samples among 30 clients failed"):
        partition(np.repeat(np.arange(3), 10), 30, "dirichlet", alpha=0.01)


@pytest.mark.parametrize("samples, clients", [(1000, 7), (1797, 1000), (103, 103), (5000, 333)])
def test_iid_shards_are_flwr_datasets_own(samples: int, clients: int) -> None:
    """The iid split cuts the shuffled column itself (one read, not a select per client, which took 51 s for
    10,000 clients of Fashion-MNIST): exactly IidPartitioner's contiguous shards of the same shuffle."""
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import IidPartitioner

    labels = np.random.default_rng(1).integers(0, 10, samples)
    table = HFDataset.from_dict({"label": labels.astype(np.int64), "idx": np.arange(samples)}).shuffle(seed=3)
    reference = IidPartitioner(num_partitions=clients)
    reference.dataset = table
    parts = partition(labels, clients, scheme="iid", seed=3)
    assert len(parts) == clients
    for client in range(clients):
        assert np.array_equal(parts[client], np.sort(np.asarray(reference.load_partition(client)["idx"])))
