import pytest
import torch

from rupq.errors import ConfigError
from rupq.models import architecture_of, create_model


@pytest.mark.parametrize("arch, shape", [("small_resnet", (2, 1, 28, 28)), ("resnet18", (1, 3, 64, 64)),
                                         ("mobilenet_v2", (1, 3, 64, 64))])
def test_factory_builds_and_remembers_the_architecture(arch, shape):
    model = create_model(arch)
    assert model(torch.randn(shape)).shape[1] == (10 if arch == "small_resnet" else 1000)
    assert architecture_of(model) == {"name": arch, "kwargs": {}}


def test_small_resnet_names_follow_torchvision():
    names = {n for n, m in create_model("small_resnet").named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert {"conv1", "layer1.0.conv1", "layer2.0.downsample.0", "layer3.0.conv2"} <= names


def test_unknown_arch_suggests():
    with pytest.raises(ConfigError, match="unknown model_arch 'resnet19'; did you mean resnet18"):
        create_model("resnet19")
