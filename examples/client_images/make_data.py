"""Write per-client image folders: four clinics, each with its own images of three shapes.

Layout (what `dataset=clients:PATH` reads):

    data/clinic_a/circle/*.png   data/clinic_a/square/*.png   ...
    data/clinic_b/...            (clinic_b never saw a cross)
    data/test/circle/*.png ...   the central test set

Each clinic has its own scanner (brightness, noise) and its own mix of classes, and
clinic_b holds only two of the three classes: class names still map to the same labels on
every client. Images are 16x16 greyscale PNGs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIDE = 16
SHAPES = ("circle", "cross", "square")
# clinic -> (images per shape, brightness of the shape, noise level)
CLINICS = {
    "clinic_a": ({"circle": 40, "cross": 15, "square": 25}, 230, 20),
    "clinic_b": ({"circle": 10, "square": 50}, 170, 35),
    "clinic_c": ({"circle": 20, "cross": 40, "square": 20}, 255, 10),
    "clinic_d": ({"circle": 25, "cross": 25, "square": 10}, 200, 30),
}
TEST_PER_SHAPE = 30


def draw(shape: str, brightness: int, noise: float, rng: np.random.Generator) -> Image.Image:
    image = Image.new("L", (SIDE, SIDE), 0)
    pen = ImageDraw.Draw(image)
    size = int(rng.integers(5, 8))
    x, y = (int(v) for v in rng.integers(size, SIDE - size, 2))
    box = (x - size, y - size, x + size - 1, y + size - 1)
    if shape == "circle":
        pen.ellipse(box, outline=brightness, width=2)
    elif shape == "square":
        pen.rectangle(box, outline=brightness, width=2)
    else:
        pen.line(box, fill=brightness, width=2)
        pen.line((box[0], box[3], box[2], box[1]), fill=brightness, width=2)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, noise, (SIDE, SIDE))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def write_folder(folder: Path, counts: dict[str, int], brightness: int, noise: float,
                 rng: np.random.Generator) -> None:
    for shape, count in counts.items():
        (folder / shape).mkdir(parents=True)
        for i in range(count):
            draw(shape, brightness, noise, rng).save(folder / shape / f"{i:03d}.png")


def main() -> None:
    root = Path(__file__).resolve().parent / "data"
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for clinic, (counts, brightness, noise) in CLINICS.items():
        write_folder(root / clinic, counts, brightness, noise, rng)
    write_folder(root / "test", {shape: TEST_PER_SHAPE for shape in SHAPES}, 215, 25, rng)
    total = len(list(root.rglob("*.png")))
    print(f"wrote {total} images under {root}: {', '.join(CLINICS)} and test/")


if __name__ == "__main__":
    main()
