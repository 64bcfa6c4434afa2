"""``tiny_convnet``: a small model without BatchNorm (whose statistics would be per device), so
that a distributed run can equal a one-process run. Importing this module registers it."""

from torch import nn

from rupq.models import register_model


@register_model
def tiny_convnet(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )
