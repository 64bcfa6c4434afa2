"""The quantizer formula: LSQ+ offset, RUPQ standardization and the LSQ grid, written once.

This file is the one place where the method's arithmetic lives; the quantizer modules only
keep state (steps, offsets, σ EMAs) and call :func:`fake_quantize`. To try another rounding,
gradient scale or σ rule, edit it here.

For a tensor ``x``, a learnable step ``s`` (one for the whole tensor, or one per output
channel: the leading dim), an optional offset ``o`` and the integer range ``[n, p]`` (signed ``[-2^(b-1), 2^(b-1) - 1]``, half-wave ``[0, 2^b - 1]``)::

    s'  = max(|s|, ε)   forward;   its gradient multiplied by  g = 1 / sqrt(p · numel(x) / numel(s))
    σ   = m · ema + (1 - m) · max(std(x - o), ε)      (RUPQ; the ema term carries no gradient)
          or a given σ (the EMA in eval mode),  or 1  (no standardization)
    c   = s' · σ
    t   = (x - o) / c
    q   = round(clamp(t, n, p))                        (half to even)
    out = q · c + o

``std`` is the unbiased standard deviation over the whole tensor, or per output channel. ``grid((x - o) / σ) · σ`` and the folded
``round(clamp((x - o) / c)) · c`` differ only where ``t`` lies within an ulp of a rounding
midpoint (the division is done once instead of twice).

Gradients (the straight-through estimator, dq/dt = 1; ``μ`` = 1 strictly inside ``(n, p)``,
``μ_b`` exactly on a bound, 0 outside; sums run over the elements that share a step, σ or offset)::

    dL/dx = g_out · μ  +  dL/dstd · (x - o - mean) / ((N - 1) · std)     (N elements per std)
    dL/dc = Σ g_out · (q - μ t)          →  dL/ds' = σ · dL/dc,   dL/dσ = s' · dL/dc
    dL/do = Σ g_out · (1 - μ)
    dL/dstd = (1 - m) · [std ≥ ε] · dL/dσ   (none when σ is not trainable)

(With one offset per std, as in every recipe, ``std(x - o) = std(x)`` and the offset gets no
gradient through σ.)

``μ_b``, the gradient on a bound (the quantizers' ``bound_gradient``), is one of two rules:

- ``μ_b = 1`` (the default): what the paper's runs trained with. The original RUPQ code clamps
  with ``torch.clamp`` and tensor bounds, which passes all of the gradient on a bound on the
  torch releases it ran on (2.13 and earlier);
- ``μ_b = 1/2``: what the same code computes on torch 2.14 and later, whose ``clamp`` splits a
  tie between the input and the bound (pytorch/pytorch#191142).

It matters on half-wave inputs with a learnable offset: every zero a ReLU produces lies exactly
on the lower bound while the offset is 0, and contributes ``g_out · (1 - μ_b)`` to ``dL/do``, so
with ``μ_b = 1`` those zeros leave the offset alone and with ``μ_b = 1/2`` they move it from the
first step. ``μ_b`` is written out here, so no torch release changes either rule. The forward
pass does not depend on it (nor does an export).

The grid is one autograd function (:class:`_LsqGrid`) with the backward above, so that it
keeps only ``x`` (alive anyway: a weight, or the previous layer's output) and recomputes ``t``;
everything else is plain autograd. The quantizers run :func:`fake_quantize` compiled by
``torch.compile`` (:mod:`rupq.quantizers.compiled`), which fuses the std, the grid and their
backward into a few passes over the tensor, on every device.
"""

import math

import torch

#: Smallest step magnitude and smallest σ divided by: a step trained to zero or below, or a
#: constant tensor, cannot produce inf/NaN; every value above is unchanged, gradients included.
STEP_EPSILON = 1e-8
SIGMA_EPSILON = 1e-8

#: ``μ_b``, the gradient on a clip bound (module docstring): the paper's rule first, the default.
BOUND_GRADIENTS = (1.0, 0.5)
DEFAULT_BOUND_GRADIENT = BOUND_GRADIENTS[0]


def integer_range(bit_width: int, half_wave: bool) -> tuple[int, int]:
    """``(n, p)``: ``(0, 2^b - 1)`` for half-wave tensors, ``(-2^(b-1), 2^(b-1) - 1)`` otherwise."""
    if half_wave:
        return 0, 2**bit_width - 1
    return -(2 ** (bit_width - 1)), 2 ** (bit_width - 1) - 1


def step_gradient_scale(x_numel: int, step_numel: int, positive_clip: int) -> float:
    """LSQ's ``g = 1 / sqrt(p · numel(x) / numel(s))``, a Python float.

    Computed outside the compiled graph and passed in: inside, the generated kernels would
    re-evaluate the square root for every vector of elements.
    """
    return 1.0 / math.sqrt(positive_clip * x_numel / step_numel)


def learnable_step(step: torch.Tensor, grad_scale: float) -> torch.Tensor:
    """``s' = max(|s|, ε)`` with its gradient multiplied by ``grad_scale`` (LSQ's ``g``).

    Written as ``(s - s g).detach() + s g`` like the original RUPQ code (same forward bits).
    """
    guarded = step.abs().clamp_min(STEP_EPSILON)
    scaled = guarded * grad_scale
    return (guarded - scaled).detach() + scaled


def standard_deviation(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``max(std, ε)`` of ``x`` over ``dims`` (unbiased, dims kept).

    Clamped before the square root, whose derivative is infinite at 0: a constant tensor (a dead
    channel, an input collapsed to one value) gets σ = ε and a zero gradient, not NaN.
    """
    var, _ = torch.var_mean(x, dim=dims, keepdim=True, correction=1)
    return var.clamp_min(SIGMA_EPSILON**2).sqrt()


def sigma_rule(std: torch.Tensor, ema: torch.Tensor | None, momentum: float) -> torch.Tensor:
    """RUPQ's σ of a training step: ``m · ema + (1 - m) · std``, the ema term without gradient."""
    return std if momentum == 0.0 else (momentum * ema).detach() + (1.0 - momentum) * std


def standardization_sigma(
    x: torch.Tensor,
    offset: torch.Tensor | None,
    std_dims: tuple[int, ...],
    ema: torch.Tensor | None,
    momentum: float,
    std_trainable: bool = True,
) -> torch.Tensor:
    """σ of a training step: ``momentum · ema + (1 - momentum) · max(std(x - o), ε)``."""
    # std(x - o) = std(x) when o is one value per std: shifting changes no deviation, and the
    # offset then gets no gradient through σ (one reduction less in the backward pass).
    shifts_each_std_uniformly = offset is None or offset.numel() == 1 or 0 not in std_dims
    std = standard_deviation(x if shifts_each_std_uniformly else x - offset, std_dims)
    if not std_trainable:
        std = std.detach()
    return sigma_rule(std, ema, momentum)


class _LsqGrid(torch.autograd.Function):
    """``out = round(clamp((x - o) / c, n, p)) · c + o`` with the module docstring's gradients;
    ``c`` and ``o`` (or ``None``) broadcast against ``x``, ``bound_gradient`` is ``μ_b``."""

    @staticmethod
    def forward(ctx, x, scale, offset, n, p, bound_gradient):
        ctx.n, ctx.p, ctx.bound_gradient = n, p, bound_gradient
        ctx.save_for_backward(x, scale, offset)
        shifted = x if offset is None else x - offset
        out = (shifted / scale).clamp(n, p).round() * scale
        return out if offset is None else out + offset

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, offset = ctx.saved_tensors
        n, p = ctx.n, ctx.p
        t = (x if offset is None else x - offset) / scale
        inside = ((t > n) & (t < p)).float()
        on_bound = ((t == n) | (t == p)).float()
        mu = inside + ctx.bound_gradient * on_bound
        grad_x = grad_out * mu
        grad_scale = (grad_out * (t.clamp(n, p).round() - mu * t)).sum_to_size(scale.shape)
        grad_offset = None if offset is None else (grad_out - grad_x).sum_to_size(offset.shape)
        return grad_x, grad_scale, grad_offset, None, None, None


def fake_quantize(
    x: torch.Tensor,
    step: torch.Tensor,
    n: int,
    p: int,
    grad_scale: float,
    offset: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    std_dims: tuple[int, ...] | None = None,
    ema: torch.Tensor | None = None,
    momentum: float = 0.0,
    std_trainable: bool = True,
    bound_gradient: float = DEFAULT_BOUND_GRADIENT,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The formula of the module docstring: ``(out, σ)``, ``out`` in float32.

    ``step``, ``offset``, ``sigma`` and ``ema`` are scalars or one per output channel (shaped to
    broadcast against ``x``). σ is ``sigma`` when given; else, with ``std_dims`` (the dims of
    the std: all of them, or all but the leading one), ``momentum · ema + (1 - momentum) ·
    max(std(x - o), ε)`` (``ema`` may be ``None`` when ``momentum`` is 0; ``std_trainable=False``
    detaches the std); else there is none (``σ`` returned as ``None``). ``grad_scale``: LSQ's
    ``g`` (:func:`step_gradient_scale`). ``bound_gradient``: ``μ_b``, one of :data:`BOUND_GRADIENTS`
    (not checked here: the quantizers check their setting once, not on every call).
    """
    x = x.float()
    step = learnable_step(step, grad_scale)
    if sigma is None and std_dims is not None:
        sigma = standardization_sigma(x, offset, std_dims, ema, momentum, std_trainable)
    scale = step if sigma is None else step * sigma
    return _LsqGrid.apply(x, scale, offset, n, p, bound_gradient), sigma
