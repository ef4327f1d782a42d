"""Image folders: ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` via torchvision."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

from fedcomp.data.bundle import DatasetBundle
from fedcomp.errors import DatasetError

# Images are resized to a square of the first training image's longer side, at most this,
# so that large scans (e.g. chest X-rays) stay trainable on a CPU.
MAX_SIDE = 64
GREYSCALE_MODES = ("1", "L", "I", "I;16")


def open_as(path: str, mode: str) -> Image.Image:
    """Read one image file converted to ``mode`` (ImageFolder's own loader forces RGB)."""
    with Image.open(path) as image:
        return image.convert(mode)


def load_folder(root: Path) -> DatasetBundle:
    """An ``ImageFolder`` pair with classes named by the subfolders of ``root/train``.

    Greyscale images (first training image in mode ``L``/``I``/``1``) stay one channel,
    anything else becomes RGB; pixels are scaled to [-1, 1].
    """
    layout = f"{root}/train/<class>/<image> and {root}/test/<class>/<image>"
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DatasetError(f"folder dataset {root}: no {split}/ subfolder; expected {layout}")
    try:
        train = ImageFolder(str(root / "train"))
        test = ImageFolder(str(root / "test"))
    except OSError as exc:  # no class subfolders, or a class without images
        raise DatasetError(f"folder dataset {root}: {exc}; expected {layout}") from exc
    if train.classes != test.classes:
        raise DatasetError(
            f"folder dataset {root}: train/ has classes {train.classes} but test/ has "
            f"{test.classes}; both need the same class subfolders"
        )
    first_path = train.samples[0][0]
    try:
        with Image.open(first_path) as first:
            greyscale = first.mode in GREYSCALE_MODES
            side = min(max(first.size), MAX_SIDE)
    except OSError as exc:
        raise DatasetError(f"folder dataset {root}: cannot read {first_path}: {exc}") from exc
    channels = 1 if greyscale else 3
    to_tensor = transforms.Compose(
        [
            transforms.Resize((side, side)),
            transforms.ToTensor(),
            transforms.Normalize((0.5,) * channels, (0.5,) * channels),
        ]
    )
    for dataset in (train, test):
        dataset.loader = partial(open_as, mode="L" if greyscale else "RGB")
        dataset.transform = to_tensor
    return DatasetBundle(
        train,
        test,
        num_classes=len(train.classes),
        input_shape=(channels, side, side),
        name=f"folder:{root}",
    )
