import copy

import pytest
import torch
from quantizer_reference import reference_quantize
from test_fake_quantize import _close, summation_tolerance

from rupq.errors import ConfigError
from rupq.quantizers import MeanStdInitializer, MinErrorInitializer, Standardization, StepOffsetQuantizer, StepQuantizer
from rupq.quantizers.compiled import quantize
from rupq.quantizers.fake_quantize import BOUND_GRADIENTS, DEFAULT_BOUND_GRADIENT, fake_quantize
from rupq.quantizers.fake_quantize import standard_deviation as formula_std


def standard_deviation(x, dims):
    """The formula's std in ``torch.std``'s layout (``dims`` None: all of them, a scalar)."""
    std = formula_std(x, tuple(range(x.dim())) if dims is None else tuple(dims))
    return std.reshape([]) if dims is None else std


@pytest.fixture
def compiled_quantizers(monkeypatch):
    """The quantizer modules call the compiled formula (the suite runs it eagerly otherwise)."""
    monkeypatch.setattr(quantize, "enabled", True)


def _configured(quantizer_type, role, transformation, half_wave, per_channel, bit_width=3, bound_gradient=DEFAULT_BOUND_GRADIENT):
    """A quantizer for a weight [6, 4, 3, 3] (role "weight") or an activation (role "input")."""
    quantizer = quantizer_type(MinErrorInitializer(n_iters=50), transformation, per_channel=per_channel, bound_gradient=bound_gradient)
    weight_shape = [6, 4, 3, 3]
    step_shape = [6, 1, 1, 1] if per_channel else []
    sigma_shape = [] if transformation is None else transformation.sigma_shape(weight_shape)
    quantizer.configure(bit_width, half_wave and role == "input", step_shape, sigma_shape)
    return quantizer


TRANSFORMATIONS = {
    "none": lambda: None,
    "weight_std": lambda: Standardization(dim=[1, 2, 3]),
    "weight_std_frozen": lambda: Standardization(dim=[1, 2, 3], trainable=False),
    "weight_std_ema": lambda: Standardization(dim=[1, 2, 3], momentum=0.5, std_init=1.0),
    "tensor_std": lambda: Standardization(),
    "ema": lambda: Standardization(momentum=0.9, std_init=1.0),
    "ema_first_batch": lambda: Standardization(momentum=0.9),
}


def _cases():
    for quantizer_type in (StepQuantizer, StepOffsetQuantizer):
        for transformation in TRANSFORMATIONS:
            for per_channel in (False, True):
                if transformation.startswith("ema") and per_channel:
                    continue  # activation quantizers are per tensor
                for half_wave in (False, True):
                    role = "input" if (transformation.startswith("ema") or not per_channel) else "weight"
                    yield quantizer_type, transformation, per_channel, half_wave, role


@pytest.mark.parametrize("bound_gradient", BOUND_GRADIENTS)
@pytest.mark.parametrize("quantizer_type,transformation,per_channel,half_wave,role", list(_cases()))
def test_quantizer_matches_reference_over_steps(quantizer_type, transformation, per_channel, half_wave, role, bound_gradient):
    _matches_reference_over_steps(quantizer_type, transformation, per_channel, half_wave, role, bound_gradient)


@pytest.mark.usefixtures("compiled_quantizers")
@pytest.mark.parametrize(
    "quantizer_type,transformation,per_channel,half_wave,role",
    [
        (StepOffsetQuantizer, "ema_first_batch", False, True, "input"),  # RUPQ activations
        (StepQuantizer, "weight_std", True, False, "weight"),  # RUPQ weights
        (StepOffsetQuantizer, "none", False, True, "input"),  # LSQ+ activations
    ],
)
@pytest.mark.parametrize("bound_gradient", BOUND_GRADIENTS)
def test_compiled_quantizer_matches_reference_over_steps(quantizer_type, transformation, per_channel, half_wave, role, bound_gradient):
    _matches_reference_over_steps(quantizer_type, transformation, per_channel, half_wave, role, bound_gradient)


def _matches_reference_over_steps(quantizer_type, transformation, per_channel, half_wave, role, bound_gradient):
    """Half-wave inputs are ReLU outputs; the offset starts at 0, so their zeros tie with the lower
    bound on the first step (the oracle's offset then moves by the oracle's gradient)."""
    torch.manual_seed(0)
    quantizer = _configured(quantizer_type, role, TRANSFORMATIONS[transformation](), half_wave, per_channel,
                            bound_gradient=bound_gradient)
    oracle = copy.deepcopy(quantizer)
    shape = [6, 4, 3, 3]
    for iteration, training in enumerate([True, True, False, True]):
        quantizer.train(training)
        oracle.train(training)
        x = torch.randn(shape) * 1.5 + 0.3 * iteration
        if half_wave:
            x = x.relu()
        grad_out = torch.randn(shape)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = quantizer(xa)
        expected = reference_quantize(oracle, xb, standard_deviation)
        _close(out.detach(), expected.detach(), 1e-6)
        if training:
            out.backward(grad_out)
            expected.backward(grad_out)
            _close(xa.grad, xb.grad, 1e-5)
            atol = summation_tolerance(grad_out, x)
            _close(quantizer.step.grad, oracle.step.grad, 1e-5, atol)
            if quantizer_type is StepOffsetQuantizer:
                _close(quantizer.offset.grad, oracle.offset.grad, 1e-5, atol)
            with torch.no_grad():  # a training step, identical for both
                for module in (quantizer, oracle):
                    for parameter in module.parameters():
                        parameter -= 0.01 * parameter.grad
                        parameter.grad = None
        if quantizer.transformation is not None:
            _close(quantizer.transformation.ema_std, oracle.transformation.ema_std, 1e-6)
        _close(quantizer.step, oracle.step, 1e-6)


@pytest.mark.parametrize("dims", [None, [1, 2, 3]])
def test_standard_deviation_matches_torch_std(dims):
    torch.manual_seed(0)
    x = (torch.randn(8, 5, 4, 3) * 2 + 1).requires_grad_()
    y = x.detach().clone().requires_grad_()
    ours = standard_deviation(x, dims)
    expected = torch.std(y, dims, keepdim=True) if dims else torch.std(y)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)
    grad = torch.randn_like(expected)
    ours.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-7)


def test_initialization_happens_once_and_survives_state_dict():
    quantizer = _configured(StepOffsetQuantizer, "input", Standardization(momentum=0.9), True, False)
    assert not quantizer.initialized
    x = torch.randn(2, 6, 5, 5).relu()
    quantizer(x)
    assert quantizer.initialized
    first_step = quantizer.step.detach().clone()
    assert float(quantizer.min_value) == 0.0 and float(quantizer.max_value) > 0.0
    quantizer(x * 10)
    assert torch.equal(quantizer.step, first_step)
    assert torch.equal(quantizer.initial_step, first_step)

    fresh = _configured(StepOffsetQuantizer, "input", Standardization(momentum=0.9), True, False)
    fresh.load_state_dict(quantizer.state_dict())
    assert fresh.initialized and bool(fresh.transformation.ema_std_initialized)
    quantizer.eval()
    fresh.eval()
    assert torch.equal(fresh(x), quantizer(x))
    assert torch.equal(fresh.step, first_step)


def test_initializer_sees_the_standardized_offset_tensor():
    quantizer = _configured(StepQuantizer, "weight", Standardization(dim=[1, 2, 3]), False, True)
    weight = torch.randn(6, 4, 3, 3) * torch.arange(1.0, 7.0).reshape(6, 1, 1, 1)
    quantizer(weight)
    standardized = weight / weight.std(dim=[1, 2, 3], keepdim=True)
    expected = MinErrorInitializer(n_iters=50)(standardized, -4, 3, [6, 1, 1, 1])
    torch.testing.assert_close(quantizer.initial_step, expected)
    torch.testing.assert_close(quantizer.max_value, standardized.max())


def sigma_of(standardization, x):
    """The σ a quantizer's step would use on ``x``, the EMA initialised and updated."""
    standardization.ensure_ema_initialized(x, None)
    _, sigma = fake_quantize(x, torch.ones([]), -8, 7, 1.0, **standardization.formula_arguments(x, None))
    if standardization.training:
        standardization.update_ema(sigma)
    return sigma if standardization.dim else sigma.reshape([])


def test_standardization_ema_rules():
    torch.manual_seed(0)
    first_batch = Standardization(momentum=0.5)
    x = torch.randn(1000) * 3
    sigma = sigma_of(first_batch, x)
    torch.testing.assert_close(first_batch.ema_std, sigma.detach())  # ema = std, then 0.5 ema + 0.5 std
    torch.testing.assert_close(sigma, x.std())
    first_batch.eval()
    assert torch.equal(sigma_of(first_batch, torch.randn(10)), first_batch.ema_std)

    with_init = Standardization(momentum=0.9, std_init=1.0)
    sigma = sigma_of(with_init, x)
    torch.testing.assert_close(sigma, 0.9 + 0.1 * x.std())

    fresh_each_step = Standardization()
    fresh_each_step.eval()
    torch.testing.assert_close(sigma_of(fresh_each_step, x), x.std())


def test_frozen_standardization_passes_no_gradient_through_sigma():
    x = torch.randn(8, 4, requires_grad=True)
    sigma = Standardization(dim=[1], trainable=False)
    sigma.configure([8, 1])
    assert not sigma_of(sigma, x).requires_grad
    trainable = Standardization(dim=[1])
    trainable.configure([8, 1])
    assert sigma_of(trainable, x).requires_grad


def test_mean_std_initializer_formula():
    x = torch.randn(4, 10) + torch.tensor([[1.0], [-2.0], [0.0], [5.0]])
    step = MeanStdInitializer()(x, -8, 7, [4, 1])
    mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True)
    expected = torch.maximum((mean - 3 * std).abs(), (mean + 3 * std).abs()) / 7
    torch.testing.assert_close(step, expected)
    assert MeanStdInitializer()(x, 0, 15, []).shape == torch.Size([])


def test_steps_driven_negative_by_training_stay_finite():
    quantizer = _configured(StepOffsetQuantizer, "input", Standardization(momentum=0.9, std_init=1.0), True, False)
    x = torch.randn(2, 6, 5, 5).relu()
    quantizer(x)
    with torch.no_grad():
        quantizer.step.fill_(-0.0)
    out = quantizer(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(quantizer.step.grad).all()


@pytest.mark.parametrize("quantizer_type", [StepQuantizer, StepOffsetQuantizer])
@pytest.mark.parametrize("value", [0.7, 0, 2.0, -0.5, True, "0.5", None])
def test_bound_gradient_other_than_the_two_rules_is_a_config_error(quantizer_type, value):
    with pytest.raises(ConfigError) as error:
        quantizer_type(MinErrorInitializer(), bound_gradient=value)
    assert str(error.value) == (
        f"{quantizer_type.__name__}: bound_gradient must be 1.0 or 0.5 (the gradient on a clip bound), got {value!r}"
    )


def test_bound_gradient_defaults_to_the_papers_rule_and_reaches_the_formula():
    """Without the setting, a ReLU zero on the lower bound passes all of its gradient (μ_b = 1) and
    leaves the offset none; with ``bound_gradient: 0.5`` (written as a YAML int or float) half."""
    assert StepOffsetQuantizer(MinErrorInitializer()).bound_gradient == 1.0
    assert StepQuantizer(MinErrorInitializer(), bound_gradient=1).bound_gradient == 1.0
    grads = {}
    for setting in ({}, {"bound_gradient": 0.5}):
        quantizer = StepOffsetQuantizer(MinErrorInitializer(n_iters=20), **setting)
        quantizer.configure(2, True, [], [])
        x = torch.tensor([0.0, 0.0, 0.3, 0.6], requires_grad=True)
        quantizer.initialize_from(x.detach())
        with torch.no_grad():
            quantizer.step.fill_(0.25)  # t = 0, 0, 1.2, 2.4: two zeros on n, the rest strictly inside
        quantizer(x).sum().backward()
        grads[setting.get("bound_gradient")] = (x.grad.tolist(), quantizer.offset.grad.item())
    assert grads[None] == ([1.0, 1.0, 1.0, 1.0], 0.0)
    assert grads[0.5] == ([0.5, 0.5, 1.0, 1.0], 1.0)
