import pytest
import torch
import torch.nn as nn

from rupq.models import create_model


def conv_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def test_module_names_of_the_seed_configs():
    model = create_model("srresnet")
    blocks = [f"res_blocks.{n}.conv_block.{i}" for n in range(5) for i in (0, 3)]
    assert conv_names(model) == ["conv1.0", *blocks, "conv2.0", "upsampling.0", "upsampling.3", "conv3.0"]
    assert model.conv1[0].kernel_size == (9, 9) and model.conv3[0].kernel_size == (9, 9)
    assert isinstance(model.conv1[1], nn.PReLU)
    assert isinstance(model.res_blocks[0].conv_block[1], nn.BatchNorm2d)
    assert [type(m) for m in model.upsampling] == [nn.Conv2d, nn.PixelShuffle, nn.PReLU] * 2


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape(scale):
    model = create_model("srresnet", scale=scale, num_blocks=2, num_features=8)
    assert model(torch.randn(2, 3, 10, 7)).shape == (2, 3, 10 * scale, 7 * scale)


def test_arguments():
    model = create_model("srresnet", num_blocks=3, num_features=16)
    assert len(model.res_blocks) == 3 and model.conv1[0].out_channels == 16
    assert model.rupq_arch == {"name": "srresnet", "kwargs": {"num_blocks": 3, "num_features": 16}}
    with pytest.raises(ValueError, match="scale must be 2, 3, 4"):
        create_model("srresnet", scale=5)
