"""The IDX reader and the fashion-mnist dataset, on tiny IDX files written here."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcomp.data import load_dataset
from fedcomp.data.fashion_mnist import FILES, SYSTEM_DIR, load_fashion_mnist
from fedcomp.data.idx import parse_idx, read_idx
from fedcomp.errors import DatasetError


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """The IDX encoding of ``array`` (big-endian values after the magic number and dimensions)."""
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    for stem, array in zip(FILES[split], (images, labels)):
        data = idx_bytes(array)
        (directory / (f"{stem}.gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)


def write_fashion(directory: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        write_split(directory, split, rng.integers(0, 256, (n, 5, 5)), np.arange(n) % 10, gz)


# --- the reader ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0x08, 0x0B, 0x0D])
def test_parse_idx_round_trips_types_and_shapes(code: int) -> None:
    array = np.arange(24).reshape(2, 3, 4)
    parsed = parse_idx(idx_bytes(array, code))
    assert parsed.shape == (2, 3, 4)
    assert np.array_equal(parsed, array)
    assert parsed.dtype == {0x08: np.uint8, 0x0B: np.int16, 0x0D: np.float32}[code]


def test_read_idx_reads_plain_and_gzip(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.uint8)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "a"), array)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), array)


GOOD = idx_bytes(np.zeros((3, 2, 2), dtype=np.uint8))


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00", "too short for an IDX header"),
    (b"\x01\x02" + GOOD[2:], "not an IDX file"),
    (b"\x00\x00\x07" + GOOD[3:], "unknown IDX type code 0x07"),
    (GOOD[:9], "truncated header"),
    (GOOD[:-1], "truncated: dimensions 3x2x2"),
    (GOOD + b"\x00", "has trailing bytes"),
])
def test_malformed_idx_gives_one_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message) as err:
        parse_idx(data, "f.idx")
    assert "\n" not in str(err.value) and str(err.value).startswith("f.idx: ")


def test_truncated_gzip_gives_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(GOOD)[:-6])
    with pytest.raises(DatasetError, match="not a complete gzip file"):
        read_idx(path)


# --- the dataset ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_written_files(tmp_path: Path, gz: bool) -> None:
    write_fashion(tmp_path / "fashion-mnist", gz=gz)
    bundle = load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("fashion-mnist", 10, (1, 5, 5))
    assert (len(bundle.train), len(bundle.test)) == (6, 4)
    image, label = bundle.train[3]
    assert image.dtype == torch.float32 and image.shape == (1, 5, 5) and label == 3
    assert abs(bundle.train.examples.mean().item()) < 1e-5
    assert abs(bundle.train.examples.std(unbiased=False).item() - 1) < 1e-4


def test_missing_file_names_the_package(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_wrongly_sized_split_gives_one_clear_error(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    write_split(tmp_path, "train", np.zeros((6, 5, 5)), np.zeros(5), gz=True)  # one label short
    with pytest.raises(DatasetError, match="6 images but 5 labels"):
        load_fashion_mnist(tmp_path)


def test_truncated_file_gives_one_clear_error(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte: truncated"):
        load_fashion_mnist(tmp_path)


def test_labels_out_of_range_and_wrong_rank_are_refused(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    write_split(tmp_path, "test", np.zeros((4, 5, 5)), np.array([0, 1, 2, 10]), gz=True)
    with pytest.raises(DatasetError, match="label 10 outside range"):
        load_fashion_mnist(tmp_path)
    write_split(tmp_path, "test", np.zeros((4, 25)), np.zeros(4), gz=True)
    with pytest.raises(DatasetError, match=r"expected uint8 images of shape \(N, H, W\)"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not SYSTEM_DIR.is_dir(), reason=f"{SYSTEM_DIR} missing: apt-get install dataset-fashion-mnist")
def test_the_installed_fashion_mnist(tmp_path: Path) -> None:
    bundle = load_dataset("fashion-mnist", data_dir=str(tmp_path))  # no copy there: the package's files
    assert (len(bundle.train), len(bundle.test), bundle.input_shape) == (60_000, 10_000, (1, 28, 28))
    assert np.bincount(bundle.train.targets).tolist() == [6000] * 10
