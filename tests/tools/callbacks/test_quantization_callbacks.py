import types

import matplotlib.figure
import pytest
import torch
from torch import nn

from rupq.quantizers import (
    MinErrorInitializer,
    ModelParser,
    ModuleQuantizer,
    QuantConv2d,
    QuantLinear,
    Standardization,
    StepOffsetQuantizer,
    StepQuantizer,
    initialize_quantizers,
    quantizers_of,
)
from rupq.tools.callbacks.base import Callback
from rupq.tools.callbacks.batchnorm import BatchNormReestimationCallback
from rupq.tools.callbacks.quantization import QuantImagesCallback, QuantVarsCallback, quantization_range


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
    )

    def prototype(layer_type, dims):
        return layer_type(ModuleQuantizer(
            StepOffsetQuantizer(MinErrorInitializer(n_iters=30), Standardization(momentum=0.99, std_init=1.0)),
            StepQuantizer(MinErrorInitializer(n_iters=30), Standardization(dim=dims), per_channel=True),
        ))

    return ModelParser(
        {"Conv2d": prototype(QuantConv2d, [1, 2, 3]), "Linear": prototype(QuantLinear, [1])},
        {"default": 4}, {"default": 4}, {"default": True, "exceptions": {"0": False}},
    ).parse(model)


class FakeTrainer:
    """The trainer attributes the callbacks use (see rupq.tools.callbacks.base)."""

    def __init__(self, model, batches, epoch=0, epochs=2):
        self.model, self.device, self.epoch, self.epochs = model, torch.device("cpu"), epoch, epochs
        self.limit_batches = None  # --fast-dev-run's batch limit
        self.scalars, self.figures = {}, {}
        dataset = types.SimpleNamespace(train_dataloader=lambda: iter(batches))
        self.training_loop = types.SimpleNamespace(dataset=dataset, unpack_batch=lambda batch: (batch[0], batch[1]))

    @property
    def is_last_epoch(self):
        return self.epoch == self.epochs - 1

    def log_scalar(self, name, value):
        assert isinstance(value, float)
        self.scalars[name] = value

    def log_figure(self, tag, figure):
        assert isinstance(figure, matplotlib.figure.Figure)
        self.figures[tag] = figure


def _batches(count=3, size=4):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 8, 8, generator=generator) * (i + 1), torch.zeros(size, dtype=torch.long)) for i in range(count)]


def test_callbacks_are_callbacks():
    for callback in (QuantVarsCallback(), QuantImagesCallback(), BatchNormReestimationCallback()):
        assert isinstance(callback, Callback)


def test_quant_vars_logs_steps_offsets_and_ema():
    model = _model()
    initialize_quantizers(model, _batches()[0][0])
    trainer = FakeTrainer(model, _batches())
    QuantVarsCallback().on_train_epoch_end(trainer)
    weight_step = model[0].quantizer.weight_quantizer.step
    assert trainer.scalars["quant_vars/0.quantizer.weight_quantizer/step"] == pytest.approx(weight_step.mean().item())
    assert trainer.scalars["quant_vars/5.quantizer.input_quantizer/offset"] == 0.0
    assert trainer.scalars["quant_vars/0.quantizer.input_quantizer/ema_std"] == pytest.approx(1.0)
    assert "quant_vars/0.quantizer.weight_quantizer/ema_std" not in trainer.scalars
    assert len([n for n in trainer.scalars if n.endswith("/step")]) == len(list(quantizers_of(model)))


def test_quant_images_after_first_epoch_only_and_without_side_effects():
    model = _model()
    batches = _batches()
    initialize_quantizers(model, batches[0][0])
    model.train()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    trainer = FakeTrainer(model, batches, epoch=1)
    QuantImagesCallback().on_train_epoch_end(trainer)
    assert trainer.figures == {}
    trainer.epoch = 0
    QuantImagesCallback().on_train_epoch_end(trainer)
    assert set(trainer.figures) == {"quant_images/0/weight", "quant_images/0/input", "quant_images/5/weight", "quant_images/5/input"}
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    axes = trainer.figures["quant_images/0/input"].axes[0]
    low, high = quantization_range(model[0].quantizer.input_quantizer, batches[0][0])
    assert sorted(line.get_xdata()[0] for line in axes.get_lines()) == pytest.approx([low.item(), high.item()])


def test_quantization_range_of_per_channel_weights():
    model = _model()
    initialize_quantizers(model, _batches()[0][0])
    weight = model[0].module.weight
    low, high = quantization_range(model[0].quantizer.weight_quantizer, weight)
    scale = model[0].quantizer.weight_quantizer.step.abs() * weight.std(dim=[1, 2, 3], keepdim=True)
    torch.testing.assert_close(high, (7 * scale).detach())
    torch.testing.assert_close(low, (-8 * scale).detach())


def test_batchnorm_reestimation_on_last_epoch_uses_the_training_set():
    model = _model()
    batches = _batches(count=3)
    initialize_quantizers(model, batches[0][0])
    model.train()
    seen = []
    model[1].register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    trainer = FakeTrainer(model, batches, epoch=0, epochs=2)
    callback = BatchNormReestimationCallback()
    callback.on_validation_epoch_start(trainer)
    assert seen == [] and model[1].num_batches_tracked == 0

    ema_before = model[0].quantizer.input_quantizer.transformation.ema_std.clone()
    trainer.epoch = 1
    callback.on_validation_epoch_start(trainer)
    assert len(seen) == 3
    expected_mean = torch.stack([x.mean(dim=[0, 2, 3]) for x in seen]).mean(0)
    expected_var = torch.stack([x.var(dim=[0, 2, 3], unbiased=True) for x in seen]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected_mean)
    torch.testing.assert_close(model[1].running_var, expected_var)
    assert model[1].momentum == 0.1 and model.training and model[1].training
    assert torch.equal(model[0].quantizer.input_quantizer.transformation.ema_std, ema_before)


def test_batchnorm_reestimation_limits_batches():
    model = _model()
    batches = _batches(count=5)
    initialize_quantizers(model, batches[0][0])
    trainer = FakeTrainer(model, batches, epoch=1, epochs=2)
    BatchNormReestimationCallback(num_batches=2).on_validation_epoch_start(trainer)
    assert model[1].num_batches_tracked == 2
