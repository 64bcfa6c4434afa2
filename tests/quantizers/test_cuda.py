"""The compiled formula on a GPU against the CPU oracle (run by ``scripts/gpu_check.sh``).

Skipped on machines without CUDA: CPU paths are covered by ``test_fake_quantize.py``.
"""

import pytest
import torch
from formula_paths import COMPILED
from quantizer_reference import reference_grid
from test_fake_quantize import _close, _inputs, assert_same_quantization, summation_tolerance

from rupq.quantizers.fake_quantize import BOUND_GRADIENTS, step_gradient_scale

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("bound_gradient", BOUND_GRADIENTS)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.parametrize("size", [1, 64])
def test_compiled_on_cuda_matches_the_cpu_oracle(per_channel, with_offset, size, bound_gradient):
    """``size`` 64 makes the activation about a million elements: reductions over many blocks.
    The offset, when there is one, is 0 as at initialisation: the ReLU's zeros tie with the lower bound."""
    x, step, n, p = _inputs(per_channel, half_wave=True)
    x = x.repeat(size, size, 1, 1) if size > 1 and not per_channel else x.repeat(1, size * size, 1, 1)
    sigma = torch.rand(x.shape[0], 1, 1, 1) + 0.5 if per_channel else torch.tensor(1.3)
    offset = torch.tensor(0.0) if with_offset else None
    grad_out = torch.randn_like(x)

    xc, sc, gc = x.cuda().requires_grad_(), step.cuda().requires_grad_(), sigma.cuda().requires_grad_()
    oc = offset.cuda().requires_grad_() if offset is not None else None
    out, _ = COMPILED(xc, sc, n, p, step_gradient_scale(x.numel(), step.numel(), p), offset=oc, sigma=gc,
                      bound_gradient=bound_gradient)
    out.backward(grad_out.cuda())

    xr, sr, gr = x.clone().requires_grad_(), step.clone().requires_grad_(), sigma.clone().requires_grad_()
    orr = offset.clone().requires_grad_() if offset is not None else None
    shifted = xr if orr is None else xr - orr
    codes = (shifted / gr / sr).detach()
    expected = reference_grid(shifted / gr, sr, n, p, bound_gradient) * gr
    expected = expected if orr is None else expected + orr
    expected.backward(grad_out)

    assert_same_quantization(out.detach().cpu(), expected.detach(), codes)
    _close(xc.grad.cpu(), xr.grad, 1e-5)
    atol = summation_tolerance(grad_out, x)
    for ours, reference in [(sc, sr), (gc, gr)] + ([(oc, orr)] if offset is not None else []):
        _close(ours.grad.cpu(), reference.grad, 1e-5, atol)
