"""``!CosineDecay``: warm-up (linear or zero), cosine decay, and its use as a LambdaLR factor."""

import math

import pytest
import torch

from rupq.tools.utils import CosineDecay


def test_linear_warmup_ramps_to_the_initial_value():
    schedule = CosineDecay(initial_value=2.0, final_value=0.0, warmup_steps=4, warmup_mode="linear", decay_steps=10)
    assert [schedule(step) for step in range(5)] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


def test_zero_warmup_holds_zero_then_starts_at_the_initial_value():
    schedule = CosineDecay(initial_value=1.0, final_value=0.0, warmup_steps=5000, warmup_mode="zero", decay_steps=544900)
    assert schedule(0) == 0.0 and schedule(4999) == 0.0
    assert schedule(5000) == pytest.approx(1.0)


def test_cosine_decay_and_its_end():
    schedule = CosineDecay(initial_value=1.0, final_value=0.1, warmup_steps=10, decay_steps=100)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)  # half way: the mean of the two values
    assert schedule(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert schedule(110) == pytest.approx(0.1)
    assert schedule(10_000) == pytest.approx(0.1)  # stays at the final value after the decay
    values = [schedule(step) for step in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_no_warmup_starts_at_the_initial_value():
    schedule = CosineDecay(decay_steps=4)
    assert [schedule(step) for step in range(6)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466, 0.0, 0.0])


def test_as_lambda_lr_factor_per_iteration():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.01)
    schedule = CosineDecay(initial_value=1.0, final_value=0.0, warmup_steps=3, warmup_mode="linear", decay_steps=4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)
    rates = []
    for _ in range(9):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.01 * schedule(step) for step in range(9)])
    assert rates[:4] == pytest.approx([0.0, 0.01 / 3, 0.02 / 3, 0.01]) and rates[-2:] == pytest.approx([0.0, 0.0])


def test_seed_config_schedule_from_yaml(tmp_path):
    from rupq.config import load_config

    config = tmp_path / "schedule.yaml"
    config.write_text(
        "factor: !CosineDecay\n  initial_value: 1.0\n  final_value: 0.0\n  warmup_steps: 1000\n"
        "  warmup_mode: linear\n  decay_steps: 548900\n"
    )
    schedule = load_config(config)["factor"]
    assert schedule(500) == pytest.approx(0.5) and schedule(1000 + 548900) == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [({"warmup_mode": "cosine"}, "warmup_mode"), ({"warmup_steps": -1}, "warmup_steps"), ({"decay_steps": 0}, "decay_steps")],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CosineDecay(**kwargs)
