"""The dataset registry: built-in loaders on real (small, self-made) data, and its errors."""

from __future__ import annotations

import pickle
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset

from fedcomp.data import DatasetBundle, dataset_names, labels_of, load_dataset
from fedcomp.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from fedcomp.errors import DatasetError

# --- digits -------------------------------------------------------------------------------


def test_digits_shapes_split_and_normalisation() -> None:
    bundle = load_dataset("digits")
    assert isinstance(bundle, DatasetBundle)
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("digits", 10, (1, 8, 8))
    assert (len(bundle.train), len(bundle.test)) == (1347, 450)
    image, label = bundle.train[0]
    assert image.dtype == torch.float32 and image.shape == (1, 8, 8)
    assert isinstance(label, int) and 0 <= label < 10
    train_images = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    assert abs(train_images.mean().item()) < 1e-4
    assert abs(train_images.std().item() - 1) < 1e-3


def test_digits_split_is_stratified_and_fixed_by_seed() -> None:
    first, again, other = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    assert np.array_equal(labels_of(first.test), labels_of(again.test))
    assert torch.equal(first.test.examples, again.test.examples)
    assert not np.array_equal(labels_of(first.test), labels_of(other.test))
    counts = np.bincount(labels_of(first.test), minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47  # 25% of ~180 per class


# --- cifar10 ------------------------------------------------------------------------------

CIFAR_PER_BATCH = 4


def write_fake_cifar10(data_dir: Path) -> Path:
    """A tiny CIFAR-10 in the official python-batch format; image i has red channel = i."""
    batches = data_dir / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        index = np.arange(b * CIFAR_PER_BATCH, (b + 1) * CIFAR_PER_BATCH)
        images = np.zeros((CIFAR_PER_BATCH, 3, 32, 32), dtype=np.uint8)
        images[:, 0] = index[:, None, None]
        entry = {
            "batch_label": name,
            "data": images.reshape(CIFAR_PER_BATCH, -1),
            "labels": [int(i % 10) for i in index],
        }
        (batches / name).write_bytes(pickle.dumps(entry))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (batches / "batches.meta").write_bytes(pickle.dumps(meta))
    return batches


def test_cifar10_reads_local_copy(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    bundle = load_dataset("cifar10", data_dir=tmp_path)
    assert (bundle.num_classes, bundle.input_shape) == (10, (3, 32, 32))
    assert (len(bundle.train), len(bundle.test)) == (5 * CIFAR_PER_BATCH, CIFAR_PER_BATCH)
    assert labels_of(bundle.train).tolist() == [i % 10 for i in range(20)]
    image, label = bundle.train[7]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and label == 7
    expected_red = (7 / 255 - CIFAR10_MEAN[0]) / CIFAR10_STD[0]
    assert torch.allclose(image[0], torch.full((32, 32), expected_red), atol=1e-5)
    assert torch.allclose(image[1], torch.full((32, 32), -CIFAR10_MEAN[1] / CIFAR10_STD[1]), atol=1e-5)
    test_image, test_label = bundle.test[0]
    assert test_label == 20 % 10
    assert torch.allclose(test_image[0, 0, 0], torch.tensor((20 / 255 - CIFAR10_MEAN[0]) / CIFAR10_STD[0]))


def test_cifar10_absent_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset("cifar10", data_dir=tmp_path / "data")
    message = str(error.value)
    assert str(tmp_path / "data" / "cifar-10-batches-py") in message
    assert "--set data.download=true" in message


def test_cifar10_corrupt_batch_is_a_dataset_error(tmp_path: Path) -> None:
    batches = write_fake_cifar10(tmp_path)
    (batches / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="could not be read"):
        load_dataset("cifar10", data_dir=tmp_path)


# --- folder:PATH --------------------------------------------------------------------------


def write_image_folder(root: Path, mode: str, size: tuple[int, int], classes=("normal", "pneumonia")) -> None:
    """Two images per class in train/ and one in test/; class k's pixels are all 255*k."""
    for split, count in (("train", 2), ("test", 1)):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                colour = 255 * k if mode == "L" else (255 * k,) * 3
                Image.new(mode, size, colour).save(root / split / name / f"{i}.png")


def test_folder_greyscale(tmp_path: Path) -> None:
    write_image_folder(tmp_path, "L", (6, 6))
    bundle = load_dataset(f"folder:{tmp_path}")
    assert (bundle.num_classes, bundle.input_shape) == (2, (1, 6, 6))
    assert (len(bundle.train), len(bundle.test)) == (4, 2)
    assert labels_of(bundle.train).tolist() == [0, 0, 1, 1]
    for image, label in [*bundle.train, *bundle.test]:
        assert image.dtype == torch.float32 and image.shape == (1, 6, 6)
        assert torch.all(image == (1.0 if label == 1 else -1.0))


def test_folder_rgb_large_images_are_resized(tmp_path: Path) -> None:
    write_image_folder(tmp_path, "RGB", (100, 80))
    bundle = load_dataset(f"folder:{tmp_path}")
    assert bundle.input_shape == (3, 64, 64)
    assert bundle.test[1][0].shape == (3, 64, 64)


def test_folder_without_test_split(tmp_path: Path) -> None:
    write_image_folder(tmp_path, "L", (4, 4))
    shutil.rmtree(tmp_path / "test")
    with pytest.raises(DatasetError, match="no test/ subfolder"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_with_mismatched_classes(tmp_path: Path) -> None:
    write_image_folder(tmp_path, "L", (4, 4))
    (tmp_path / "test" / "pneumonia").rename(tmp_path / "test" / "covid")
    with pytest.raises(DatasetError, match="same class subfolders"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_with_an_empty_class(tmp_path: Path) -> None:
    write_image_folder(tmp_path, "L", (4, 4))
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DatasetError, match="no valid file for the classes empty"):
        load_dataset(f"folder:{tmp_path}")


# --- python:module:function ---------------------------------------------------------------

PLUGIN_SOURCE = textwrap.dedent(
    """
    import torch
    from torch.utils.data import TensorDataset

    def pair(n):
        images = torch.arange(n * 2 * 5 * 5, dtype=torch.float32).reshape(n, 2, 5, 5)
        return TensorDataset(images, torch.arange(n) % 3)

    def good():
        return pair(9), pair(6), 3

    def two_things():
        return pair(9), pair(6)

    def labels_out_of_range():
        return pair(9), pair(6), 2

    def rows():
        return TensorDataset(torch.zeros(4, 30), torch.zeros(4, dtype=torch.long)), TensorDataset(
            torch.ones(2, 30), torch.ones(2, dtype=torch.long)), 2

    def scalar_examples():
        return TensorDataset(torch.zeros(4), torch.zeros(4, dtype=torch.long)), pair(3), 3

    not_callable = 42
    """
)


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "fedcomp_test_dataset_plugin"
    (tmp_path / f"{name}.py").write_text(PLUGIN_SOURCE)
    (tmp_path / "fedcomp_test_broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_python_plugin_dataset(plugin_module: str) -> None:
    bundle = load_dataset(f"python:{plugin_module}:good")
    assert (bundle.num_classes, bundle.input_shape) == (3, (2, 5, 5))
    assert (len(bundle.train), len(bundle.test)) == (9, 6)
    assert bundle.name == f"python:{plugin_module}:good"
    assert labels_of(bundle.train).tolist() == [i % 3 for i in range(9)]


def test_python_plugin_dataset_of_table_rows(plugin_module: str) -> None:
    bundle = load_dataset(f"python:{plugin_module}:rows")
    assert (bundle.num_classes, bundle.input_shape) == (2, (30,))


@pytest.mark.parametrize(
    ("function", "complaint"),
    [
        ("two_things", "expected \\(train_dataset, test_dataset, num_classes\\)"),
        ("labels_out_of_range", "outside range\\(2\\)"),
        ("scalar_examples", "float tensor of the example's shape"),
        ("missing", "has no attribute 'missing'"),
        ("not_callable", "non-callable 'not_callable'"),
    ],
)
def test_python_plugin_dataset_errors(plugin_module: str, function: str, complaint: str) -> None:
    with pytest.raises(DatasetError, match=complaint):
        load_dataset(f"python:{plugin_module}:{function}")


def test_python_plugin_that_does_not_import(plugin_module: str) -> None:
    with pytest.raises(DatasetError, match="cannot import module 'no_such_module_here'"):
        load_dataset("python:no_such_module_here:load")
    with pytest.raises(DatasetError, match="RuntimeError: boom"):
        load_dataset("python:fedcomp_test_broken_plugin:load")
    with pytest.raises(DatasetError, match="python:MODULE:FUNCTION"):
        load_dataset(f"python:{plugin_module}")


# --- names, errors, labels_of -------------------------------------------------------------


def test_unknown_dataset_lists_the_choices() -> None:
    assert dataset_names() == ["cifar10", "digits", "fashion-mnist", "folder:PATH", "clients:PATH", "csv:PATH",
                               "parquet:PATH", "hf:PATH", "python:MODULE:FUNCTION"]
    with pytest.raises(DatasetError) as error:
        load_dataset("mnist")
    assert isinstance(error.value, ValueError)
    for name in dataset_names():
        assert name in str(error.value)


class ItemsOnly(Dataset):
    """A dataset exposing nothing but items, so labels_of has to read them."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, 2, 2), torch.tensor(4 - index)


def test_labels_of_each_kind_of_dataset() -> None:
    digits = load_dataset("digits").train
    expected = np.asarray(digits.targets)
    subset = Subset(digits, [5, 1, 3])
    tensors = TensorDataset(torch.zeros(3, 1, 2, 2), torch.tensor([2, 0, 1]))
    for dataset, labels in [
        (digits, expected),
        (subset, expected[[5, 1, 3]]),
        (Subset(subset, [2, 0]), expected[[3, 5]]),
        (tensors, np.array([2, 0, 1])),
        (ItemsOnly(), np.array([4, 3, 2, 1, 0])),
    ]:
        got = labels_of(dataset)
        assert got.dtype == np.int64
        assert np.array_equal(got, labels)
