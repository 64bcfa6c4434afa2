"""The Python API: rupq.quantize / calibrate / param_groups / summary / presets."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import rupq
from rupq.errors import ConfigError, RupqError
from rupq.quantizers import MinErrorInitializer, ModelParser, ModuleQuantizer, QuantConv2d, StepQuantizer
from rupq.quantizers.modules import QuantModule

REPO = Path(__file__).resolve().parents[1]


def _small_net(num_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )


def _bits(model):
    return {
        name: (module.quantizer.input_quantizer.bit_width, module.quantizer.weight_quantizer.bit_width)
        for name, module in model.named_modules()
        if isinstance(module, QuantModule)
    }


def test_presets_listed_by_the_package():
    assert rupq.presets() == [f"{method}_w{b}a{b}" for method in ("rupq", "lsqplus", "lsq") for b in (2, 3, 4, 8)]


def test_quantize_wraps_in_place_prints_the_summary_and_keeps_first_last_at_8_bits(capsys):
    model = _small_net()
    assert rupq.quantize(model, "rupq_w2a2") is model
    assert _bits(model) == {"0": (8, 8), "3": (2, 2), "5": (2, 2), "9": (8, 8)}
    printed = capsys.readouterr().out
    assert printed.strip() == rupq.summary(model) and printed.startswith("quantized: 4 layers (3 Conv2d, 1 Linear)")


def test_layers_apply_after_the_recipe_and_skip_leaves_layers_in_float(capsys):
    model = rupq.quantize(_small_net(), "lsq_w4a4", layers={"*": 6, "0": {"input": 16}, "9": {"weight": 2}}, skip=["5"])
    assert _bits(model) == {"0": (16, 6), "3": (6, 6), "9": (6, 2)}
    assert type(model[5]) is nn.Conv2d
    assert ["5", "Conv2d", "skipped", "by", "pattern", "'5'"] in [line.split() for line in rupq.summary(model).splitlines()]
    assert "quantized: 3 layers" in capsys.readouterr().out


@pytest.mark.parametrize(
    "options,message",
    [
        ({"layers": {"*": 17}}, "layers['*']: bits must be an integer from 2 to 16, got 17"),
        ({"layers": {"0": {"input": 1}}}, "layers['0']: input bits must be an integer from 2 to 16, got 1"),
        ({"layers": {"0": {"weight": 4.0}}}, "layers['0']: weight bits must be an integer from 2 to 16, got 4.0"),
        ({"layers": {"0": {"inputs": 4}}}, "layers['0']: expected bits or {'input': b, 'weight': b}, got keys ['inputs']"),
        ({"layers": {"features.*": 4}}, "layers: 'features.*' matches no wrapped layer"),
        ({"layers": {"layer1.0.conv3": 4}}, "layers: 'layer1.0.conv3' is not a wrapped layer; closest: layer1.0.conv2, layer1.0.conv1, layer4.0.conv2"),
        ({"skip": ["layer5.*"]}, "model_parser.skip: 'layer5.*' matches no wrapped layer; closest: layer4.1.conv2, layer4.1.conv1, layer4.0.conv2"),
    ],
)
def test_bad_layers_and_skip(options, message):
    with pytest.raises(ConfigError) as error:
        rupq.quantize(torchvision.models.resnet18(), "rupq_w4a4", verbose=False, **options)
    assert str(error.value) == message


def test_unknown_preset_names_the_closest():
    with pytest.raises(ConfigError) as error:
        rupq.quantize(_small_net(), "lsqplus_w4a3", verbose=False)
    assert str(error.value).startswith("unknown preset 'lsqplus_w4a3'; closest: lsqplus_w4a4, lsqplus_w3a3")
    with pytest.raises(ConfigError, match=r"^recipe file missing\.yaml does not exist$"):
        rupq.quantize(_small_net(), "missing.yaml", verbose=False)


def test_model_without_supported_layer():
    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ConvTranspose2d(4, 4, 3), nn.Embedding(5, 4))
    with pytest.raises(ConfigError, match=r"^model_parser wraps no layer of this Sequential"):
        rupq.quantize(model, "rupq_w4a4", verbose=False)


def test_recipe_from_a_seed_config_a_model_parser_file_and_a_dict(tmp_path):
    seed = REPO / "rupq" / "examples" / "quantized" / "classification" / "resnet18" / "w3a3_rupq.yaml"
    from_config = rupq.quantize(torchvision.models.resnet18(), seed, verbose=False)
    assert _bits(from_config)["conv1"] == (8, 8) and _bits(from_config)["fc"] == (3, 3)
    assert from_config.layer1[0].conv1.quantizer.input_quantizer.half_wave  # the seed's half_wave: true
    parser_only = tmp_path / "parser.yaml"
    parser_only.write_text(
        "wrappers:\n  Conv2d: !QuantConv2d\n    quantizer: !ModuleQuantizer\n"
        "      input_quantizer: !StepQuantizer\n        initializer: !MeanStdInitializer\n"
        "      weight_quantizer: !StepQuantizer\n        initializer: !MeanStdInitializer\n"
        "input_bit_width: {default: 4, exceptions: {'<first>': 8}}\nweight_bit_width: 3\nhalf_wave: false\nskip: ['5']\n"
    )
    model = rupq.quantize(_small_net(), str(parser_only), verbose=False)
    assert _bits(model) == {"0": (8, 3), "3": (4, 3)}
    prototype = QuantConv2d(ModuleQuantizer(StepQuantizer(MinErrorInitializer()), StepQuantizer(MinErrorInitializer())))
    recipe = {"wrappers": {"Conv2d": prototype}, "input_bit_width": 5, "weight_bit_width": 5, "half_wave": False}
    assert _bits(rupq.quantize(_small_net(), recipe, verbose=False)) == {"0": (5, 5), "3": (5, 5), "5": (5, 5)}
    parser = ModelParser(**recipe)
    rupq.quantize(_small_net(), parser, layers={"0": 8}, verbose=False)
    assert _bits(rupq.quantize(_small_net(), parser, verbose=False))["0"] == (5, 5)  # the caller's parser is unchanged
    with pytest.raises(ConfigError, match=r"^recipe dict: .*unexpected keyword argument 'wrapper'"):
        rupq.quantize(_small_net(), {"wrapper": {}}, verbose=False)


def _quantizer_parameters(model):
    groups = rupq.param_groups(model)
    return groups["quant_weight"] + groups["quant_input"]


def test_every_quantizer_parameter_exists_when_quantize_returns():
    """An optimizer built right after quantize holds the parameters that calibration and
    training initialise and update (the same objects: nothing is created on the first batch)."""
    model = rupq.quantize(_small_net(), "rupq_w4a4", verbose=False)
    before = {id(p) for p in model.parameters()}
    groups = rupq.param_groups(model)
    assert [len(groups[name]) for name in ("quant_weight", "quant_input")] == [4, 8]  # steps; steps and offsets
    assert groups["quant_weight"][0].shape == (8, 1, 1, 1)  # per channel
    running_mean = model[1].running_mean.clone()
    rupq.calibrate(model, [torch.randn(4, 3, 8, 8), (torch.randn(4, 3, 8, 8), torch.zeros(4))])
    assert all(quantizer.initialized for quantizer in model.modules() if isinstance(quantizer, StepQuantizer))
    assert torch.equal(model[1].running_mean, running_mean) and model.training  # as they were
    model(torch.randn(2, 3, 8, 8))
    assert {id(p) for p in model.parameters()} == before
    with pytest.raises(RupqError, match="every quantizer is initialised already"):
        rupq.calibrate(model, torch.randn(2, 3, 8, 8))


def test_calibrate_needs_a_quantized_model_and_tensors():
    with pytest.raises(RupqError, match="the model has no quantizer; call rupq.quantize first"):
        rupq.calibrate(_small_net(), torch.randn(2, 3, 8, 8))
    with pytest.raises(RupqError, match="batches must be a tensor or an iterable"):
        rupq.calibrate(rupq.quantize(_small_net(), "lsq_w4a4", verbose=False), ["images"])


def test_param_groups_give_the_papers_sgd_and_adam_split_and_a_step_changes_every_quantizer_parameter():
    model = rupq.quantize(_small_net(), "rupq_w4a4", verbose=False)
    groups = rupq.param_groups(model)
    assert sorted(groups) == ["quant_input", "quant_weight", "weight"]
    every = [id(p) for group in groups.values() for p in group]
    assert sorted(every) == sorted(id(p) for p in model.parameters()) and len(set(every)) == len(every)
    sgd = torch.optim.SGD(groups["weight"], lr=0.01, momentum=0.9)
    adam = torch.optim.Adam([{"params": groups["quant_weight"], "lr": 1e-3}, {"params": groups["quant_input"], "lr": 1e-3}])
    images, labels = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    model.train()
    model(images)  # initialises from the first batch
    before = [p.detach().clone() for p in _quantizer_parameters(model)]
    for _ in range(2):
        loss = F.cross_entropy(model(images), labels)
        sgd.zero_grad(), adam.zero_grad()
        loss.backward()
        sgd.step(), adam.step()
    unchanged = [i for i, (old, new) in enumerate(zip(before, _quantizer_parameters(model))) if torch.equal(old, new)]
    assert unchanged == []


def test_importing_rupq_leaves_torch_configuration_alone():
    script = (
        "import torch, torch._dynamo, torch.fx.experimental._config as fx\n"
        "before = (torch._dynamo.config.recompile_limit, fx.use_duck_shape, torch.get_num_threads())\n"
        "import rupq, rupq.qat, sys\n"
        "after = (torch._dynamo.config.recompile_limit, fx.use_duck_shape, torch.get_num_threads())\n"
        "assert before == after, (before, after)\n"
        "assert 'rupq.qat' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    light = subprocess.run(
        [sys.executable, "-c", "import sys, rupq; assert 'torch' not in sys.modules and 'rupq.qat' not in sys.modules"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert light.returncode == 0, light.stderr[-2000:]
