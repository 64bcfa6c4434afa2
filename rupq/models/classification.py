"""Image classifiers: torchvision's ResNet-18 and MobileNet-v2, and a small ResNet for 28×28 inputs."""

import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock

from rupq.models import register_model


@register_model
def resnet18(num_classes: int = 1000) -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


# torchvision's MobileNet-v2 stages: expansion t, channels c, blocks n, stride of the first block s.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))


@register_model
def mobilenet_v2(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    in_channels: int = 3,
    stem_stride: int = 2,
    stage_strides: tuple | None = None,
) -> nn.Module:
    """torchvision's MobileNet-v2; the defaults are the ImageNet model.

    For small images (Fashion-MNIST's 28×28) ``stem_stride`` and ``stage_strides`` (one per stage of
    ``MOBILENET_V2_STAGES``) downsample less, so that the last stages do not run on 1×1 maps, and
    ``in_channels`` sets the stem's input. The blocks and their names (``features.N…``) stay those of
    the ImageNet model, so the paper's per-layer bit-width and half-wave exceptions still apply.
    """
    strides = tuple(stage_strides) if stage_strides is not None else tuple(s for *_, s in MOBILENET_V2_STAGES)
    if len(strides) != len(MOBILENET_V2_STAGES):
        raise ValueError(f"stage_strides needs {len(MOBILENET_V2_STAGES)} strides, one per stage, got {list(strides)}")
    stages = [[t, c, n, s] for (t, c, n, _), s in zip(MOBILENET_V2_STAGES, strides)]
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult,
                                            inverted_residual_setting=stages)
    stem = model.features[0][0]
    if in_channels != stem.in_channels or stem_stride != stem.stride[0]:
        model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stem_stride, 1, bias=False)
        nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")  # torchvision's init of its convs
    return model


class SmallResNet(nn.Module):
    """ResNet for small single-channel images (Fashion-MNIST), with torchvision's layer names.

    A 3×3 stem at full resolution, then one stage per entry of ``widths`` (each after the first
    halves the resolution), global average pooling and ``fc``.
    """

    def __init__(self, in_channels=1, num_classes=10, widths=(16, 32, 64), blocks=(1, 1, 1)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, channels = [], widths[0]
        for index, (width, depth) in enumerate(zip(widths, blocks)):
            stride = 1 if index == 0 else 2
            layers = []
            for block in range(depth):
                downsample = None
                if block == 0 and (stride != 1 or channels != width):
                    downsample = nn.Sequential(
                        nn.Conv2d(channels, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
                    )
                layers.append(BasicBlock(channels, width, stride if block == 0 else 1, downsample))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layers = len(stages)
        for index, stage in enumerate(stages, start=1):
            self.add_module(f"layer{index}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for index in range(1, self.layers + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(self.avgpool(x).flatten(1))


@register_model
def small_resnet(
    in_channels: int = 1, num_classes: int = 10, widths: tuple = (16, 32, 64), blocks: tuple = (1, 1, 1)
) -> nn.Module:
    return SmallResNet(in_channels, num_classes, tuple(widths), tuple(blocks))
