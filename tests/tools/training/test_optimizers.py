import pytest
import torch
import torch.nn as nn

from rupq.errors import ConfigError
from rupq.quantizers import MeanStdInitializer, ModelParser, ModuleQuantizer, QuantLinear, StepOffsetQuantizer, StepQuantizer
from rupq.tools.training.optimizers import build_optimizers, select_parameters


def FakeQuantLayer():
    """A Linear wrapped as a model parser wraps it: module.weight/bias, quantizer.*_quantizer.step (and offset)."""
    prototype = QuantLinear(ModuleQuantizer(StepOffsetQuantizer(MeanStdInitializer()),
                                            StepQuantizer(MeanStdInitializer(), per_channel=True)))
    parsed = ModelParser({"Linear": prototype}, {"default": 4}, {"default": 4}, {"default": False}).parse(
        nn.Sequential(nn.Linear(3, 2)))
    return parsed[0]


class Misleading(nn.Module):
    """Plain layers whose names contain the quantizers' attribute names: they are weights all the same."""

    def __init__(self):
        super().__init__()
        self.input_quantizer_head = nn.Linear(2, 2)
        self.weight_quantizer_like = nn.Parameter(torch.ones(2))


def names(model, params):
    lookup = {id(p): n for n, p in model.named_parameters()}
    return sorted(lookup[id(p)] for p in params)


def test_groups_split_by_quantizer():
    model = nn.Sequential(FakeQuantLayer())
    assert names(model, select_parameters(model, "weight")) == ["0.module.bias", "0.module.weight"]
    assert names(model, select_parameters(model, "quant_input")) == [
        "0.quantizer.input_quantizer.offset", "0.quantizer.input_quantizer.step"]
    assert names(model, select_parameters(model, "quant_weight")) == ["0.quantizer.weight_quantizer.step"]
    assert len(select_parameters(model, "quant")) == 3
    assert len(select_parameters(model, "all")) == 5


def test_groups_are_decided_by_module_type_not_by_name():
    model = nn.Sequential(FakeQuantLayer(), Misleading())
    assert names(model, select_parameters(model, "weight")) == [
        "0.module.bias", "0.module.weight", "1.input_quantizer_head.bias", "1.input_quantizer_head.weight",
        "1.weight_quantizer_like"]
    assert len(select_parameters(model, "quant")) == 3


def test_each_optimizer_has_its_scheduler_stepping_per_iteration():
    model = nn.Sequential(FakeQuantLayer())
    built = build_optimizers(model, {
        "weights": {"name": "SGD", "model_params_type": "weight", "params": {"lr": 0.1},
                    "scheduler": {"name": "StepLR", "params": {"step_size": 2, "gamma": 0.5}}},
        "quant": {"name": "Adam", "model_params_type": "quant", "params": {"lr": 0.01},
                  "scheduler": {"name": "CosineAnnealingLR", "params": {"T_max": 4}}},
    })
    assert list(built) == ["weights", "quant"]
    (sgd, step_lr), (adam, cosine) = built.values()
    assert isinstance(sgd, torch.optim.SGD) and isinstance(adam, torch.optim.Adam)
    for _ in range(4):
        sgd.step(); step_lr.step(); adam.step(); cosine.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)
    assert adam.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_cosine_decay_as_lambda_lr():
    from rupq.tools.utils import CosineDecay

    model = nn.Linear(2, 2)
    built = build_optimizers(model, {"opt": {"name": "SGD", "params": {"lr": 1.0}, "scheduler": {
        "name": "LambdaLR", "params": {"lr_lambda": CosineDecay(warmup_steps=2, decay_steps=2)}}}})
    optimizer, scheduler = built["opt"]
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step(); scheduler.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])


@pytest.mark.parametrize("spec, message", [
    (None, "task has no optimizers"),
    ({"o": {"name": "SDG", "params": {"lr": 0.1}}}, "optimizer 'o': unknown optimizer 'SDG'; did you mean SGD"),
    ({"o": {"name": "SGD", "model_params_type": "weights", "params": {"lr": 0.1}}},
     "unknown model_params_type 'weights'; did you mean weight?"),
    ({"o": {"name": "SGD", "model_params_type": "quant", "params": {"lr": 0.1}}},
     "model_params_type 'quant' selects no parameters of this model (is the model quantized? add a model_parser)"),
    ({"o": {"name": "SGD", "params": {"lr": 0.1}, "scheduler": {"name": "CosineAnnealing"}}},
     "unknown scheduler 'CosineAnnealing'; did you mean CosineAnnealingLR"),
    ({"o": {"name": "SGD", "params": {"lr": 0.1, "momentun": 0.9}}}, "optimizer 'o' (SGD):"),
    ({"o": {"name": "SGD", "parms": {"lr": 0.1}}}, "unexpected key 'parms'"),
])
def test_optimizer_errors(spec, message):
    with pytest.raises(ConfigError) as error:
        build_optimizers(nn.Linear(2, 2), spec)
    assert message in str(error.value)
