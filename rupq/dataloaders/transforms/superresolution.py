"""Paired transforms for super-resolution: what is done to a low-resolution (LR) image is done to
its high-resolution (HR) counterpart at ``scale`` times the coordinates.

Images are ``H×W×3`` uint8 arrays (possibly memory-mapped) until :func:`to_tensor`. Randomness
comes from torch's generator, so that DataLoader workers (seeded by torch) and resumed runs
draw the same crops.
"""

import numpy as np
import torch
from PIL import Image

# The original RUPQ code's normalization of 0–255 pixels: (x − 127.5) / 51 maps [0, 255] onto [−2.5, 2.5].
PIXEL_MEAN = 127.5
PIXEL_STD = 51.0


def random_aligned_crop(lr: np.ndarray, hr: np.ndarray, scale: int, hr_patch: int) -> tuple[np.ndarray, np.ndarray]:
    """A random ``hr_patch / scale`` square of ``lr`` and the ``hr_patch`` square of ``hr`` it covers.

    The LR corner ``(y, x)`` is uniform over the valid positions; the HR corner is ``(scale·y, scale·x)``.
    """
    lr_patch = hr_patch // scale
    height, width = lr.shape[:2]
    y = int(torch.randint(0, height - lr_patch + 1, ()))
    x = int(torch.randint(0, width - lr_patch + 1, ()))
    lr = lr[y : y + lr_patch, x : x + lr_patch]
    hr = hr[scale * y : scale * (y + lr_patch), scale * x : scale * (x + lr_patch)]
    return lr, hr


def random_dihedral(lr: np.ndarray, hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 rotations by multiples of 90° and their mirror images, the same for both.

    Three fair coins: flip left-right, flip up-down, swap rows and columns (transpose); together
    they give every element of the square's symmetry group with probability 1/8.
    """
    choice = int(torch.randint(0, 8, ()))
    if choice & 1:
        lr, hr = lr[:, ::-1], hr[:, ::-1]
    if choice & 2:
        lr, hr = lr[::-1], hr[::-1]
    if choice & 4:
        lr, hr = lr.transpose(1, 0, 2), hr.transpose(1, 0, 2)
    return lr, hr


def to_tensor(image: np.ndarray, normalize: bool) -> torch.Tensor:
    """``H×W×3`` uint8 → ``3×H×W`` float32, as ``(x − 127.5) / 51`` when ``normalize`` else 0–255."""
    # One copy: channels first and float32 at once (the source may be a read-only memory map).
    # Plain numpy is several times faster than torch operators on tensors this small.
    array = np.array(image.transpose(2, 0, 1), dtype=np.float32)
    if normalize:
        array -= PIXEL_MEAN
        array /= PIXEL_STD
    return torch.from_numpy(array)


def to_pixels(images: torch.Tensor, normalize: bool) -> np.ndarray:
    """Inverse of :func:`to_tensor` for a batch: ``N×3×H×W`` → ``N×H×W×3`` uint8 (rounded, clipped)."""
    images = images.detach().float().cpu()
    if normalize:
        images = images * PIXEL_STD + PIXEL_MEAN
    return images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def bicubic_upscale(lr: torch.Tensor, scale: int, normalize: bool) -> torch.Tensor:
    """Bicubic interpolation of a batch of LR images by ``scale`` (the reference every SR model must beat).

    Uses Pillow's bicubic filter (Keys kernel, a = −0.5, as MATLAB's ``imresize``) on the 8-bit
    pixels, which is also how the demo data's LR images are made. Returns the same value range
    as the input.
    """
    upscaled = []
    for pixels in to_pixels(lr, normalize):
        height, width = pixels.shape[:2]
        image = Image.fromarray(pixels).resize((width * scale, height * scale), Image.BICUBIC)
        upscaled.append(to_tensor(np.asarray(image), normalize))
    return torch.stack(upscaled).to(lr.device)
