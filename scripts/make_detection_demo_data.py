"""Build a small object-detection dataset in the COCO list-file layout from Fashion-MNIST items,
so that the detection pipeline (YOLO, mAP) can be tried offline on a CPU.

    python scripts/make_detection_demo_data.py --out data/detection_demo [--train 2000] [--val 200]

Each image is a canvas of 160–224 × 160–224 pixels (a smooth random colour gradient with
noise) on which 1–4 Fashion-MNIST items are pasted, tinted with a random bright colour, at
random positions, without overlapping, scaled so that their longer side is 40–96 pixels. The
item's grey level is its opacity, and its box is the exact extent of its visible pixels (opacity
above 10 %). Training items come from Fashion-MNIST's training split, validation items from its
test split. Writes::

    OUT/images/{train,val}/000000.png …    the canvases
    OUT/labels/{train,val}/000000.txt …    one `class cx cy w h` line per item (normalized)
    OUT/trainvalno5k.txt, OUT/5k.txt       the image lists (paths relative to OUT)
    OUT/coco.names                         the 10 Fashion-MNIST class names
    OUT/datasets_info.yaml                 `coco: .` for RUPQ_DATASETS_INFO

Fashion-MNIST is read from /usr/share/datasets/fashion-mnist (Debian package
dataset-fashion-mnist) or the configured ``fashion_mnist`` folder; nothing is downloaded.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from rupq.dataloaders.fashion_mnist import CLASSES, FashionMNISTDataloader

CANVAS_SIDES = (160, 224)
ITEM_SIDES = (40, 96)
ITEMS_PER_IMAGE = (1, 4)
VISIBLE_OPACITY = 0.1


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A dim colour gradient between two random corners, plus Gaussian noise (float, 0–255)."""
    start, end = rng.uniform(20, 110, size=3), rng.uniform(20, 110, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = (xs * np.cos(angle) + ys * np.sin(angle)).astype(np.float32)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    canvas = start + ramp[..., None] * (end - start)
    return canvas + rng.normal(0, 6, size=canvas.shape)


def paste(canvas: np.ndarray, item: np.ndarray, rng: np.random.Generator, taken: list) -> list[float] | None:
    """Paste one 28×28 item at a random free place; return its exact box ``[x1, y1, x2, y2]``."""
    height, width = canvas.shape[:2]
    side = int(rng.integers(ITEM_SIDES[0], ITEM_SIDES[1] + 1))
    opacity = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR), dtype=np.float32) / 255
    rows, cols = np.nonzero(opacity > VISIBLE_OPACITY)
    if rows.size == 0:
        return None
    opacity = opacity[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]  # crop to the visible extent
    item_height, item_width = opacity.shape
    if item_height >= height or item_width >= width:
        return None
    for _ in range(50):  # a few tries to find a place that overlaps no earlier item
        x = int(rng.integers(0, width - item_width + 1))
        y = int(rng.integers(0, height - item_height + 1))
        box = [x, y, x + item_width, y + item_height]
        if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
            break
    else:
        return None
    tint = rng.uniform(150, 255, size=3)
    region = canvas[y : y + item_height, x : x + item_width]
    alpha = opacity[..., None]
    canvas[y : y + item_height, x : x + item_width] = region * (1 - alpha) + tint * alpha
    return box


def make_split(out: Path, split: str, images: np.ndarray, labels: np.ndarray, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    listed, boxes_written = [], 0
    for number in range(count):
        height, width = (int(rng.integers(CANVAS_SIDES[0], CANVAS_SIDES[1] + 1)) for _ in range(2))
        canvas = background(rng, height, width)
        lines, taken = [], []
        for _ in range(int(rng.integers(ITEMS_PER_IMAGE[0], ITEMS_PER_IMAGE[1] + 1))):
            index = int(rng.integers(len(images)))
            box = paste(canvas, images[index], rng, taken)
            if box is None:
                continue
            taken.append(box)
            x1, y1, x2, y2 = box
            lines.append(f"{labels[index]} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                         f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
        name = f"{number:06d}"
        Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8)).save(out / "images" / split / f"{name}.jpg", quality=90)
        (out / "labels" / split / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
        listed.append(f"images/{split}/{name}.jpg")
        boxes_written += len(lines)
    print(f"{split}: {count} images, {boxes_written} boxes")
    return listed


def build(out: Path, train: int, val: int, seed: int) -> None:
    fashion_mnist = FashionMNISTDataloader(batch_size=1)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": fashion_mnist.train_dataset, "val": fashion_mnist.val_dataset}  # val: the test split
    lists = {
        split: make_split(out, split, data.images.numpy(), data.labels.numpy(), count, seed + offset)
        for offset, (split, data, count) in enumerate((("train", splits["train"], train), ("val", splits["val"], val)))
    }
    train_list, val_list = lists["train"], lists["val"]
    (out / "trainvalno5k.txt").write_text("".join(p + "\n" for p in train_list))
    (out / "5k.txt").write_text("".join(p + "\n" for p in val_list))
    (out / "coco.names").write_text("".join(name + "\n" for name in CLASSES))
    (out / "datasets_info.yaml").write_text(
        "# Written by scripts/make_detection_demo_data.py; use with RUPQ_DATASETS_INFO=<this file>\ncoco: .\n"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write the dataset into")
    parser.add_argument("--train", type=int, default=2000, help="number of training images")
    parser.add_argument("--val", type=int, default=200, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same files)")
    args = parser.parse_args(argv)
    build(args.out, args.train, args.val, args.seed)
    print(f"wrote {args.out}; train with RUPQ_DATASETS_INFO={args.out / 'datasets_info.yaml'}")


if __name__ == "__main__":
    main()
