import copy

import torch
from torch import nn

from rupq.quantizers import Standardization, initialize_quantizers, quantizers_of
from test_parser import _rupq_parser


def _model(std_init=1.0):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    parser = _rupq_parser({"default": 4, "exceptions": {"0": 8}}, {"default": 4}, {"default": True, "exceptions": {"0": False}})
    if std_init is None:
        for prototype in parser.wrappers.values():  # the EMA starts at the first batch's std
            prototype.quantizer.input_quantizer.transformation = Standardization(momentum=0.9999)
    return parser.parse(model)


def test_initialize_quantizers_changes_only_the_quantizers():
    torch.manual_seed(0)
    model = _model()
    model.eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 8, 8)
    rng_before = torch.random.get_rng_state()
    initialize_quantizers(model, x)
    assert not model.training and not any(m.training for m in model.modules())
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert all(quantizer.initialized for _, quantizer in quantizers_of(model))
    after = model.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed, "the quantizers were initialised"
    initialization = {"step", "initialized_flag", "min_value", "max_value", "initial_step"}
    # Weight σ has no std_init: its EMA is initialised from the first tensor (and unused, momentum 0).
    first_batch_ema = {"ema_std", "ema_std_initialized"}
    for key in changed:
        assert ".quantizer." in key, key
        name = key.rsplit(".", 1)[1]
        assert name in initialization or (".weight_quantizer.transformation." in key and name in first_batch_ema), key
    assert not any(".input_quantizer.transformation." in key for key in changed)
    assert after["1.num_batches_tracked"] == 0


def test_initialize_quantizers_keeps_first_batch_ema_only():
    torch.manual_seed(0)
    model = _model(std_init=None)
    x = torch.randn(4, 3, 8, 8)
    initialize_quantizers(model, x)
    ema = model[0].quantizer.input_quantizer.transformation.ema_std
    torch.testing.assert_close(ema, x.std(), rtol=1e-6, atol=0)
    assert model.training


def test_initialize_then_data_parallel_replicas_are_initialised():
    model = _model()
    initialize_quantizers(model, torch.randn(4, 3, 8, 8))
    replica = copy.deepcopy(model)
    steps = [q.step.clone() for _, q in quantizers_of(replica)]
    replica(torch.randn(4, 3, 8, 8) * 100)
    assert all(torch.equal(a, q.step) for a, (_, q) in zip(steps, quantizers_of(replica)))


def test_state_dict_round_trip_gives_identical_outputs():
    torch.manual_seed(0)
    model = _model()
    x = torch.randn(4, 3, 8, 8)
    initialize_quantizers(model, x)
    model(x).sum().backward()  # one training forward moves the EMA
    fresh = _model()
    assert not any(q.initialized for _, q in quantizers_of(fresh))
    fresh.load_state_dict(model.state_dict())
    assert all(q.initialized for _, q in quantizers_of(fresh))
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
