"""The slow, obviously-correct oracle: docs/quantization.md's formula as a chain of elementary torch ops.

Every path of :mod:`rupq.quantizers.fake_quantize` (eager and compiled) is checked against
these functions. They follow the original implementation step by step: ``torch.std``, the clamp
with the gradient ``μ_b`` on a bound (:func:`clamp_with_bound_gradient`), the ``(s - s g).detach() +
s g`` gradient scale and the ``(round(v) - v).detach() + v`` straight-through estimator.
"""

import math
import types

import torch
from torch import nn


def clamp_with_bound_gradient(v, negative_clip, positive_clip, bound_gradient):
    """``clamp(v, n, p)`` whose gradient is 1 strictly inside ``(n, p)``, ``bound_gradient`` (μ_b)
    exactly on a bound and 0 outside.

    The original code gets μ_b from ``torch.clamp`` with tensor bounds, but that gradient depends
    on the torch release: 2.13 and earlier — the paper's runs, and 2.11 on the GPU machines — pass
    all of it (μ_b = 1), 2.14 splits it (μ_b = 1/2, pytorch/pytorch#191142). The rule is therefore
    written out: a mix of a clamp that passes the gradient on a bound and one that does not, both
    equal to ``torch.clamp`` in the forward pass.
    """
    clamped = torch.clamp(v, negative_clip, positive_clip).detach()
    passes_on_bounds = torch.where((v >= negative_clip) & (v <= positive_clip), v, clamped)
    stops_on_bounds = torch.where((v > negative_clip) & (v < positive_clip), v, clamped)
    return bound_gradient * passes_on_bounds + (1 - bound_gradient) * stops_on_bounds


def reference_grid(x, step, negative_clip, positive_clip, bound_gradient):
    """LSQ grid: ``clamp(x / s', n, p)`` (gradient ``bound_gradient`` on a bound), rounded with a
    straight-through estimator, times ``s'``."""
    grad_scale = 1.0 / math.sqrt(positive_clip * x.numel() / step.numel())
    scaled = step * grad_scale
    step = (step - scaled).detach() + scaled
    v = clamp_with_bound_gradient(x / step, negative_clip, positive_clip, bound_gradient)
    q = (v.round() - v).detach() + v
    return q * step


def literal_std(x, dim):
    return torch.std(x, dim, keepdim=True) if dim else torch.std(x)


def reference_standardize(standardization, x, std_of=literal_std):
    """``(x / σ, σ)`` with the EMA rule of docs/quantization.md, updating ``standardization.ema_std`` in place.

    ``std_of(x, dim)`` computes the standard deviation (``torch.std`` by default). Two correct
    std implementations differ in the last bit, which flips the rounding of codes lying on a
    midpoint; tests that want bit-identical outputs pass the framework's own std here and check
    that std against ``torch.std`` separately.
    """
    std = std_of(x, standardization.dim)
    if not standardization.trainable:
        std = std.detach()
    if not bool(standardization.ema_std_initialized):
        standardization.initialize_ema(std.detach())
    if not standardization.training:
        std = standardization.ema_std.detach() if standardization.momentum != 0.0 else std.detach()
        return x / std, std
    momentum = standardization.momentum
    new_std = (momentum * standardization.ema_std).detach() + (1 - momentum) * std
    standardization.ema_std.copy_(new_std.detach().reshape(standardization.ema_std.shape))
    return x / new_std, new_std


def reference_quantize(quantizer, x, std_of=literal_std):
    """What ``quantizer(x)`` computes, step by step (initialising it on first use like the original)."""
    offset = getattr(quantizer, "offset", None)
    if offset is not None:
        x = x - offset
    sigma = None
    if quantizer.transformation is not None:
        x, sigma = reference_standardize(quantizer.transformation, x, std_of)
    if not quantizer.initialized:
        quantizer.initialize_from(x)
    out = reference_grid(x, quantizer.step, quantizer.negative_clip, quantizer.positive_clip, quantizer.bound_gradient)
    if sigma is not None:
        out = out * sigma
    if offset is not None:
        out = out + offset
    return out


def install_reference(model: nn.Module) -> nn.Module:
    """Make every quantizer of ``model`` run :func:`reference_quantize` instead of the formula."""
    from rupq.quantizers import quantizers_of

    for _, quantizer in quantizers_of(model):
        quantizer.forward = types.MethodType(reference_quantize, quantizer)
    return model
