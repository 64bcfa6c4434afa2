"""Tiny detection datasets in the COCO list-file layout, drawn so that every box is exact."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASS_COLOURS = [(255, 40, 40), (40, 255, 40), (40, 40, 255)]


def write_image(root: Path, relative: str, pixels: np.ndarray, boxes) -> None:
    """Save ``pixels`` at ``root/relative`` and its ``class cx cy w h`` lines beside, under labels/.

    ``boxes`` are ``(class, x1, y1, x2, y2)`` in pixels, or None to write no label file.
    """
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    if boxes is None:
        return
    height, width = pixels.shape[:2]
    labels = root / relative.replace("images", "labels", 1)
    labels = labels.with_suffix(".txt")
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("".join(
        f"{c} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} {(x2 - x1) / width} {(y2 - y1) / height}\n"
        for c, x1, y1, x2, y2 in boxes
    ))


def rectangles_image(rng: np.random.Generator, height: int, width: int, count: int):
    """A dark image with ``count`` filled rectangles, one colour per class; returns pixels and boxes."""
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    boxes = []
    for _ in range(count):
        w, h = int(rng.integers(width // 6, width // 2)), int(rng.integers(height // 6, height // 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        cls = int(rng.integers(len(CLASS_COLOURS)))
        pixels[y : y + h, x : x + w] = CLASS_COLOURS[cls]
        boxes.append((cls, x, y, x + w, y + h))
    return pixels, boxes


def write_tiny_coco(root: Path, train: int = 8, val: int = 4, seed: int = 0, sizes=((48, 64), (64, 40))) -> Path:
    """``train``/``val`` images of rectangles (the first training image has no label file)."""
    rng = np.random.default_rng(seed)
    for split, count, list_name in (("train", train, "trainvalno5k.txt"), ("val", val, "5k.txt")):
        entries = []
        for index in range(count):
            height, width = sizes[index % len(sizes)]
            pixels, boxes = rectangles_image(rng, height, width, 1 + index % 2)
            relative = f"images/{split}/{index:04d}.png"
            write_image(root, relative, pixels, None if (split == "train" and index == 0) else boxes)
            entries.append(relative)
        (root / list_name).write_text("\n".join(entries) + "\n")
    (root / "coco.names").write_text("red\ngreen\nblue\n")
    return root


@pytest.fixture
def one_thread():
    """One intra-op thread: these small models run faster so, above all on a machine shared with
    other jobs, where two spinning OpenMP threads per process slow everything down many times."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
