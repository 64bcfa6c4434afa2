"""Tiny super-resolution datasets in the DIV2K and Set14 layouts, written as real PNG files.

Each HR image is the nearest-neighbour upscaling of a random LR image, so the LR image is
exactly both the block average and the nearest downsampling of its HR image: a correctly
aligned LR/HR patch pair satisfies ``repeat(lr_patch, scale) == hr_patch`` pixel for pixel,
whatever rotation or flip was applied to both.
"""

from pathlib import Path

import numpy as np
from PIL import Image


def blocky_pair(rng, lr_size, scale, grey=False, hr_extra=(0, 0)):
    """``(lr, hr)`` uint8 arrays; ``hr_extra`` adds rows/columns of noise beyond ``scale × lr``."""
    height, width = lr_size
    lr = rng.integers(0, 256, size=(height, width) if grey else (height, width, 3), dtype=np.uint8)
    hr = lr.repeat(scale, axis=0).repeat(scale, axis=1)
    if any(hr_extra):
        padded = rng.integers(0, 256, size=(hr.shape[0] + hr_extra[0], hr.shape[1] + hr_extra[1]) + hr.shape[2:],
                              dtype=np.uint8)
        padded[: hr.shape[0], : hr.shape[1]] = hr
        hr = padded
    return lr, hr


def as_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def write_div2k(root: Path, scale=2, train_ids=(1, 2, 3), val_ids=(801,), lr_size=(12, 16), grey_ids=(),
                extra_ids=(), seed=0) -> dict:
    """DIV2K layout under ``root``; returns ``{id: (lr, hr)}`` as 3-channel arrays."""
    rng = np.random.default_rng(seed)
    hr_dir, lr_dir = root / "DIV2K_train_HR", root / "DIV2K_train_LR_bicubic" / f"X{scale}"
    hr_dir.mkdir(parents=True, exist_ok=True)
    lr_dir.mkdir(parents=True, exist_ok=True)
    images = {}
    for number in (*train_ids, *val_ids):
        lr, hr = blocky_pair(rng, lr_size, scale, grey=number in grey_ids,
                             hr_extra=(1, scale - 1) if number in extra_ids else (0, 0))
        Image.fromarray(hr).save(hr_dir / f"{number:04d}.png")
        Image.fromarray(lr).save(lr_dir / f"{number:04d}x{scale}.png")
        images[number] = (as_rgb(lr), as_rgb(hr))
    return images


def write_set14(root: Path, names=("baboon", "lenna"), scale=2, lr_size=(10, 14), grey_names=(), seed=1) -> dict:
    """Set14 layout (``HR/<name>.png``, ``LR_bicubic/X{s}/<name>x{s}.png``); returns ``{name: (lr, hr)}``."""
    rng = np.random.default_rng(seed)
    hr_dir, lr_dir = root / "HR", root / "LR_bicubic" / f"X{scale}"
    hr_dir.mkdir(parents=True, exist_ok=True)
    lr_dir.mkdir(parents=True, exist_ok=True)
    images = {}
    for name in names:
        lr, hr = blocky_pair(rng, lr_size, scale, grey=name in grey_names, hr_extra=(scale - 1, 1))
        Image.fromarray(hr).save(hr_dir / f"{name}.png")
        Image.fromarray(lr).save(lr_dir / f"{name}x{scale}.png")
        images[name] = (as_rgb(lr), as_rgb(hr))
    return images
