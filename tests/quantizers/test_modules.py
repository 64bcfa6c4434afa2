import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rupq.errors import ConfigError
from rupq.quantizers import (
    MeanStdInitializer,
    MinErrorInitializer,
    ModuleQuantizer,
    QuantConv2d,
    QuantLinear,
    Standardization,
    StepOffsetQuantizer,
    StepQuantizer,
)


def _module_quantizer(weight_dims):
    return ModuleQuantizer(
        input_quantizer=StepOffsetQuantizer(MinErrorInitializer(n_iters=30), Standardization(momentum=0.9, std_init=1.0)),
        weight_quantizer=StepQuantizer(MeanStdInitializer(), Standardization(dim=weight_dims), per_channel=True),
    )


def _wrapped_conv(conv):
    return QuantConv2d(_module_quantizer([1, 2, 3])).attach(conv, 4, 3, False, "conv")


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True),
        nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2, bias=False),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
    ],
)
def test_quant_conv2d_is_the_layer_on_quantized_operands(conv):
    torch.manual_seed(0)
    layer = _wrapped_conv(conv)
    assert layer.weight is conv.weight and layer.module is conv
    x = torch.randn(2, 4, 9, 9)
    layer.eval()
    layer(x)  # initialise
    with torch.no_grad():
        out = layer(x)
        xq = layer.quantizer.input_quantizer(x)
        wq = layer.quantizer.weight_quantizer(conv.weight)
    if conv.padding_mode == "reflect":
        expected = F.conv2d(F.pad(xq, [1, 1, 1, 1], mode="reflect"), wq, conv.bias)
    else:
        expected = F.conv2d(xq, wq, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert torch.equal(out, expected)
    assert len(torch.unique(xq)) <= 16 and len(torch.unique(wq[0])) <= 8


def test_quant_linear():
    torch.manual_seed(0)
    layer = QuantLinear(_module_quantizer([1])).attach(nn.Linear(5, 3), 4, 4, True, "fc")
    x = torch.randn(7, 5).relu()
    layer.eval()
    layer(x)
    with torch.no_grad():
        expected = F.linear(layer.quantizer.input_quantizer(x), layer.quantizer.weight_quantizer(layer.module.weight), layer.module.bias)
        assert torch.equal(layer(x), expected)
    assert layer.quantizer.weight_quantizer.step.shape == (3, 1)


def test_training_gradients_reach_every_parameter():
    layer = _wrapped_conv(nn.Conv2d(4, 6, 3))
    layer(torch.randn(2, 4, 6, 6)).sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_eval_weight_cache_is_reused_and_invalidated():
    layer = _wrapped_conv(nn.Conv2d(4, 6, 3))
    x = torch.randn(2, 4, 6, 6)
    layer(x)
    layer.eval()
    with torch.no_grad():
        first = layer.quantized_weight()
        assert layer.quantized_weight() is first
        layer.module.weight.mul_(2)  # changed in place: recomputed
        second = layer.quantized_weight()
        assert second is not first and not torch.equal(second, first)
        layer.quantizer.weight_quantizer.step.mul_(2)
        third = layer.quantized_weight()
        assert third is not second
        layer.load_state_dict(layer.state_dict())
        assert layer._weight_cache is None
        fourth = layer.quantized_weight()
        assert fourth is not third
        layer.eval()  # already in eval: keeps the cache
        assert layer.quantized_weight() is fourth
    layer.train()
    assert layer._weight_cache is None
    assert layer.quantized_weight().requires_grad


def test_eval_with_autograd_does_not_use_the_cache():
    layer = _wrapped_conv(nn.Conv2d(4, 6, 3))
    layer(torch.randn(2, 4, 6, 6))
    layer.eval()
    layer(torch.randn(2, 4, 6, 6)).sum().backward()
    assert layer.module.weight.grad is not None


def test_prototype_and_type_checks():
    prototype = QuantConv2d(_module_quantizer([1, 2, 3]))
    with pytest.raises(RuntimeError, match="prototype has no layer"):
        prototype(torch.randn(1, 4, 5, 5))
    with pytest.raises(ConfigError, match="layer 'fc' is a Linear; QuantConv2d wraps Conv2d layers"):
        QuantConv2d(_module_quantizer([1, 2, 3])).attach(nn.Linear(3, 3), 4, 4, True, "fc")
    with pytest.raises(ConfigError, match="input_quantizer must be a StepQuantizer"):
        ModuleQuantizer(Standardization(), StepQuantizer(MinErrorInitializer()))
    per_channel_input = ModuleQuantizer(StepQuantizer(MinErrorInitializer(), per_channel=True), StepQuantizer(MinErrorInitializer()))
    with pytest.raises(ConfigError, match="layer 'c': per_channel is supported for weight quantizers only"):
        QuantConv2d(per_channel_input).attach(nn.Conv2d(2, 2, 1), 4, 4, True, "c")


def test_autocast_forward_and_backward():
    layer = _wrapped_conv(nn.Conv2d(4, 6, 3))
    x = torch.randn(2, 4, 6, 6)
    layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.isfinite(layer.quantizer.weight_quantizer.step.grad).all()
