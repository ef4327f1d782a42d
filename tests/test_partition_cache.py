"""The on-disk partition cache: a hit returns what a build returns, a changed key misses, a bad file is rebuilt."""

import logging
import os
import sys

import numpy as np
import pytest

from fedcomp.data import partition
from fedcomp.data import partition_cache
from fedcomp.data.partition_cache import cache_dir, cached, partition_key

LABELS = np.arange(120) % 4


def _files(folder):
    return sorted(folder.glob("*.npy"))


def _same(a, b):
    assert len(a) == len(b) and all(np.array_equal(x, y) and x.dtype == y.dtype == np.int64 for x, y in zip(a, b))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_a_cached_partition_equals_a_built_one_and_is_read_back(tmp_path, monkeypatch, scheme):
    built = partition(LABELS, 6, scheme=scheme, seed=3, classes_per_client=2)
    first = partition(LABELS, 6, scheme=scheme, seed=3, classes_per_client=2, cache=tmp_path)
    _same(first, built)
    assert len(_files(tmp_path)) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("a cached partition was rebuilt")

    monkeypatch.setattr(sys.modules["fedcomp.data.partition"], "_build", no_build)
    _same(partition(LABELS, 6, scheme=scheme, seed=3, classes_per_client=2, cache=tmp_path), built)


def test_a_natural_partition_is_keyed_on_its_groups(tmp_path):
    groups = np.array([f"writer{i % 3}" for i in range(len(LABELS))])
    first = partition(LABELS, 3, scheme="natural", groups=groups, cache=tmp_path)
    _same(first, partition(LABELS, 3, scheme="natural", groups=groups))
    other = np.array([f"writer{(i // 40)}" for i in range(len(LABELS))])
    _same(partition(LABELS, 3, scheme="natural", groups=other, cache=tmp_path),
          partition(LABELS, 3, scheme="natural", groups=other))
    assert len(_files(tmp_path)) == 2


@pytest.mark.parametrize("change", [
    {"num_clients": 5}, {"seed": 4}, {"scheme": "dirichlet"}, {"alpha": 0.3}, {"classes_per_client": 3}])
def test_every_argument_is_part_of_the_key(change):
    base = {"num_clients": 6, "scheme": "iid", "seed": 3, "alpha": 0.5, "classes_per_client": 2}
    assert partition_key(LABELS, None, **base) != partition_key(LABELS, None, **{**base, **change})


def test_changed_labels_miss_and_give_their_own_partition(tmp_path):
    relabelled = LABELS.copy()
    relabelled[:10] = 3
    assert partition_key(LABELS, None, n=6) != partition_key(relabelled, None, n=6)
    partition(LABELS, 6, scheme="dirichlet", seed=1, cache=tmp_path)
    _same(partition(relabelled, 6, scheme="dirichlet", seed=1, cache=tmp_path),
          partition(relabelled, 6, scheme="dirichlet", seed=1))
    assert len(_files(tmp_path)) == 2


def test_the_key_covers_the_partitioning_code(monkeypatch, tmp_path):
    source = tmp_path / "partition.py"
    source.write_text("# another version of the partitioning code\n")
    before = partition_key(LABELS, None, n=6)
    monkeypatch.setattr(partition_cache, "__file__", str(tmp_path / "partition_cache.py"))
    assert partition_key(LABELS, None, n=6) != before


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_corrupt_file_is_rebuilt_with_one_warning(tmp_path, caplog, damage):
    built = partition(LABELS, 4, seed=2)
    partition(LABELS, 4, seed=2, cache=tmp_path)
    (path,) = _files(tmp_path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[:len(data) // 2], "garbage": b"not a partition file at all",
                      "empty": b"", "flip": data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:]}[damage])
    with caplog.at_level(logging.WARNING, logger="fedcomp.data.partition_cache"):
        _same(partition(LABELS, 4, seed=2, cache=tmp_path), built)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"partition cache file {path} is unreadable"]
    _same(partition(LABELS, 4, seed=2, cache=tmp_path), built)  # the file was replaced by a good one
    assert _files(tmp_path) == [path]


def test_the_folder_keeps_only_the_most_recently_used_files(tmp_path):
    for n in range(2, 7):
        cached(f"key{n}", lambda n=n: [np.arange(n)], tmp_path, max_files=3)
        os.utime(tmp_path / f"key{n}.npy", (n, n))  # distinct, increasing use times
    cached("key2", lambda: [np.arange(99)], tmp_path, max_files=3)  # evicted earlier: rebuilt, now the newest
    assert sorted(p.stem for p in _files(tmp_path)) == ["key2", "key5", "key6"]


def test_an_unwritable_folder_still_gives_the_partition(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    with caplog.at_level(logging.WARNING, logger="fedcomp.data.partition_cache"):
        _same(partition(LABELS, 4, cache=blocker / "partitions"), partition(LABELS, 4))
    assert len(caplog.records) == 1 and "could not write" in caplog.records[0].getMessage()


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDCOMP_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path / "partitions"
    monkeypatch.setenv("FEDCOMP_CACHE_DIR", "off")
    assert cache_dir() is None
    monkeypatch.delenv("FEDCOMP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fedcomp" / "partitions"
