"""Quantizers fed one shard of the batch: gradient scale and σ must be those of the global batch."""

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from rupq.quantizers import (
    MinErrorInitializer,
    ModelParser,
    ModuleQuantizer,
    QuantConv2d,
    Standardization,
    StepOffsetQuantizer,
    StepQuantizer,
    initialize_quantizers,
)
from rupq.quantizers.data_parallel import shard_activation_quantizers
from rupq.quantizers.transformations import global_standard_deviation


def rupq_model(input_standardization: bool = True) -> nn.Module:
    torch.manual_seed(0)
    standardization = Standardization(momentum=0.9, std_init=1.0) if input_standardization else None
    prototype = QuantConv2d(
        ModuleQuantizer(
            StepOffsetQuantizer(MinErrorInitializer(n_iters=30), standardization),
            StepQuantizer(MinErrorInitializer(n_iters=30), Standardization(dim=[1, 2, 3]), per_channel=True),
        )
    )
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1))
    parser = ModelParser({"Conv2d": prototype}, {"default": 4}, {"default": 4}, {"default": True, "exceptions": {"0": False}})
    return parser.parse(model)


def quantizer_gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if "quantizer" in name}


def test_shards_see_the_global_gradient_scale():
    """Two replicas on half batches (DataParallel: gradients added) give the one-replica gradients.

    Without input standardization: a shard's σ differs from the batch's (see the DDP tests).
    """
    model = rupq_model(input_standardization=False)
    inputs = torch.randn(8, 3, 6, 6)
    initialize_quantizers(model, inputs)
    replicas = [copy.deepcopy(model), copy.deepcopy(model)]

    model(inputs).square().mean().backward()
    expected = quantizer_gradients(model)

    def sharded_gradients(shards):
        for replica in replicas:
            replica.zero_grad(set_to_none=True)
            shard_activation_quantizers(replica, shards)
        outputs = torch.cat([replica(half) for replica, half in zip(replicas, inputs.chunk(2))])
        outputs.square().mean().backward()
        return {name: sum(quantizer_gradients(replica)[name] for replica in replicas) for name in expected}

    sharded = sharded_gradients(2)
    for name, gradient in expected.items():
        torch.testing.assert_close(sharded[name], gradient, rtol=1e-5, atol=1e-7, msg=name)
    # Without the hook the input steps' gradients come out sqrt(2) times too large.
    unsharded = sharded_gradients(1)
    for name in expected:
        if name.endswith("input_quantizer.step"):
            torch.testing.assert_close(unsharded[name], expected[name] * 2**0.5, rtol=1e-5, atol=1e-7)
    assert all(layer.quantizer.weight_quantizer.batch_shards == 1 for layer in replicas[0] if hasattr(layer, "quantizer"))


def test_ema_is_updated_in_place():
    """DataParallel keeps what replica 0 writes *into* its buffers; a reassigned buffer would be lost."""
    model = rupq_model()
    initialize_quantizers(model, torch.randn(4, 3, 6, 6))
    transformation = model[0].quantizer.input_quantizer.transformation
    ema = transformation.ema_std
    before = ema.clone()
    model(torch.randn(4, 3, 6, 6) * 3)
    assert transformation.ema_std is ema and not torch.equal(ema, before)


@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_global_standard_deviation_formula_and_gradient(one_process_group):
    torch.manual_seed(0)
    x = (torch.randn(5, 7, 3) * 2 + 10).requires_grad_()
    offset = torch.tensor(0.5, requires_grad=True)
    ours = global_standard_deviation(x, one_process_group, offset)
    ours.backward()
    grad_x, grad_offset = x.grad.clone(), offset.grad.clone()
    x.grad = offset.grad = None
    reference = (x - offset).std()
    reference.backward()
    torch.testing.assert_close(ours, reference.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_x, x.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grad_offset, offset.grad, rtol=0, atol=1e-6)


def test_standardization_uses_the_group_in_training_steps_only(one_process_group, monkeypatch):
    calls = []
    import rupq.quantizers.transformations as transformations

    original = transformations.global_standard_deviation
    monkeypatch.setattr(
        transformations, "global_standard_deviation", lambda *args: calls.append(1) or original(*args)
    )
    model = rupq_model()
    initialize_quantizers(model, torch.randn(4, 3, 6, 6))  # calibration: before sharding, local
    assert calls == []
    shard_activation_quantizers(model, 1, one_process_group)
    model(torch.randn(4, 3, 6, 6))
    assert len(calls) == 2  # the two input quantizers; weights stay local
    with torch.no_grad():  # passes without autograd (BN re-estimation, eval) never communicate
        model(torch.randn(4, 3, 6, 6))
        model.eval()
        model(torch.randn(4, 3, 6, 6))
    assert len(calls) == 2
