from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn

import rupq.quantizers as quantizers
from rupq.errors import ConfigError
from rupq.quantizers import (
    MinErrorInitializer,
    ModelParser,
    ModuleQuantizer,
    QuantConv2d,
    QuantLinear,
    Standardization,
    StepOffsetQuantizer,
    StepQuantizer,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "rupq" / "examples" / "quantized" / "classification"


class _TagLoader(yaml.SafeLoader):
    """Builds rupq.quantizers tags with plain constructors; any other tag becomes its mapping."""


def _construct(loader, tag_suffix, node):
    arguments = loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else {}
    if tag_suffix in quantizers.__all__:
        return getattr(quantizers, tag_suffix)(**arguments)
    return arguments


_TagLoader.add_multi_constructor("!", _construct)


def _parser_from_example(model_name, recipe):
    path = EXAMPLES / model_name / f"{recipe}.yaml"
    assert path.is_file(), f"shipped example {path} is missing"
    return yaml.load(path.read_text(), Loader=_TagLoader)["model_parser"]


def _rupq_parser(input_bit_width, weight_bit_width, half_wave, with_linear=True, n_iters=300):
    """ModelParser built in Python like the seed's w2a2_rupq.yaml (fewer candidate steps if asked)."""

    def prototype(layer_type, weight_dims):
        return layer_type(
            ModuleQuantizer(
                input_quantizer=StepOffsetQuantizer(MinErrorInitializer(n_iters=n_iters), Standardization(momentum=0.9999, std_init=1.0)),
                weight_quantizer=StepQuantizer(MinErrorInitializer(n_iters=n_iters), Standardization(dim=weight_dims), per_channel=True),
            )
        )

    wrappers = {"Conv2d": prototype(QuantConv2d, [1, 2, 3])}
    if with_linear:
        wrappers["Linear"] = prototype(QuantLinear, [1])
    return ModelParser(wrappers, input_bit_width, weight_bit_width, half_wave)


def _layer_names(model, types=(nn.Conv2d, nn.Linear)):
    return [name for name, module in model.named_modules() if type(module) in types]


def _settings(model):
    return {
        name: (m.quantizer.input_quantizer.bit_width, m.quantizer.weight_quantizer.bit_width, m.quantizer.input_quantizer.half_wave)
        for name, m in model.named_modules()
        if isinstance(m, (QuantConv2d, QuantLinear))
    }


def _mobilenet_signed_inputs():
    """Layers whose input is not a ReLU output: the image, and the inputs of linear bottlenecks."""
    return {"features.0.0", "features.18.0"} | {f"features.{i}.conv.0.0" for i in range(2, 18)}


@pytest.mark.parametrize("source", ["python", "example"])
def test_resnet18_w2a2_rupq(source):
    model = torchvision.models.resnet18()
    names = _layer_names(model)
    if source == "python":
        exceptions = {"default": 2, "exceptions": {"conv1": 8}}
        parser = _rupq_parser(exceptions, exceptions, {"default": True, "exceptions": {"conv1": False}})
    else:
        parser = _parser_from_example("resnet18", "w2a2_rupq")
    assert parser.parse(model) is model
    expected = {name: (8, 8, False) if name == "conv1" else (2, 2, True) for name in names}
    assert _settings(model) == expected
    assert isinstance(model.fc, QuantLinear) and model.layer2[0].downsample[0].module.stride == (2, 2)
    assert model.conv1.quantizer.weight_quantizer.step.shape == (64, 1, 1, 1)
    assert model.fc.quantizer.weight_quantizer.step.shape == (1000, 1)
    keys = model.state_dict().keys()
    assert "conv1.module.weight" in keys and "conv1.quantizer.input_quantizer.step" in keys
    assert "conv1.quantizer.input_quantizer.offset" in keys
    assert "conv1.quantizer.input_quantizer.transformation.ema_std" in keys


@pytest.mark.parametrize("recipe", ["w2a2_rupq", "w4a4_lsqplus", "w3a3_rupq"])
def test_mobilenet_v2_examples(recipe):
    model = torchvision.models.mobilenet_v2()
    names = _layer_names(model)
    bits = int(recipe[1])
    _parser_from_example("mobilenet_v2", recipe).parse(model)
    signed = _mobilenet_signed_inputs()
    expected = {name: (8, 8, False) if name == "features.0.0" else (bits, bits, name not in signed) for name in names}
    assert _settings(model) == expected


def test_mobilenet_v2_python_parser_runs():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    half_wave = {"default": True, "exceptions": {name: False for name in _mobilenet_signed_inputs()}}
    _rupq_parser({"default": 2, "exceptions": {"features.0.0": 8}}, {"default": 2}, half_wave, n_iters=20).parse(model)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_layer_name_key_wins_over_type_key():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    parser = _rupq_parser({"default": 4}, {"default": 4}, {"default": True}, with_linear=False)
    special = QuantConv2d(ModuleQuantizer(StepQuantizer(MinErrorInitializer()), StepQuantizer(MinErrorInitializer())))
    parser.wrappers["2"] = special
    parser.parse(model)
    assert type(model[2].quantizer.input_quantizer) is StepQuantizer
    assert type(model[0].quantizer.input_quantizer) is StepOffsetQuantizer
    assert model[2].quantizer is not special.quantizer  # a copy per layer


def test_parsing_twice_does_not_wrap_again():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    parser = _rupq_parser({"default": 4}, {"default": 4}, {"default": True}, with_linear=False)
    parser.parse(model)
    parser.parse(model)
    assert isinstance(model[0], QuantConv2d) and type(model[0].module) is nn.Conv2d


@pytest.mark.parametrize(
    "options,message",
    [
        (
            {"input_bit_width": {"default": 4, "exceptions": {"conv_1": 8}}},
            "model_parser.input_bit_width.exceptions: 'conv_1' is not a wrapped layer; closest: conv1, layer4.1.conv1, layer4.0.conv1",
        ),
        (
            {"half_wave": {"default": True, "exceptions": {"layer1.0.conv3": False}}},
            "model_parser.half_wave.exceptions: 'layer1.0.conv3' is not a wrapped layer; closest: layer1.0.conv2, layer1.0.conv1, layer4.0.conv2",
        ),
        ({"weight_bit_width": {"default": 1}}, "model_parser: weight bit width of layer 'conv1' must be an integer in [2, 32), got 1"),
        (
            {"input_bit_width": {"default": 4, "exceptions": {"fc": 32}}},
            "model_parser: input bit width of layer 'fc' must be an integer in [2, 32), got 32",
        ),
        ({"input_bit_width": {"default": 4.0}}, "model_parser: input bit width of layer 'conv1' must be an integer in [2, 32), got 4.0"),
        ({"weight_bit_width": {"default": True}}, "model_parser: weight bit width of layer 'conv1' must be an integer in [2, 32), got True"),
        ({"half_wave": {"exceptions": {}}}, "model_parser.half_wave: missing 'default'"),
    ],
)
def test_parser_errors(options, message):
    settings = {"input_bit_width": {"default": 4}, "weight_bit_width": {"default": 4}, "half_wave": {"default": True}}
    settings.update(options)
    with pytest.raises(ConfigError) as error:
        _rupq_parser(**settings).parse(torchvision.models.resnet18())
    assert str(error.value) == message


def test_type_key_absent_from_the_model():
    parser = _rupq_parser({"default": 4}, {"default": 4}, {"default": True})
    with pytest.raises(ConfigError, match="'Linear' is neither a module type nor a layer name of the model$"):
        parser.parse(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_unknown_wrapper_key():
    parser = _rupq_parser({"default": 4}, {"default": 4}, {"default": True})
    parser.wrappers["Conv2D"] = parser.wrappers.pop("Conv2d")
    with pytest.raises(ConfigError) as error:
        parser.parse(torchvision.models.resnet18())
    assert str(error.value) == "model_parser.wrappers: 'Conv2D' is neither a module type nor a layer name of the model; closest: Conv2d, conv1"


def test_wrapper_for_the_wrong_layer_type():
    parser = _rupq_parser({"default": 4}, {"default": 4}, {"default": True})
    parser.wrappers["fc"] = parser.wrappers["Conv2d"]
    with pytest.raises(ConfigError) as error:
        parser.parse(torchvision.models.resnet18())
    assert str(error.value) == "layer 'fc' is a Linear; QuantConv2d wraps Conv2d layers"
