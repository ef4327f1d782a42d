"""CIFAR-10 through torchvision, read from a local copy under the data directory."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import ClassVar

from torchvision import transforms
from torchvision.datasets import CIFAR10

from fedcomp.data.bundle import DatasetBundle
from fedcomp.errors import DatasetError

# Per-channel statistics of the CIFAR-10 training set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class LocalCIFAR10(CIFAR10):
    """torchvision's CIFAR10 that accepts any local copy in the official batch format.

    torchvision pins every batch file to the MD5 of the official release, which rejects
    subsets and re-hashes 180 MB on each load. Here a batch file only has to exist; a
    download is still verified against the archive's MD5.
    """

    train_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in CIFAR10.train_list]
    test_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in CIFAR10.test_list]
    meta: ClassVar[dict[str, str | None]] = {**CIFAR10.meta, "md5": None}


def load_cifar10(data_dir: Path, download: bool) -> DatasetBundle:
    """CIFAR-10 from ``data_dir/cifar-10-batches-py``; fetched there first if ``download``."""
    batches_dir = data_dir / CIFAR10.base_folder
    expected = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list]
    expected.append(CIFAR10.meta["filename"])
    missing = [name for name in expected if not (batches_dir / name).is_file()]
    if missing and not download:
        raise DatasetError(
            f"CIFAR-10 not found: torchvision expects the python version in {batches_dir} "
            f"(missing: {', '.join(missing)}). Extract cifar-10-python.tar.gz from "
            f"{CIFAR10.url} into {data_dir}, or run with --set data.download=true where a "
            "network is available."
        )
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    try:
        train = LocalCIFAR10(str(data_dir), train=True, transform=to_tensor, download=download)
        test = LocalCIFAR10(str(data_dir), train=False, transform=to_tensor)
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError, EOFError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        if missing:
            raise DatasetError(f"downloading CIFAR-10 into {data_dir} failed ({problem})") from exc
        raise DatasetError(
            f"CIFAR-10 in {batches_dir} could not be read ({problem}); "
            "replace it with a fresh copy of the python version."
        ) from exc
    return DatasetBundle(train, test, num_classes=10, input_shape=(3, 32, 32), name="cifar10")
