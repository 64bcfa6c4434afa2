import numpy as np
import pytest
import torch

from rupq.quantizers.fake_quantize import integer_range
from rupq.quantizers.initializers import MinErrorInitializer, candidate_steps


def brute_force_min_error(x, negative_clip, positive_clip, step_shape, p=2.0, n_iters=300):
    """The original algorithm: a Python loop over channels and candidate steps.

    The error of each candidate is summed in float64: in float32 the sum's rounding noise is as
    large as the difference between neighbouring candidates near the optimum, so the float32
    loop's choice among near-ties is itself noise.
    """
    channels = int(np.prod(step_shape)) if step_shape else 1
    rows = x.reshape(channels, -1)
    chosen = []
    for row in rows:
        step_max = (row.abs().max() / positive_clip).item()
        errors = []
        steps = torch.linspace(1e-7, step_max, n_iters)
        for step in steps:
            quantized = torch.clamp(row / step, negative_clip, positive_clip).round() * step
            errors.append(torch.sum((row.double() - quantized.double()).abs() ** p).item())
        chosen.append(steps[int(np.argmin(errors))])
    return torch.stack(chosen).reshape(step_shape)


def test_candidates_are_torch_linspace_bit_for_bit():
    torch.manual_seed(0)
    max_abs = torch.rand(50) * 10
    for n_iters in (1, 2, 7, 300):
        ours = candidate_steps(max_abs, 7, n_iters)
        for row, value in zip(ours, max_abs):
            assert torch.equal(row, torch.linspace(1e-7, (value / 7).item(), n_iters))


CASES = [
    # shape, step_shape, half_wave data, bit widths
    ([300], [], False),
    ([8, 3, 3, 3], [8, 1, 1, 1], False),
    ([2, 16, 7, 7], [], True),
    ([5, 40], [5, 1], True),
]


@pytest.mark.parametrize("shape,step_shape,half_wave", CASES)
@pytest.mark.parametrize("bit_width", [2, 3, 4, 8])
def test_closed_form_min_error_picks_the_brute_force_step(shape, step_shape, half_wave, bit_width):
    torch.manual_seed(bit_width)
    x = torch.randn(shape) * 2
    if half_wave:
        x = x.relu()
    n, p = integer_range(bit_width, half_wave)
    initializer = MinErrorInitializer(n_iters=60)
    expected = brute_force_min_error(x, n, p, step_shape, n_iters=60)
    assert torch.equal(initializer(x, n, p, step_shape), expected)
    # Signed data on a half-wave grid (negative values clip to 0) and vice versa.
    n, p = integer_range(bit_width, not half_wave)
    assert torch.equal(initializer(x - 0.5, n, p, step_shape), brute_force_min_error(x - 0.5, n, p, step_shape, n_iters=60))


def test_closed_form_error_values_match_direct_evaluation():
    torch.manual_seed(0)
    x = torch.randn(4, 200)
    initializer = MinErrorInitializer(n_iters=40)
    steps, closed = initializer.errors(x, -8, 7, [4, 1])
    direct = initializer._direct_errors(x, steps, -8, 7)
    torch.testing.assert_close(closed, direct, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("power", [1.0, 3.0])
def test_other_powers_use_direct_evaluation(power):
    torch.manual_seed(1)
    x = torch.randn(3, 50)
    initializer = MinErrorInitializer(p=power, n_iters=40)
    expected = brute_force_min_error(x, -4, 3, [3, 1], p=power, n_iters=40)
    assert torch.equal(initializer(x, -4, 3, [3, 1]), expected)


def test_all_zero_channel_gets_the_smallest_candidate():
    x = torch.zeros(2, 10)
    x[1] = torch.randn(10)
    step = MinErrorInitializer()(x, -8, 7, [2, 1])
    assert step[0, 0].item() == pytest.approx(1e-7)
    assert step[1, 0].item() > 1e-3
