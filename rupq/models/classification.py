"""Image classifiers: torchvision's ResNet-18 and MobileNet-v2, and a small ResNet for 28×28 inputs."""

import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock

from rupq.models import register_model


@register_model
def resnet18(num_classes: int = 1000) -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


@register_model
def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    return torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)


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
