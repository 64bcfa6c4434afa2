"""Throughput of ``!DIV2KDataloader`` training batches read from its decoded-image cache.

    python bench/bench_div2k_loader.py [--root DIV2K_FOLDER] [--patch-size 96] [--scale 2] [--workers 1]

Without ``--root`` it writes a temporary DIV2K-layout folder of ``--images`` photographs
(scikit-image's and scikit-learn's bundled photos, resized to DIV2K's 2040×1356) with Pillow
bicubic LR images. The cache is filled first (not timed); then batches are drawn for
``--seconds`` and the rate is reported in patches (LR/HR pairs, augmented and normalized) per
second, for DataLoader workers = ``--workers`` and for loading in the main process.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from rupq.dataloaders import DIV2KDataloader

DIV2K_SIZE = (2040, 1356)


def photos():
    import skimage.data
    from sklearn.datasets import load_sample_image

    yield load_sample_image("china.jpg")
    yield load_sample_image("flower.jpg")
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
        yield getattr(skimage.data, name)()


def write_fake_div2k(root: Path, count: int, scale: int) -> None:
    hr_dir, lr_dir = root / "DIV2K_train_HR", root / "DIV2K_train_LR_bicubic" / f"X{scale}"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir(parents=True)
    sources = list(photos())
    for number in range(1, count + 1):
        photo = Image.fromarray(np.asarray(sources[(number - 1) % len(sources)]))
        if number > len(sources):  # a different view of the same photo
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        hr = photo.resize(DIV2K_SIZE, Image.BICUBIC)
        hr.save(hr_dir / f"{number:04d}.png", compress_level=1)
        hr.resize((DIV2K_SIZE[0] // scale, DIV2K_SIZE[1] // scale), Image.BICUBIC).save(
            lr_dir / f"{number:04d}x{scale}.png", compress_level=1
        )


def patches_per_second(data: DIV2KDataloader, seconds: float) -> tuple[float, int]:
    """Steady-state rate: the clock starts after the first batch (worker start-up excluded)."""
    patches, epoch, started = 0, 0, None
    while True:
        for lr, hr in data.train_dataloader(epoch=epoch):
            if started is None:
                started = time.perf_counter()
                continue
            patches += lr.shape[0]
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return patches / elapsed, patches
        epoch += 1


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="a DIV2K folder (default: a temporary one of photographs)")
    parser.add_argument("--images", type=int, default=16, help="images in the temporary folder")
    parser.add_argument("--patch-size", type=int, default=96)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_div2k_") as temporary:
        root = args.root
        if root is None:
            root = Path(temporary) / "DIV2K"
            print(f"writing {args.images} DIV2K-size photographs to {root} …", flush=True)
            write_fake_div2k(root, args.images, args.scale)
        results = {}
        for workers in (args.workers, 0):
            data = DIV2KDataloader(
                batch_size=args.batch_size, patch_size=args.patch_size, scale=args.scale, num_workers=workers,
                root=str(root), repeat=max(1, 4096 // args.images), cache_dir=str(Path(temporary) / "cache"),
            )
            data.train_dataset  # fills the cache (not timed)
            results[workers] = patches_per_second(data, args.seconds)
        print(f"\nDIV2K loader, ×{args.scale}, {args.patch_size}-pixel HR patches, batch {args.batch_size}, "
              f"{len(data.train_dataset.pairs)} images from the cache:")
        for workers, (rate, patches) in results.items():
            where = f"{workers} DataLoader worker{'s' if workers != 1 else ''}" if workers else "main process"
            print(f"  {where:>22}: {rate:8.0f} patches/s ({patches} patches)")


if __name__ == "__main__":
    main()
