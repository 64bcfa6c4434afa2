"""``!PSNR``: peak signal-to-noise ratio on the luma (Y) channel, the usual super-resolution score.

For each image of a batch (``N×3×H×W``, RGB in ``[min_val, max_val]``):

1. map to ``[0, 255]``:  ``v = 255 · clamp((x − min_val) / (max_val − min_val), 0, 1)``;
2. crop ``boundary_size`` pixels from every border (the upscaling factor, by convention);
3. luma of ITU-R BT.601 for 8-bit studio range (the ``rgb2ycbcr`` of MATLAB used by the
   EDSR/RCAN evaluation code):  ``Y = 16 + (65.481·R + 128.553·G + 24.966·B) / 255``,
   with R, G, B in ``[0, 255]`` (ITU-R BT.601-7, Table 3, scaled by 219/255);
4. ``PSNR = 10 · log10(255² / MSE(Y_pred, Y_target))`` in dB.

``compute()`` returns the mean PSNR over images (not the PSNR of the pooled MSE). Values are
not rounded to integers before the comparison, as in the original implementation.

Identical images: an image whose Y channels match exactly (``MSE = 0``, PSNR = +∞) is left out
of the mean and counted apart, so that one saturated patch (e.g. clipped sky where prediction
and target both clamp to 255) does not turn an epoch's mean into ∞. ``compute()`` returns
``+inf`` when every image was identical and NaN when no image was seen.
"""

import math

import torch

from rupq.tools.metrics.base import Metric

# BT.601 luma weights for R, G, B in [0, 255] (studio-range Y in [16, 235]).
LUMA_WEIGHTS = (65.481, 128.553, 24.966)
LUMA_OFFSET = 16.0


def to_pixel_range(images: torch.Tensor, min_val: float, max_val: float) -> torch.Tensor:
    """``[min_val, max_val]`` → ``[0, 255]``, clamped."""
    return ((images.double() - min_val) / (max_val - min_val)).clamp(0.0, 1.0) * 255.0


def luma(images: torch.Tensor) -> torch.Tensor:
    """BT.601 Y (``N×H×W``) of RGB images (``N×3×H×W``) in ``[0, 255]``."""
    weights = images.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return LUMA_OFFSET + (images * weights).sum(dim=1) / 255.0


def crop_border(images: torch.Tensor, size: int) -> torch.Tensor:
    if size == 0:
        return images
    return images[..., size:-size, size:-size]


class PSNR(Metric):
    def __init__(self, min_val: float = -2.5, max_val: float = 2.5, boundary_size: int = 4):
        super().__init__()
        if not max_val > min_val:
            raise ValueError(f"max_val must be greater than min_val, got min_val={min_val}, max_val={max_val}")
        if not isinstance(boundary_size, int) or boundary_size < 0:
            raise ValueError(f"boundary_size must be a non-negative integer, got {boundary_size!r}")
        self.min_val, self.max_val, self.boundary_size = float(min_val), float(max_val), boundary_size

    def per_image(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """PSNR in dB of each image of the batch (``+inf`` where they are identical)."""
        if preds.shape != targets.shape:
            raise ValueError(f"PSNR: predictions {tuple(preds.shape)} and targets {tuple(targets.shape)} differ in shape")
        if preds.dim() != 4 or preds.shape[1] != 3:
            raise ValueError(f"PSNR expects RGB batches N×3×H×W, got {tuple(preds.shape)}")
        height, width = preds.shape[-2:]
        if min(height, width) <= 2 * self.boundary_size:
            raise ValueError(f"PSNR: images of {height}×{width} have nothing left after cropping {self.boundary_size} border pixels")
        preds, targets = (
            luma(crop_border(to_pixel_range(x.detach(), self.min_val, self.max_val), self.boundary_size))
            for x in (preds, targets)
        )
        mse = (preds - targets).pow(2).flatten(1).mean(dim=1)
        return 10.0 * torch.log10(255.0**2 / mse)

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        psnr = self.per_image(preds, targets)
        finite = torch.isfinite(psnr)
        self._add("psnr_sum", psnr[finite].sum())
        self._add("count", finite.sum())
        self._add("identical", (~finite).sum())

    def compute(self) -> float:
        count = float(self._sums.get("count", 0))
        if count > 0:
            return float(self._sums["psnr_sum"]) / count
        return math.inf if float(self._sums.get("identical", 0)) > 0 else math.nan
