import math

import pytest
import torch
from formula_paths import formula  # noqa: F401 (fixture)
from quantizer_reference import reference_grid

from rupq.quantizers.fake_quantize import (
    BOUND_GRADIENTS,
    DEFAULT_BOUND_GRADIENT,
    SIGMA_EPSILON,
    STEP_EPSILON,
    fake_quantize,
    integer_range,
    step_gradient_scale,
)


def lsq_quantize(x, step, n, p, sigma=None, offset=None, formula=fake_quantize, bound_gradient=DEFAULT_BOUND_GRADIENT):
    """``formula`` with LSQ's gradient scale for ``x``; parameters scalar or one per leading channel."""
    grad_scale = step_gradient_scale(x.numel(), step.numel(), p)
    out, _ = formula(x, step, n, p, grad_scale, offset=offset, sigma=sigma, bound_gradient=bound_gradient)
    return out


def guard_step(step):
    return step.abs().clamp_min(STEP_EPSILON)


def _close(actual, expected, rtol, atol=0.0):
    """Relative to the largest expected value; ``atol`` covers float32 rounding of sums that cancel."""
    scale = expected.abs().max().clamp_min(1e-12)
    assert (actual - expected).abs().max() <= rtol * scale + atol, (actual, expected)


def assert_same_quantization(out, expected, reference_codes):
    """Equal to float rounding: the fused grid folds ``c = s' σ``, so values may differ by a few
    ulp, and a code may round the other way only where the reference code lies within 1e-5 of a
    rounding midpoint (a tie at float precision)."""
    ulps = (out - expected).abs() <= 4 * torch.finfo(torch.float32).eps * expected.abs().max()
    fraction = reference_codes - reference_codes.floor()
    tie = (fraction - 0.5).abs() < 1e-5
    assert (ulps | tie).all(), (out[~(ulps | tie)], expected[~(ulps | tie)])


def summation_tolerance(grad_out, x):
    """Rounding error to allow on a float32 reduction ``Σ grad_out * O(|x| + 1)`` whose terms cancel."""
    return 1e-6 * float((grad_out.abs() * (x.abs() + 1)).sum())


@pytest.mark.parametrize("bit_width,half_wave,expected", [(4, True, (0, 15)), (4, False, (-8, 7)), (2, False, (-2, 1)), (8, True, (0, 255))])
def test_integer_range(bit_width, half_wave, expected):
    assert integer_range(bit_width, half_wave) == expected


def _inputs(per_channel, half_wave, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, 3, 3, generator=generator) * 2
    if half_wave:
        x = x.relu()  # many exact zeros: on the lower bound when there is no offset
    step = torch.rand(6, 1, 1, 1, generator=generator) * 0.3 + 0.2 if per_channel else torch.tensor(0.4)
    n, p = integer_range(3, half_wave)
    # Values exactly on both bounds and well outside them.
    x.view(-1)[:4] = torch.tensor([n, p, p + 3, n - 3], dtype=torch.float32) * step.reshape(-1)[0]
    return x, step, n, p


@pytest.mark.parametrize("bound_gradient", BOUND_GRADIENTS)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("half_wave", [False, True])
@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.parametrize("with_sigma", [False, True])
def test_grid_matches_reference(per_channel, half_wave, with_offset, with_sigma, bound_gradient, formula):
    """Half-wave inputs are ReLU outputs: with the offset at 0 (or none) their zeros tie with the
    lower bound, and ``_inputs`` puts values exactly on both bounds and beyond them."""
    torch.manual_seed(0)
    x, step, n, p = _inputs(per_channel, half_wave)
    sigma = (torch.rand(6, 1, 1, 1) + 0.5) if with_sigma and per_channel else torch.tensor(1.3) if with_sigma else None
    offset = torch.tensor(0.0) if with_offset else None
    grad_out = torch.randn_like(x)

    def run(fused):
        xs = x.clone().requires_grad_()
        s = step.clone().requires_grad_()
        sg = sigma.clone().requires_grad_() if sigma is not None else None
        o = offset.clone().requires_grad_() if offset is not None else None
        codes = None
        if fused:
            out = lsq_quantize(xs, s, n, p, sg, o, formula, bound_gradient)
        else:
            t = xs - o if o is not None else xs
            t = t / sg if sg is not None else t
            out = reference_grid(t, s, n, p, bound_gradient)
            codes = (t / s).detach()
            out = out * sg if sg is not None else out
            out = out + o if o is not None else out
        out.backward(grad_out)
        return out.detach(), [t.grad for t in (xs, s, sg, o) if t is not None], codes

    out, grads, _ = run(True)
    ref_out, ref_grads, ref_codes = run(False)
    assert_same_quantization(out, ref_out, ref_codes)
    _close(grads[0], ref_grads[0], 1e-5)
    for grad, ref_grad in zip(grads[1:], ref_grads[1:]):
        _close(grad, ref_grad, 1e-5, summation_tolerance(grad_out, x))


# Hand-computed values, no oracle: the oracle calls the same torch primitives (round, clamp) as
# the formula, so a change in one of their rules would change both alike. Step 0.5 and gradient
# scale 0.25 keep every t and product exact in float32; g_out = 1 everywhere.
#
# Signed 3 bits, [n, p] = [-4, 3], one step per element (per channel), so each element's dL/ds is
# its own term g · (q - μ t). Rounding midpoints go half to even, as onnxruntime's QuantizeLinear:
# 0.5 → 0, 1.5 → 2, 2.5 → 2 (and their negatives). Columns: x, t = x / s, out = q s, dL/dx, dL/ds.
SIGNED_CASES = [
    (0.25, 0.5, 0.0, 1.0, -0.125),
    (0.75, 1.5, 1.0, 1.0, 0.125),
    (1.25, 2.5, 1.0, 1.0, -0.125),
    (-0.25, -0.5, -0.0, 1.0, 0.125),
    (-0.75, -1.5, -1.0, 1.0, -0.125),
    (-1.25, -2.5, -1.0, 1.0, 0.125),
    (1.4999998807907104, 2.999999761581421, 1.5, 1.0, 5.960464477539063e-08),  # an ulp inside p
    (1.5, 3.0, 1.5, "μ", {1.0: 0.0, 0.5: 0.375}),  # on p: g (3 - 3 μ)
    (1.5000001192092896, 3.000000238418579, 1.5, 0.0, 0.75),  # an ulp beyond p: g · 3
    (-2.0, -4.0, -2.0, "μ", {1.0: 0.0, 0.5: -0.5}),  # on n: g (-4 + 4 μ)
    (-2.000000238418579, -4.000000476837158, -2.0, 0.0, -1.0),  # an ulp beyond n: g · (-4)
]


@pytest.mark.parametrize("bound_gradient", BOUND_GRADIENTS)
def test_signed_grid_pinned_values(bound_gradient, formula):
    x = torch.tensor([case[0] for case in SIGNED_CASES]).reshape(-1, 1).requires_grad_()
    step = torch.full((len(SIGNED_CASES), 1), 0.5, requires_grad=True)
    out, _ = formula(x, step, -4, 3, 0.25, bound_gradient=bound_gradient)
    out.backward(torch.ones_like(out))
    assert out.detach().flatten().tolist() == [case[2] for case in SIGNED_CASES]
    assert x.grad.flatten().tolist() == [bound_gradient if case[3] == "μ" else case[3] for case in SIGNED_CASES]
    expected_step_grad = [case[4][bound_gradient] if isinstance(case[4], dict) else case[4] for case in SIGNED_CASES]
    assert step.grad.flatten().tolist() == pytest.approx(expected_step_grad, rel=1e-6, abs=1e-12)


# Half-wave 2 bits, [n, p] = [0, 3], one step 0.5 and one offset 0 for the tensor: a ReLU output
# whose zeros tie with the lower bound. dL/do = Σ (1 - μ) and dL/ds = g Σ (q - μ t):
#   x       t      out   μ      1 - μ        q - μ t
#   0, 0, 0 0      0     μ_b    1 - μ_b      0
#   -2^-23  <0     0     0      1            0           (an ulp-scale value beyond n)
#   0.75    1.5    1.0   1      0            0.5         (a midpoint: rounds to 2)
#   1.5     3      1.5   μ_b    1 - μ_b      3 - 3 μ_b   (on p)
#   2.0     4      1.5   0      1            3           (beyond p)
# μ_b = 1:   dL/do = 2,  dL/ds = 0.25 · 3.5 = 0.875
# μ_b = 1/2: dL/do = 3 · 0.5 + 1 + 0.5 + 1 = 4,  dL/ds = 0.25 · (0.5 + 1.5 + 3) = 1.25
HALF_WAVE_X = [0.0, 0.0, 0.0, -1.1920928955078125e-07, 0.75, 1.5, 2.0]
HALF_WAVE_OUT = [0.0, 0.0, 0.0, 0.0, 1.0, 1.5, 1.5]
HALF_WAVE_GRADS = {  # μ_b: (dL/dx, dL/do, dL/ds)
    1.0: ([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0], 2.0, 0.875),
    0.5: ([0.5, 0.5, 0.5, 0.0, 1.0, 0.5, 0.0], 4.0, 1.25),
}


@pytest.mark.parametrize("bound_gradient", BOUND_GRADIENTS)
def test_relu_zeros_on_the_lower_bound_pinned_values(bound_gradient, formula):
    x = torch.tensor(HALF_WAVE_X, requires_grad=True)
    step = torch.tensor(0.5, requires_grad=True)
    offset = torch.tensor(0.0, requires_grad=True)
    out, _ = formula(x, step, 0, 3, 0.25, offset=offset, bound_gradient=bound_gradient)
    out.backward(torch.ones_like(out))
    grad_x, grad_offset, grad_step = HALF_WAVE_GRADS[bound_gradient]
    assert out.detach().tolist() == HALF_WAVE_OUT
    assert x.grad.tolist() == grad_x
    assert offset.grad.item() == grad_offset
    assert step.grad.item() == grad_step


def test_step_gradient_scale():
    assert step_gradient_scale(1000, 10, 15) == pytest.approx(1 / math.sqrt(1500))


@pytest.mark.parametrize("per_channel", [False, True])
def test_plain_grid_matches_torch_learnable_fake_quantize(per_channel, formula):
    # torch's fused kernel decides "inside" on the *rounded* code (so x/s in (p, p + 1/2)
    # still gets the full gradient, and an exact bound too, where docs/quantization.md passes μ_b), and
    # it multiplies by 1/s instead of dividing, which may
    # round a value lying halfway differently: keep the inputs away from all three cases.
    torch.manual_seed(1)
    n, p = -8, 7
    x = torch.randn(4, 3, 5, 5) * 3
    step = torch.rand(4) * 0.2 + 0.3 if per_channel else torch.tensor([0.41])
    codes = x / step.reshape(-1, 1, 1, 1) if per_channel else x / step
    ambiguous = ((codes - codes.round()).abs() > 0.49) | ((codes > p - 0.01) & (codes < p + 0.51))
    ambiguous |= (codes < n + 0.01) & (codes > n - 0.51)
    x = torch.where(ambiguous, torch.zeros_like(x) + 0.01, x)
    grad_out = torch.randn_like(x)
    factor = step_gradient_scale(x.numel(), step.numel(), p)

    xs, s = x.clone().requires_grad_(), step.clone().requires_grad_()
    shape = (-1, 1, 1, 1) if per_channel else ()
    out = lsq_quantize(xs, s.reshape(shape), n, p, formula=formula)
    out.backward(grad_out)

    xt, st = x.clone().requires_grad_(), step.clone().requires_grad_()
    if per_channel:
        zero_point = torch.zeros(4)
        expected = torch._fake_quantize_learnable_per_channel_affine(xt, st, zero_point, 0, n, p, factor)
    else:
        zero_point = torch.zeros(1)
        expected = torch._fake_quantize_learnable_per_tensor_affine(xt, st, zero_point, n, p, factor)
    expected.backward(grad_out)
    _close(out.detach(), expected.detach(), 1e-6)
    _close(xs.grad, xt.grad, 1e-6)
    _close(s.grad, st.grad, 1e-5)


@pytest.mark.parametrize("bad_step", [0.0, -0.3, -1e-12])
def test_degenerate_step_stays_finite(bad_step):
    x = torch.randn(100, requires_grad=True)
    step = torch.tensor(bad_step, requires_grad=True)
    out = lsq_quantize(x, step, -8, 7)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all() and torch.isfinite(step.grad)
    if bad_step < -STEP_EPSILON:
        assert torch.equal(out, lsq_quantize(x, torch.tensor(-bad_step), -8, 7))


@pytest.mark.parametrize("value", [0.4, -0.4, 0.0, -1e-12, 1e-8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_step_guard_and_gradient_scale_inside_the_function_match_autograd(value, per_channel):
    """The formula takes ``max(|s|, ε)`` and LSQ's ``g`` inside; autograd through the guard
    and the oracle's grid (which applies ``g``) gives the same step gradient."""
    torch.manual_seed(3)
    x = torch.randn(4, 30)
    grad_out = torch.randn(4, 30)
    shape = [4, 1] if per_channel else []
    s1 = torch.full(shape, value, requires_grad=True)
    s2 = torch.full(shape, value, requires_grad=True)
    lsq_quantize(x, s1, -8, 7).backward(grad_out)
    reference_grid(x, guard_step(s2), -8, 7, DEFAULT_BOUND_GRADIENT).backward(grad_out)
    _close(s1.grad, s2.grad, 1e-5)
    assert torch.equal(s1.grad == 0, s2.grad == 0)


def test_guard_leaves_normal_steps_bit_identical():
    torch.manual_seed(2)
    x = torch.randn(50)
    grad_out = torch.randn(50)
    for value in (1e-6, 0.01, 0.7):
        s1 = torch.tensor(value, requires_grad=True)
        s2 = torch.tensor(value, requires_grad=True)
        out = lsq_quantize(x, s1, -8, 7)
        out.backward(grad_out)
        ref = reference_grid(x, s2, -8, 7, DEFAULT_BOUND_GRADIENT)
        ref.backward(grad_out)
        assert torch.equal(out, ref)
        _close(s1.grad, s2.grad, 1e-5)


def test_bfloat16_input_is_quantized_in_float32():
    torch.manual_seed(3)
    x = torch.randn(2, 8, 4, 4).bfloat16().requires_grad_()
    step = torch.tensor(0.3, requires_grad=True)
    out = lsq_quantize(x, step, 0, 15)
    assert out.dtype == torch.float32
    assert torch.equal(out, lsq_quantize(x.detach().float(), torch.tensor(0.3), 0, 15))
    out.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(step.grad)


def test_backward_keeps_only_the_input_and_small_tensors():
    x = torch.randn(64, 64, requires_grad=True)
    step = torch.tensor(0.2, requires_grad=True)
    out = lsq_quantize(x, step, -8, 7)
    big = [t for t in out.grad_fn.saved_tensors if t is not None and t.numel() > 1]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()


def test_constant_tensor_is_standardized_by_epsilon_with_finite_gradients(formula):
    """A dead channel or an input collapsed to one value (σ = 0 would divide by zero)."""
    x = torch.zeros(4, 8, 5, 5, requires_grad=True)
    step, offset = torch.tensor(0.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)
    out, sigma = formula(x, step, 0, 15, 0.01, offset=offset, std_dims=(0, 1, 2, 3), ema=torch.tensor(1.0), momentum=0.9)
    assert sigma.item() == pytest.approx(0.9 + 0.1 * SIGMA_EPSILON)
    out.backward(torch.randn_like(out))
    assert all(torch.isfinite(t.grad).all() for t in (x, step, offset))
