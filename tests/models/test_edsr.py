import pytest
import torch
import torch.nn as nn

from rupq.models import create_model
from rupq.models.edsr import DIV2K_RGB_MEAN


def conv_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def test_module_names_of_the_seed_configs():
    model = create_model("edsr")
    blocks = [f"body.{n}.conv_block.{i}" for n in range(16) for i in (0, 2)]
    assert conv_names(model) == ["head.0", *blocks, "body.16", "tail.0.0", "tail.1"]
    assert model.head[0].out_channels == 64
    assert isinstance(model.body[0].conv_block[1], nn.ReLU)


def test_mean_shift_is_a_fixed_buffer_not_a_layer():
    model = create_model("edsr", num_blocks=1, num_features=4)
    assert list(model.sub_mean.parameters()) == [] and list(model.add_mean.parameters()) == []
    shift = torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1) * 255
    assert torch.allclose(model.add_mean.mean_shift, shift) and torch.allclose(model.sub_mean.mean_shift, -shift)
    assert "sub_mean.mean_shift" in model.state_dict()
    # With every convolution zeroed the output is the mean colour: the shift is added back at the end.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    assert torch.allclose(model(torch.rand(1, 3, 5, 5) * 255), shift.expand(1, 3, 10, 10))


@pytest.mark.parametrize("scale, upsampler", [(2, ["tail.0.0"]), (3, ["tail.0.0"]), (4, ["tail.0.0", "tail.0.2"])])
def test_output_shape(scale, upsampler):
    model = create_model("edsr", scale=scale, num_blocks=2, num_features=8)
    assert model(torch.rand(2, 3, 6, 9) * 255).shape == (2, 3, 6 * scale, 9 * scale)
    assert [name for name in conv_names(model) if name.startswith("tail.0")] == upsampler


def test_arguments():
    model = create_model("edsr", num_blocks=3, num_features=16)
    assert conv_names(model)[-3:] == ["body.3", "tail.0.0", "tail.1"]
    assert model.head[0].out_channels == 16
