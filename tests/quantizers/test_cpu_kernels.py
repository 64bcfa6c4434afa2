"""The C++ CPU kernels against the torch formulation, on tensors large enough to be cut into
many parallel chunks (the oracle tests' tensors fit in one), and the dispatch around them."""

import copy
import warnings

import pytest
import torch
from test_grid import _close, summation_tolerance

from rupq.quantizers import MinErrorInitializer, Standardization, StepOffsetQuantizer, StepQuantizer, cpu_kernels
from rupq.quantizers.grid import lsq_quantize
from rupq.quantizers.transformations import standard_deviation


@pytest.fixture
def built(monkeypatch):
    monkeypatch.delenv(cpu_kernels.DISABLE_VARIABLE, raising=False)
    if cpu_kernels.kernels() is None:
        pytest.skip("the C++ CPU kernels could not be built on this machine")


def _both_paths(monkeypatch, function):
    """``function()`` on the C++ kernels, then on the torch ops."""
    monkeypatch.delenv(cpu_kernels.DISABLE_VARIABLE, raising=False)
    fast = function()
    monkeypatch.setenv(cpu_kernels.DISABLE_VARIABLE, "1")
    slow = function()
    monkeypatch.delenv(cpu_kernels.DISABLE_VARIABLE)
    return fast, slow


def _grid_run(x, step, sigma, offset, grad_out, n, p):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, step, sigma, offset)]
    out = lsq_quantize(leaves[0], leaves[1], n, p, leaves[2], leaves[3])
    out.backward(grad_out)
    return out.detach(), [t.grad for t in leaves if t is not None]


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize("per_channel", [False, True])
def test_grid_paths_agree_on_large_tensors(monkeypatch, per_channel):
    torch.manual_seed(0)
    x = torch.randn(5, 70001) * 2  # rows of several chunks, the last one partial
    step = torch.rand(5, 1) * 0.3 + 0.2 if per_channel else torch.tensor(0.37)
    sigma = torch.rand(5, 1) + 0.5 if per_channel else torch.tensor(1.3)
    offset = torch.tensor(0.1)
    grad_out = torch.randn_like(x)
    (out, grads), (ref_out, ref_grads) = _both_paths(monkeypatch, lambda: _grid_run(x, step, sigma, offset, grad_out, -8, 7))
    _close(out, ref_out, 1e-6)
    _close(grads[0], ref_grads[0], 0.0)  # g m: exact on both paths
    for grad, ref_grad in zip(grads[1:], ref_grads[1:]):
        _close(grad, ref_grad, 1e-5, summation_tolerance(grad_out, x))


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize("dims", [None, [1, 2, 3]])
def test_std_paths_agree_on_large_tensors(monkeypatch, dims):
    torch.manual_seed(1)
    x = torch.randn(6, 8, 50, 50) * 3 + 100  # a large mean against the std: no cancellation
    offset = torch.tensor(0.5)
    grad = torch.randn(6, 1, 1, 1) if dims else torch.randn([])

    def run():
        xs, o = x.clone().requires_grad_(), offset.clone().requires_grad_()
        std = standard_deviation(xs, dims, o)
        std.backward(grad)
        return std.detach(), xs.grad, o.grad

    (std, grad_x, grad_o), (ref_std, ref_grad_x, ref_grad_o) = _both_paths(monkeypatch, run)
    expected = torch.std(x.double(), dims, keepdim=True) if dims else torch.std(x.double())
    torch.testing.assert_close(std.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(ref_std, std, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-4, atol=1e-9)
    # d std(x - o) / d o is 0: both paths give float noise far below one element's gradient.
    assert float(grad_o.abs()) < 1e-3 * float(grad_x.abs().max()) * x.numel() ** 0.5


def _quantizer(kind):
    if kind == "activation":
        quantizer = StepOffsetQuantizer(MinErrorInitializer(n_iters=50), Standardization(momentum=0.9, std_init=1.0))
        quantizer.configure(4, True, [], [])
        shape = [4, 16, 40, 40]
    else:
        quantizer = StepQuantizer(MinErrorInitializer(n_iters=50), Standardization(dim=[1, 2, 3]), per_channel=True)
        quantizer.configure(4, False, [32, 1, 1, 1], [32, 1, 1, 1])
        shape = [32, 64, 3, 3]
    return quantizer, shape


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize("kind", ["activation", "weight"])
@pytest.mark.parametrize("input_grad", [True, False])
def test_standardized_quantizer_paths_agree_over_steps(monkeypatch, kind, input_grad):
    """σ computed inside the fused function (C++) against Standardization + grid (torch ops)."""
    torch.manual_seed(2)
    fast, shape = _quantizer(kind)
    slow = copy.deepcopy(fast)
    for iteration in range(3):
        x = torch.randn(shape) * 1.5 + 0.2 * iteration
        if kind == "activation":
            x = x.relu()
        grad_out = torch.randn(shape)
        results = []
        for quantizer, disabled in ((fast, False), (slow, True)):
            if disabled:
                monkeypatch.setenv(cpu_kernels.DISABLE_VARIABLE, "1")
            else:
                monkeypatch.delenv(cpu_kernels.DISABLE_VARIABLE, raising=False)
            xs = x.clone().requires_grad_(input_grad)
            out = quantizer(xs)
            out.backward(grad_out)
            results.append((out.detach(), xs.grad, {name: p.grad.clone() for name, p in quantizer.named_parameters()}))
            with torch.no_grad():
                for parameter in quantizer.parameters():
                    parameter -= 0.01 * parameter.grad
                    parameter.grad = None
        monkeypatch.delenv(cpu_kernels.DISABLE_VARIABLE, raising=False)
        (out, grad_x, grads), (ref_out, ref_grad_x, ref_grads) = results
        _close(out, ref_out, 1e-5)
        if input_grad:
            _close(grad_x, ref_grad_x, 1e-5)
        else:
            assert grad_x is None and ref_grad_x is None
        for name in grads:
            _close(grads[name], ref_grads[name], 1e-4, summation_tolerance(grad_out, x))
        # The torch path sums 10^5 squares in float32, the kernels in float64.
        _close(fast.transformation.ema_std, slow.transformation.ema_std, 1e-5)


@pytest.mark.usefixtures("built")
def test_results_do_not_depend_on_the_thread_count():
    torch.manual_seed(3)
    x = torch.randn(300000)
    grad_out = torch.randn_like(x)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(_grid_run(x, torch.tensor(0.3), torch.tensor(1.1), torch.tensor(0.05), grad_out, 0, 15))
    finally:
        torch.set_num_threads(threads)
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_dispatch_takes_only_contiguous_float32_cpu_tensors(monkeypatch, built):
    x = torch.randn(4, 6)
    per_channel = torch.ones(4, 1)
    assert cpu_kernels.for_tensors(x, per_channel, torch.tensor(0.0)) is not None
    assert cpu_kernels.for_tensors(x.t()) is None  # not contiguous
    assert cpu_kernels.for_tensors(x.double()) is None
    assert cpu_kernels.for_tensors(x.bfloat16()) is None
    assert cpu_kernels.for_tensors(x, torch.ones(1, 6)) is None  # not one per leading channel
    assert cpu_kernels.for_tensors(x, per_channel.double()) is None
    monkeypatch.setenv(cpu_kernels.DISABLE_VARIABLE, "1")
    assert cpu_kernels.for_tensors(x, per_channel) is None


@pytest.mark.usefixtures("built")
def test_non_contiguous_input_takes_the_torch_path_with_the_same_result():
    torch.manual_seed(4)
    x = torch.randn(64, 48)
    step = torch.tensor(0.25)
    transposed = x.t()
    assert not transposed.is_contiguous()
    assert torch.equal(lsq_quantize(transposed, step, -8, 7), lsq_quantize(transposed.contiguous(), step, -8, 7))


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    def broken_build():
        raise OSError("no compiler here")

    monkeypatch.delenv(cpu_kernels.DISABLE_VARIABLE, raising=False)
    monkeypatch.setattr(cpu_kernels, "_build", broken_build)
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_failed", False)
    torch.manual_seed(5)
    x = torch.randn(8, 10, requires_grad=True)
    step = torch.tensor(0.3, requires_grad=True)
    with pytest.warns(RuntimeWarning, match=r"C\+\+ quantizer kernels could not be built \(OSError: no compiler here\)"):
        out = lsq_quantize(x, step, -8, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = lsq_quantize(x, step, -8, 7)  # no second warning
    out.sum().backward()
    assert torch.equal(out, again) and torch.isfinite(step.grad)
    assert cpu_kernels.kernels() is None
