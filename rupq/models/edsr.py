"""EDSR (Lim et al., "Enhanced deep residual networks for single image super-resolution", CVPRW 2017).

The baseline EDSR: mean shift, a 3×3 head convolution, residual blocks without batch norm
(conv-ReLU-conv), a last body convolution with a long skip from the head, a pixel-shuffle
upsampler and a 3×3 output convolution, then the mean added back. Module names follow the
per-layer exceptions of the original RUPQ configs:

    head.0                         first convolution
    body.N.conv_block.{0,2}        the two convolutions of residual block N
    body.<num_blocks>              last body convolution (``body.16`` by default)
    tail.0.{0,2,…}                 upsampler: one convolution (then PixelShuffle) per ×2 step
    tail.1                         output convolution

The input is expected in ``[0, rgb_range]`` (the original RUPQ configs use ``normalize: False``, i.e. 0–255
pixels). The mean shift is a fixed buffer, not a ``Conv2d``, so that the model parser does not
wrap and quantize it.
"""

import torch
import torch.nn as nn

from rupq.models import register_model
from rupq.models.srresnet import upsampling_steps

# Mean RGB of the DIV2K training images in [0, 1] (the value the EDSR authors use).
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Module):
    """Adds ``sign · rgb_range · DIV2K_RGB_MEAN`` to each channel."""

    def __init__(self, rgb_range: float, sign: int):
        super().__init__()
        shift = sign * rgb_range * torch.tensor(DIV2K_RGB_MEAN)
        self.register_buffer("mean_shift", shift.view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mean_shift


class ResidualBlock(nn.Module):
    def __init__(self, num_features: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(num_features, num_features, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_features, num_features, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class Upsampler(nn.Sequential):
    """``Conv2d → PixelShuffle`` per factor of :func:`upsampling_steps`."""

    def __init__(self, scale: int, num_features: int):
        layers = []
        for factor in upsampling_steps(scale):
            layers += [nn.Conv2d(num_features, num_features * factor**2, kernel_size=3, padding=1),
                       nn.PixelShuffle(factor)]
        super().__init__(*layers)


class EDSR(nn.Module):
    def __init__(self, scale: int = 2, num_blocks: int = 16, num_features: int = 64, rgb_range: float = 255.0,
                 in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        self.scale = scale
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.head = nn.Sequential(nn.Conv2d(in_channels, num_features, kernel_size=3, padding=1))
        self.body = nn.Sequential(
            *[ResidualBlock(num_features) for _ in range(num_blocks)],
            nn.Conv2d(num_features, num_features, kernel_size=3, padding=1),
        )
        self.tail = nn.Sequential(
            Upsampler(scale, num_features), nn.Conv2d(num_features, out_channels, kernel_size=3, padding=1)
        )
        self.add_mean = MeanShift(rgb_range, sign=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x))
        x = x + self.body(x)
        return self.add_mean(self.tail(x))


@register_model
def edsr(scale: int = 2, num_blocks: int = 16, num_features: int = 64, rgb_range: float = 255.0) -> nn.Module:
    return EDSR(scale=scale, num_blocks=num_blocks, num_features=num_features, rgb_range=rgb_range)
