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


def _rupq_parser(input_bit_width, weight_bit_width, half_wave, with_linear=True, n_iters=300, skip=None):
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
    return ModelParser(wrappers, input_bit_width, weight_bit_width, half_wave, skip)


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
        (
            {"input_bit_width": {"default": 4, "exceptions": {"layer5.*": 8}}},
            "model_parser.input_bit_width.exceptions: 'layer5.*' matches no wrapped layer; closest: layer4.1.conv2, layer4.1.conv1, layer4.0.conv2",
        ),
        ({"skip": ["layer9.*"]}, "model_parser.skip: 'layer9.*' matches no wrapped layer; closest: layer4.1.conv2, layer4.1.conv1, layer4.0.conv2"),
        ({"skip": "fc1"}, "model_parser.skip: 'fc1' is not a wrapped layer; closest: fc, conv1"),
    ],
)
def test_parser_errors(options, message):
    settings = {"input_bit_width": {"default": 4}, "weight_bit_width": {"default": 4}, "half_wave": {"default": True}}
    settings.update(options)
    with pytest.raises(ConfigError) as error:
        _rupq_parser(**settings).parse(torchvision.models.resnet18())
    assert str(error.value) == message


def test_type_key_absent_from_the_model_wraps_nothing():
    parser = _rupq_parser({"default": 4}, {"default": 4}, {"default": True})
    model = parser.parse(nn.Sequential(nn.Conv2d(3, 4, 3)))
    assert isinstance(model[0], QuantConv2d)


def test_model_without_supported_layer():
    parser = _rupq_parser({"default": 4}, {"default": 4}, {"default": True})
    with pytest.raises(ConfigError, match=r"^model_parser wraps no layer of this Sequential: the wrappers \(Conv2d, Linear\)"):
        parser.parse(nn.Sequential(nn.Conv1d(3, 4, 3), nn.Embedding(4, 4)))


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


class _SamePadConv(nn.Conv2d):
    """Pads on the fly like timm's Conv2dSame ("same" output size for any input size)."""

    def forward(self, x):
        height, width = x.shape[-2:]
        pad_h = max((-(-height // self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - height, 0)
        pad_w = max((-(-width // self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - width, 0)
        x = nn.functional.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _PlainLinearSubclass(nn.Linear):
    pass


def _relative_error(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


def _sixteen_bit_parser(weight_bit_width=16):
    exceptions = {} if weight_bit_width == 16 else {"0": weight_bit_width}
    return _rupq_parser({"default": 16}, {"default": 16, "exceptions": exceptions}, {"default": False}, n_iters=2)


def _subclass_model():
    torch.manual_seed(0)
    return nn.Sequential(
        _SamePadConv(3, 8, 4, stride=2, bias=True),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, padding_mode="reflect"),
        nn.Flatten(),
        _PlainLinearSubclass(8 * 8 * 8, 5),
        nn.modules.linear.NonDynamicallyQuantizableLinear(5, 3),
    ).eval()


@pytest.mark.parametrize("first_weight_bits,close", [(16, True), (2, False)])
def test_subclasses_are_wrapped_and_compute_what_they_computed(first_weight_bits, close):
    """At 16 bits the wrapped model computes the float one's outputs, the on-the-fly padding of
    the subclass included; at 2 bits on its weight the output moves: its forward gets the quantized weight."""
    model = _subclass_model()
    x = torch.randn(2, 3, 15, 15)
    with torch.no_grad():
        ref = model(x)
        _sixteen_bit_parser(first_weight_bits).parse(model)
        out = model(x)
    assert [type(model[i].module) for i in (0, 1, 3, 4)] == [
        _SamePadConv, nn.Conv2d, _PlainLinearSubclass, nn.modules.linear.NonDynamicallyQuantizableLinear
    ]
    assert out.shape == ref.shape == (2, 3)
    assert (_relative_error(out, ref) < 1e-2) is close


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_multihead_attention_out_proj_stays_in_float_with_its_reason():
    torch.manual_seed(0)
    model = _Attention().eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        ref = model(x)
        _sixteen_bit_parser().parse(model)
        out = model(x)
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert isinstance(model.head, QuantLinear)
    assert model.rupq_float_layers == {
        "attn.out_proj": "read directly by its parent MultiheadAttention (its forward uses out_proj.weight)"
    }
    assert _relative_error(out, ref) < 1e-2


def test_naming_a_layer_read_by_its_parent_is_an_error():
    parser = _sixteen_bit_parser()
    parser.wrappers["attn.out_proj"] = parser.wrappers["Linear"]
    with pytest.raises(ConfigError) as error:
        parser.parse(_Attention())
    assert str(error.value) == (
        "model_parser.wrappers: layer 'attn.out_proj' cannot be quantized: "
        "read directly by its parent MultiheadAttention (its forward uses out_proj.weight)"
    )


def test_patterns_in_wrappers_exceptions_and_skip():
    model = torchvision.models.resnet18()
    special = QuantConv2d(ModuleQuantizer(StepQuantizer(MinErrorInitializer()), StepQuantizer(MinErrorInitializer())))
    parser = _rupq_parser(
        {"default": 4, "exceptions": {"layer1.*": 3, "layer1.0.conv2": 5, "*.downsample.0": 6}},
        {"default": 4, "exceptions": {"*": 2, "layer4.*": 3}},
        {"default": True},
    )
    parser.wrappers["layer2.?.conv1"] = special
    parser.skip = ["layer3.*"]
    parser.parse(model)
    settings = _settings(model)
    assert settings["layer1.0.conv1"] == (3, 2, True) and settings["layer1.0.conv2"] == (5, 2, True)
    assert settings["layer2.0.downsample.0"] == (6, 2, True) and settings["layer4.1.conv2"] == (4, 3, True)
    assert type(model.layer2[0].conv1.quantizer.input_quantizer) is StepQuantizer
    assert type(model.layer2[1].conv1.quantizer.input_quantizer) is StepQuantizer
    assert type(model.layer2[0].conv2.quantizer.input_quantizer) is StepOffsetQuantizer
    assert not any(name.startswith("layer3.") for name in settings)
    assert type(model.layer3[0].conv1) is nn.Conv2d
    assert model.rupq_float_layers["layer3.1.conv2"] == "skipped by pattern 'layer3.*'"


def test_wrapper_pattern_matching_nothing():
    parser = _rupq_parser({"default": 4}, {"default": 4}, {"default": True})
    parser.wrappers["features.*"] = parser.wrappers["Conv2d"]
    with pytest.raises(ConfigError) as error:
        parser.parse(torchvision.models.resnet18())
    assert str(error.value).startswith("model_parser.wrappers: 'features.*' is neither a module type nor a layer name of the model")


def _first_last_layers(model):
    bits = {"default": 4, "exceptions": {"<first>": 8, "<last>": 7}}
    _rupq_parser(bits, {"default": 4}, {"default": True}, n_iters=10).parse(model)
    return sorted((bits, name) for name, (bits, _, _) in _settings(model).items() if bits != 4)


@pytest.mark.parametrize(
    "arch,kwargs,first,last",
    [
        ("resnet18", {}, "conv1", "fc"),
        ("mobilenet_v2", {}, "features.0.0", "classifier.1"),
        ("srresnet", {}, "conv1.0", "conv3.0"),
        ("edsr", {}, "head.0", "tail.1"),
        ("yolo_v3", {}, "module_list.0.conv_0", "module_list.105.conv_105"),
    ],
)
def test_first_and_last_are_the_layers_the_seed_configs_name(arch, kwargs, first, last):
    """Registration order gives the layers the seed configs keep at 8 bits: the first layer of
    every model, the last of the SR models (the classification seeds keep their fc at the default)."""
    from rupq.models import create_model

    assert _first_last_layers(create_model(arch, **kwargs)) == [(7, last), (8, first)]
    seed_configs = Path(__file__).resolve().parents[2] / "rupq" / "examples" / "quantized"
    named = {"resnet18": "classification/resnet18", "mobilenet_v2": "classification/mobilenet_v2",
             "srresnet": "superresolution/srresnet", "edsr": "superresolution/edsr", "yolo_v3": "object_detection"}[arch]
    paths = sorted((seed_configs / named).glob("*.yaml"))
    assert paths
    for path in paths:
        model = create_model(arch, **kwargs)
        yaml.load(path.read_text(), Loader=_TagLoader)["model_parser"].parse(model)
        eight_bit = {name for name, (bits, _, _) in _settings(model).items() if bits == 8}
        assert first in eight_bit and eight_bit <= {first, last}, path


def test_exact_name_wins_over_first_last_which_win_over_patterns():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    bits = {"default": 4, "exceptions": {"0": 5, "<first>": 8, "<last>": 8, "*": 3}}
    _rupq_parser(bits, {"default": 4}, {"default": True}, with_linear=False, n_iters=10).parse(model)
    assert [bits for bits, _, _ in _settings(model).values()] == [5, 3, 8]
