"""The compiled paths: quantizers under ``torch.compile``, and whole models compiled with them.

The rest of the suite runs the formula eagerly (``conftest.py``); compiling costs tens of
seconds on a 2-core machine, so these few tests carry the compiled path.
"""

from collections import OrderedDict

import pytest
import torch
import torch._dynamo.utils
import torchvision
from torch import nn

from rupq.config import load_config
from rupq.quantizers import initialize_quantizers
from rupq.quantizers.compiled import CompiledFormula, quantize

RUPQ_RECIPE = "rupq/examples/quantized/classification/resnet18/w4a4_rupq.yaml"


def rupq_model(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    load_config(RUPQ_RECIPE)["model_parser"].parse(model)
    initialize_quantizers(model, calibration)
    return model


def tiny_net() -> nn.Module:
    """A stem named ``conv1`` (the recipe's 8-bit exception), a strided conv and a classifier."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3, padding=1)), ("bn1", nn.BatchNorm2d(8)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(8, 8, 3, stride=2, padding=1)), ("bn2", nn.BatchNorm2d(8)), ("relu2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(8, 5)),
    ]))


def compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_new_batch_and_image_sizes_compile_nothing_new(monkeypatch):
    """One dynamic-shape graph per kind of call serves every layer, batch and image size."""
    monkeypatch.setattr(quantize, "enabled", True)
    torch.manual_seed(0)
    model = rupq_model(tiny_net(), torch.randn(4, 3, 16, 16))

    def train_and_eval(batch, height, width):
        x = torch.randn(batch, 3, height, width)
        model.train()
        model(x).sum().backward()
        model.eval()
        with torch.no_grad():
            model(x)

    # Kinds of call, not sizes: rows of at most and of more than 4096 elements (inductor's CPU
    # reductions differ), a batch of one (its size-1 dim is specialised).
    for batch, height, width in [(2, 16, 16), (6, 24, 24), (1, 16, 16)]:
        train_and_eval(batch, height, width)
    after_warm_up = compiled_graphs()
    for batch, height, width in [(3, 20, 20), (5, 24, 16), (2, 12, 28), (7, 16, 16), (1, 20, 14), (4, 30, 18)]:
        train_and_eval(batch, height, width)
    assert compiled_graphs() == after_warm_up


def test_quantized_resnet18_traces_as_one_graph():
    """The quantized layers cause no graph break: the whole model compiles with fullgraph=True
    (which raises at the first break, naming it) in training and in eval mode."""
    torch.manual_seed(0)
    model = rupq_model(torchvision.models.resnet18(), torch.randn(2, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    compiled(x).sum().backward()
    assert model.conv1.quantizer.input_quantizer.step.grad is not None
    with torch.no_grad():
        compiled.eval()(x)


def test_whole_model_compiled_matches_eager_training():
    """A quantized model compiled whole (``compile: true``) takes the same training steps as eager."""
    torch.manual_seed(0)
    calibration = torch.randn(4, 3, 16, 16)
    eager = rupq_model(tiny_net(), calibration)
    compiled_model = rupq_model(tiny_net(), calibration)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, dynamic=True)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (eager, compiled_model)]
    for step in range(3):
        x = torch.randn(4 + step, 3, 16, 16)
        losses = []
        for model, optimizer in zip((eager, compiled), optimizers):
            optimizer.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    for (name, a), b in zip(eager.state_dict().items(), compiled_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6), name


def test_bound_gradient_compiles_no_graph_per_call():
    """μ_b is a Python float like LSQ's g: both rules, alternating, reuse the graphs compiled for
    the first calls, and each call gets its own μ_b (no value baked into a graph)."""
    formula = CompiledFormula(enabled=True)
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 8, 6, 6, generator=generator).relu()

    def zero_gradients(bound_gradient, step_value):
        x = base.clone().requires_grad_()
        step = torch.tensor(step_value, requires_grad=True)
        offset = torch.tensor(0.0, requires_grad=True)
        out, _ = formula(x, step, 0, 15, 0.01, offset=offset, bound_gradient=bound_gradient)
        out.backward(torch.ones_like(out))
        return set(x.grad[base == 0].tolist())

    assert zero_gradients(1.0, 0.2) == {1.0}
    assert zero_gradients(0.5, 0.2) == {0.5}
    after_both = compiled_graphs()
    for bound_gradient, step_value in [(1.0, 0.3), (0.5, 0.25), (1.0, 0.15), (0.5, 0.3)]:
        assert zero_gradients(bound_gradient, step_value) == {bound_gradient}
    assert compiled_graphs() == after_both
