import pytest
import torchvision
from torch import nn

from rupq.errors import ConfigError
from rupq.quantizers import MeanStdInitializer, MinErrorInitializer, Standardization, StepOffsetQuantizer, StepQuantizer
from rupq.quantizers.modules import QuantModule
from rupq.quantizers.presets import preset, preset_names


def test_preset_names():
    assert preset_names() == [f"{method}_w{b}a{b}" for method in ("rupq", "lsqplus", "lsq") for b in (2, 3, 4, 8)]


def _bits(model):
    return {
        name: (module.quantizer.input_quantizer.bit_width, module.quantizer.weight_quantizer.bit_width)
        for name, module in model.named_modules()
        if isinstance(module, QuantModule)
    }


@pytest.mark.parametrize("name", ["rupq_w2a2", "lsqplus_w3a3", "lsq_w4a4"])
def test_first_and_last_layers_stay_at_8_bits(name):
    model = preset(name).parse(torchvision.models.resnet18())
    bits = int(name[-1])
    assert _bits(model) == {
        layer: (8, 8) if layer in ("conv1", "fc") else (bits, bits) for layer, _ in _bits(model).items()
    }
    assert len(_bits(model)) == 21


def _quantizers(model, layer):
    wrapped = dict(model.named_modules())[layer].quantizer
    return wrapped.input_quantizer, wrapped.weight_quantizer


def test_recipes():
    rupq, lsqplus, lsq = (preset(name).parse(torchvision.models.resnet18()) for name in ("rupq_w4a4", "lsqplus_w4a4", "lsq_w4a4"))
    inputs, weights = _quantizers(rupq, "layer1.0.conv1")
    assert type(inputs) is StepOffsetQuantizer and type(weights) is StepQuantizer and weights.per_channel
    assert isinstance(inputs.initializer, MinErrorInitializer) and isinstance(weights.initializer, MinErrorInitializer)
    assert isinstance(inputs.transformation, Standardization) and inputs.transformation.momentum == 0.9999
    assert weights.transformation.dim == [1, 2, 3] and _quantizers(rupq, "fc")[1].transformation.dim == [1]
    inputs, weights = _quantizers(lsqplus, "layer1.0.conv1")
    assert type(inputs) is StepOffsetQuantizer and weights.per_channel
    assert isinstance(inputs.initializer, MeanStdInitializer) and isinstance(weights.initializer, MeanStdInitializer)
    assert inputs.transformation is None and weights.transformation is None
    inputs, weights = _quantizers(lsq, "layer1.0.conv1")
    assert type(inputs) is StepQuantizer and type(weights) is StepQuantizer and not weights.per_channel
    assert inputs.transformation is None and weights.transformation is None
    # Signed inputs: the presets do not assume that every layer reads a ReLU output.
    assert not any(q.half_wave for model in (rupq, lsqplus, lsq) for q in _quantizers(model, "layer1.0.conv1"))


def test_each_call_builds_new_prototypes():
    first, second = preset("rupq_w4a4"), preset("rupq_w4a4")
    assert first.wrappers["Conv2d"] is not second.wrappers["Conv2d"]


def test_unknown_preset():
    with pytest.raises(ConfigError) as error:
        preset("rupq_w5a5")
    assert str(error.value) == "unknown preset 'rupq_w5a5'; closest: rupq_w8a8, rupq_w4a4, rupq_w3a3 (rupq.presets() lists them)"


def test_a_model_with_one_layer_is_first_and_last():
    model = preset("rupq_w2a2").parse(nn.Sequential(nn.Conv2d(3, 4, 3)))
    assert _bits(model) == {"0": (8, 8)}
