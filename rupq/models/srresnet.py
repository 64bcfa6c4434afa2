"""SRResNet (Ledig et al., "Photo-realistic single image super-resolution using a GAN", CVPR 2017).

A 9×9 convolution, residual blocks (conv-BN-PReLU-conv-BN), a 3×3 conv-BN joined to the first
layer's output by a long skip, pixel-shuffle upsamplers and a 9×9 output convolution. Module
names follow the per-layer exceptions of the original RUPQ configs:

    conv1.0                          first 9×9 convolution (followed by conv1.1, a PReLU)
    res_blocks.N.conv_block.{0,3}    the two convolutions of residual block N
    conv2.0                          convolution after the residual blocks
    upsampling.{0,3,…}               one convolution (then PixelShuffle, PReLU) per ×2 step
    conv3.0                          last 9×9 convolution

The output is not squashed (no tanh): with the data normalized as ``(x − 127.5) / 51`` the
targets lie in [−2.5, 2.5] and the PSNR metric clamps to that range.
"""

import math

import torch
import torch.nn as nn

from rupq.models import register_model


class ResidualBlock(nn.Module):
    def __init__(self, num_features: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(num_features, num_features, kernel_size=3, padding=1),
            nn.BatchNorm2d(num_features),
            nn.PReLU(),
            nn.Conv2d(num_features, num_features, kernel_size=3, padding=1),
            nn.BatchNorm2d(num_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def upsampling_steps(scale: int) -> list[int]:
    """Pixel-shuffle factors whose product is ``scale``: ×2 steps for powers of two, or one ×3."""
    if scale == 3:
        return [3]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    raise ValueError(f"scale must be 2, 3, 4 or a higher power of two, got {scale}")


class SRResNet(nn.Module):
    def __init__(self, scale: int = 4, num_blocks: int = 5, num_features: int = 64, in_channels: int = 3,
                 out_channels: int = 3):
        super().__init__()
        self.scale = scale
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, num_features, kernel_size=9, padding=4), nn.PReLU())
        self.res_blocks = nn.Sequential(*[ResidualBlock(num_features) for _ in range(num_blocks)])
        self.conv2 = nn.Sequential(
            nn.Conv2d(num_features, num_features, kernel_size=3, padding=1), nn.BatchNorm2d(num_features)
        )
        # A flat Sequential, as in the original, so that the convolutions are upsampling.0, .3, …
        upsampling = []
        for factor in upsampling_steps(scale):
            upsampling += [
                nn.Conv2d(num_features, num_features * factor**2, kernel_size=3, padding=1),
                nn.PixelShuffle(factor),
                nn.PReLU(),
            ]
        self.upsampling = nn.Sequential(*upsampling)
        self.conv3 = nn.Sequential(nn.Conv2d(num_features, out_channels, kernel_size=9, padding=4))

        # The original initialisation: He-normal over the fan-out, zero biases.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv1(x)
        x = features + self.conv2(self.res_blocks(features))
        return self.conv3(self.upsampling(x))


@register_model
def srresnet(scale: int = 4, num_blocks: int = 5, num_features: int = 64) -> nn.Module:
    return SRResNet(scale=scale, num_blocks=num_blocks, num_features=num_features)
