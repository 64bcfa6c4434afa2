"""docs/quantization.md's formula written literally as a chain of torch ops, timed against the framework's.

It is what a researcher would write first: ``torch.std``, the EMA mixing, ``clamp`` with
tensor bounds, the ``(s - s g).detach() + s g`` gradient scale and the ``(round(v) - v).detach()
+ v`` straight-through estimator, every intermediate a separate tensor kept by autograd. The
tests' oracle (``tests/quantizers/quantizer_reference.py``) checks correctness; this copy only
measures what the formula's single autograd function and the compiler save.
"""

import math
import types

import torch
from torch import nn

from rupq.quantizers import quantizers_of


def _chain_forward(quantizer, x: torch.Tensor) -> torch.Tensor:
    offset = getattr(quantizer, "offset", None)
    if offset is not None:
        x = x - offset
    sigma = None
    standardization = quantizer.transformation
    if standardization is not None:
        dims = standardization.dim
        std = torch.std(x, dims, keepdim=True) if dims else torch.std(x)
        if standardization.momentum and standardization.training:
            std = (standardization.momentum * standardization.ema_std).detach() + (1 - standardization.momentum) * std
            standardization.ema_std.copy_(std.detach().reshape(standardization.ema_std.shape))
        elif standardization.momentum:
            std = standardization.ema_std
        sigma = std
        x = x / sigma
    step = quantizer.step.abs().clamp_min(1e-8)
    grad_scale = 1.0 / math.sqrt(quantizer.positive_clip * x.numel() / step.numel())
    step = (step - step * grad_scale).detach() + step * grad_scale
    v = x / step
    bounds = torch.tensor(quantizer.negative_clip, device=x.device), torch.tensor(quantizer.positive_clip, device=x.device)
    v = torch.clamp(v, *bounds)
    out = ((v.round() - v).detach() + v) * step
    if sigma is not None:
        out = out * sigma
    return out if offset is None else out + offset


def install_chain_reference(model: nn.Module) -> nn.Module:
    """Make every (initialised) quantizer of ``model`` run the literal chain of ops."""
    for _, quantizer in quantizers_of(model):
        quantizer.forward = types.MethodType(_chain_forward, quantizer)
    return model
