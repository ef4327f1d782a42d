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


def image_transform(first: Path, source: str) -> tuple[transforms.Compose, str, tuple[int, int, int]]:
    """The transform, PIL mode and example shape set by a dataset's first image.

    Greyscale images (mode ``L``/``I``/``1``) stay one channel, anything else becomes RGB;
    images are resized to a square of the first image's longer side (at most ``MAX_SIDE``)
    and pixels scaled to [-1, 1].
    """
    try:
        with Image.open(first) as image:
            greyscale = image.mode in GREYSCALE_MODES
            side = min(max(image.size), MAX_SIDE)
    except OSError as exc:
        raise DatasetError(f"{source}: cannot read {first}: {exc}") from exc
    channels = 1 if greyscale else 3
    to_tensor = transforms.Compose(
        [
            transforms.Resize((side, side)),
            transforms.ToTensor(),
            transforms.Normalize((0.5,) * channels, (0.5,) * channels),
        ]
    )
    return to_tensor, "L" if greyscale else "RGB", (channels, side, side)


def load_folder(root: Path) -> DatasetBundle:
    """An ``ImageFolder`` pair with classes named by the subfolders of ``root/train``,
    transformed as `image_transform` says for the first training image."""
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
    to_tensor, mode, input_shape = image_transform(Path(train.samples[0][0]), f"folder dataset {root}")
    for dataset in (train, test):
        dataset.loader = partial(open_as, mode=mode)
        dataset.transform = to_tensor
    return DatasetBundle(
        train,
        test,
        num_classes=len(train.classes),
        input_shape=input_shape,
        name=f"folder:{root}",
    )
