"""The LSQ grid (Esser et al., 2019) as one fused autograd function.

For a tensor ``x``, a learnable step ``s`` (a scalar, or one per output channel) and the
integer range ``[n, p]``::

    g   = 1 / sqrt(p * numel(x) / numel(s))        # gradient scale of the step
    s'  = s in the forward pass, its gradient multiplied by g
    v   = clamp(x / s', n, p)
    q   = round(v)          (straight-through: dq/dv = 1)
    out = q * s'

Exactly on a bound (``x / s' == n`` or ``== p``) half of the incoming gradient reaches ``x``
(as PyTorch's ``clamp`` with tensor bounds does in the original implementation), strictly
inside all of it, outside none.

The fused function also applies the LSQ+ offset ``o`` and RUPQ's standardization ``σ`` around
the grid, because all three share one elementwise pass. Since ``s' σ · round(clamp(u / s'))``
with ``u = (x - o) / σ`` only depends on the product ``c = s' σ``, it folds them::

    t   = (x - o) / c,   c = s' σ
    out = round(clamp(t, n, p)) * c + o

(the literal chain ``((x - o) / σ) / s'`` rounds differently only in the last bit, so a code
can differ from it solely where ``t`` lies within a few ulp of a rounding midpoint), with the
gradients (``m`` = 1 inside, 1/2 on a bound, 0 outside; sums run over the elements sharing one
step / σ / offset)::

    dL/dx  = g_out * m
    dL/ds' = Σ g_out * σ * (q - m t)
    dL/dσ  = Σ g_out * s' * (q - m t)
    dL/do  = Σ g_out * (1 - m)

Only the input and a few scalars are kept for backward (the input is alive anyway: it is a
weight, or the previous layer's output that its own backward keeps); the backward pass
recomputes ``t`` with the same operations as the forward pass, so the masks agree bit for bit.

On contiguous float32 CPU tensors forward and backward are one pass each through the C++
kernels of :mod:`rupq.quantizers.cpu_kernels` (same formulas, sums in float64); elsewhere, or
with ``RUPQ_NO_CPP_KERNELS=1``, through the torch ops below.
"""

import math

import torch

from rupq.quantizers import cpu_kernels
from rupq.quantizers.transformations import SIGMA_EPSILON

#: Smallest step magnitude the grid divides by. An optimizer may push a step to zero or below;
#: the grid then uses ``max(|s|, STEP_EPSILON)``, which is the identity (values and gradients)
#: for every step above it, so normal training is unchanged bit for bit.
STEP_EPSILON = 1e-8


def integer_range(bit_width: int, half_wave: bool) -> tuple[int, int]:
    """``(n, p)``: ``(0, 2^b - 1)`` for half-wave tensors, ``(-2^(b-1), 2^(b-1) - 1)`` otherwise."""
    if half_wave:
        return 0, 2**bit_width - 1
    return -(2 ** (bit_width - 1)), 2 ** (bit_width - 1) - 1


def step_gradient_scale(x_numel: int, step_numel: int, positive_clip: int) -> float:
    """LSQ's ``g = 1 / sqrt(p * numel(x) / numel(s))``."""
    return 1.0 / math.sqrt(positive_clip * x_numel / step_numel)


def scale_gradient(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """``tensor`` in the forward pass; its gradient multiplied by ``factor`` in backward.

    Written as ``(t - t f).detach() + t f`` like the original, whose forward value may differ
    from ``t`` in the last bit; keeping the same expression keeps outputs identical to it.
    """
    scaled = tensor * factor
    return (tensor - scaled).detach() + scaled


def guard_step(step: torch.Tensor) -> torch.Tensor:
    """``max(|s|, STEP_EPSILON)``: a step trained to zero or below cannot produce inf/NaN."""
    return step.abs().clamp_min(STEP_EPSILON)


def _scaled_step_value(step: torch.Tensor, factor: float) -> torch.Tensor:
    """The value of ``scale_gradient(guard_step(step), factor)``, by the same ops (same bits)."""
    guarded = guard_step(step.detach())
    scaled = guarded * factor
    return (guarded - scaled) + scaled


def _raw_step_gradient(grad_scaled: torch.Tensor, step: torch.Tensor, factor: float) -> torch.Tensor:
    """``dL/ds`` from ``dL/ds'``, as autograd takes it through the gradient scale, ``clamp_min`` and ``abs``."""
    # clamp_min passes the gradient where |s| >= ε compared exactly (ε is not a float32).
    return grad_scaled * factor * torch.where(step.double().abs() >= STEP_EPSILON, step.sign(), 0.0)


def _folded_scale(step, sigma):
    """``c = s' σ``: the grid only ever sees the product (one pass instead of two per use)."""
    return step if sigma is None else step * sigma


def _codes(x, scale, offset):
    """``t = (x - o) / c`` in float32, in a fresh tensor."""
    x = x.float()
    if offset is None:
        return x / scale
    return torch.sub(x, offset).div_(scale)


def fake_quantize_values(x, step, n, p, sigma=None, offset=None) -> torch.Tensor:
    """Forward values only (no autograd): ``round(clamp((x - o) / c, n, p)) * c + o``, ``c = s' σ``, float32."""
    scale = _folded_scale(step, sigma)
    kernels = cpu_kernels.for_tensors(x, scale, offset)
    if kernels is not None:
        return kernels.fake_quantize_forward(x, cpu_kernels.flat(scale), cpu_kernels.flat(offset), n, p)
    codes = _codes(x, scale, offset).clamp_(n, p).round_()
    if offset is None:
        return codes.mul_(scale)
    return torch.addcmul(offset, codes, scale, out=codes)


def _just_outside(bound: int, direction: float) -> float:
    """The float32 next to ``bound`` towards ``direction``: ``t > just_outside(n, -inf)`` is ``t >= n``."""
    return float(torch.nextafter(torch.tensor(float(bound)), torch.tensor(direction)))


def _is_per_channel(shape: torch.Size) -> bool:
    return math.prod(shape) > 1


def _sum_products(a: torch.Tensor, b: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``Σ a b`` over everything (shape ``[]``) or per leading channel (shape ``[C]``), no temporaries."""
    if not per_channel:
        return torch.dot(a.reshape(-1), b.reshape(-1))
    channels = a.shape[0]
    # vecdot is a single fused pass; bmm of [C,1,K] x [C,K,1] is several times slower on CPU.
    return torch.linalg.vecdot(a.reshape(channels, -1), b.reshape(channels, -1), dim=1)


def _sum_to(values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a ``[C]`` or ``[]`` tensor of per-channel sums to a step/σ/offset ``shape``."""
    if _is_per_channel(shape):
        return values.reshape(shape)
    return values.sum().reshape(shape)


class LsqFakeQuantize(torch.autograd.Function):
    """``out = round(clamp((x - o) / c, n, p)) * c + o``, ``c = s' σ``, with LSQ's gradients.

    ``raw_step`` is the learnable step ``s``; ``s' = max(|s|, ε)`` with its gradient scaled by
    ``factor`` (``g``) is taken inside, so that a quantizer is one autograd node. ``sigma`` and
    ``offset`` may be ``None``. Parameters are scalars or one per leading channel of ``x``.
    """

    @staticmethod
    def forward(ctx, x, raw_step, sigma, offset, n: int, p: int, factor: float):
        step = _scaled_step_value(raw_step, factor)
        ctx.n, ctx.p, ctx.factor = n, p, factor
        ctx.x_dtype = x.dtype
        # Backward takes the path forward took (whatever RUPQ_NO_CPP_KERNELS says by then).
        ctx.kernels = cpu_kernels.for_tensors(x, step, sigma, offset)
        ctx.save_for_backward(x, raw_step, step, sigma, offset)
        return fake_quantize_values(x, step, n, p, sigma, offset)

    @staticmethod
    def backward(ctx, grad_out):
        x, raw_step, step, sigma, offset = ctx.saved_tensors
        n, p = ctx.n, ctx.p
        need_x, need_step, need_sigma, need_offset = ctx.needs_input_grad[:4]
        scale = _folded_scale(step, sigma)
        kernels = ctx.kernels
        if kernels is not None:
            grad = grad_out if grad_out.dtype == torch.float32 else grad_out.float()
            grad_x, residual, outside_sums = kernels.fake_quantize_backward(
                grad.contiguous(), x, cpu_kernels.flat(scale), cpu_kernels.flat(offset), n, p, need_x
            )
            if residual.numel() == 1:
                residual, outside_sums = residual.reshape([]), outside_sums.reshape([])
            grad_x = grad_x if need_x else None
        else:
            grad_x, residual, outside_sums = _torch_backward(grad_out, x, scale, offset, n, p, ctx.needs_input_grad[:4])
        grad_step = grad_sigma = grad_offset = None
        if need_step:
            weighted = residual if sigma is None else residual * sigma.reshape(-1).squeeze()
            grad_step = _raw_step_gradient(_sum_to(weighted, step.shape), raw_step, ctx.factor)
        if need_sigma:
            grad_sigma = _sum_to(residual * step.reshape(-1).squeeze(), sigma.shape)
        if need_offset:
            grad_offset = _sum_to(outside_sums, offset.shape)
        if grad_x is not None and grad_x.dtype != ctx.x_dtype:
            grad_x = grad_x.to(ctx.x_dtype)
        return grad_x, grad_step, grad_sigma, grad_offset, None, None, None


def _torch_backward(grad_out, x, scale, offset, n, p, needs_input_grad):
    """``(g m, Σ g (q - m t), Σ g (1 - m))`` with torch ops; sums per channel (``[C]``) or whole (``[]``)."""
    grad = grad_out.float()
    if not grad.is_contiguous():
        grad = grad.contiguous()
    codes = _codes(x, scale, offset)

    # 2 m g = g [n < t < p] + g [n <= t <= p]: 2g inside, g on a bound, 0 outside.
    twice_masked = torch.ops.aten.hardtanh_backward(grad, codes, n, p)
    inclusive = torch.ops.aten.hardtanh_backward(grad, codes, _just_outside(n, -math.inf), _just_outside(p, math.inf))
    twice_masked.add_(inclusive)
    del inclusive

    need_x, need_step, need_sigma, need_offset = needs_input_grad
    residual = outside_sums = None
    if need_step or need_sigma or need_offset:
        # g (q - m t) = m g (q - t) + (1 - m) g q: exact per element, since where m != 0
        # t equals its clamped value and q - t is computed exactly.
        outside_grad = torch.add(grad, twice_masked, alpha=-0.5)
        per_channel = _is_per_channel(scale.shape) or (offset is not None and _is_per_channel(offset.shape))
        if need_step or need_sigma:
            clamped = codes.clamp_(n, p)
            rounded = clamped.round()
            residual = _sum_products(outside_grad, rounded, per_channel)
            rounding_error = torch.sub(rounded, clamped, out=clamped)
            residual += 0.5 * _sum_products(twice_masked, rounding_error, per_channel)
        if need_offset:
            if per_channel:
                outside_sums = outside_grad.reshape(outside_grad.shape[0], -1).sum(1)
            else:
                outside_sums = outside_grad.sum()
    grad_x = twice_masked.mul_(0.5) if need_x else None
    return grad_x, residual, outside_sums


class StandardizedLsqFakeQuantize(torch.autograd.Function):
    """:class:`LsqFakeQuantize` with RUPQ's σ computed inside: ``σ = a + w · max(std(x - o), ε)``.

    ``a`` (detached) and ``w`` are the EMA mixing of a training step (``a = momentum · ema``,
    ``w = 1 - momentum``; ``a = None``, ``w = 1`` without momentum), ``std`` the unbiased std
    over the whole tensor (``rows = 1``) or per leading channel (``rows = C``). The values and
    gradients are those of :meth:`Standardization.sigma` followed by :class:`LsqFakeQuantize`;
    being one function, the backward adds the std's share of ``dL/dx``,
    ``dL/dstd · (x - o - mean) / ((N - 1) std)`` with ``dL/dstd = w [std >= ε] Σ g s' (q - m t)``,
    into the grid's ``dL/dx`` in place, instead of autograd adding two full-size gradients.
    With one σ per channel (weights) the kernels take one row at a time, so the row stays in
    cache from the std's pass to the grid's. C++ kernels only (:func:`cpu_kernels.for_tensors`
    must accept the tensors).

    Returns ``(out, σ)``; ``σ`` carries no gradient (it is for the EMA update).
    """

    @staticmethod
    def forward(ctx, x, raw_step, offset, ema_term, weight: float, rows: int, sigma_shape, n: int, p: int, factor: float):
        step = _scaled_step_value(raw_step, factor)
        kernels = ctx.kernels = cpu_kernels.kernels()
        flat_offset = cpu_kernels.flat(offset)
        if rows > 1:
            out, mean, std, sigma, scale = kernels.standardized_rows_forward(
                x, cpu_kernels.flat(step), flat_offset, cpu_kernels.flat(ema_term), weight, SIGMA_EPSILON, n, p
            )
            sigma = sigma.reshape(sigma_shape)
        else:
            mean, std = kernels.std_forward(x, flat_offset, rows)
            batch_std = std.clamp_min(SIGMA_EPSILON).reshape(sigma_shape)
            sigma = batch_std if ema_term is None else ema_term + weight * batch_std
            scale = _folded_scale(step, sigma)
            out = kernels.fake_quantize_forward(x, cpu_kernels.flat(scale), flat_offset, n, p)
        ctx.n, ctx.p, ctx.weight, ctx.epsilon, ctx.factor = n, p, weight, SIGMA_EPSILON, factor
        ctx.save_for_backward(x, raw_step, step, offset, mean, std, sigma, scale)
        ctx.mark_non_differentiable(sigma)
        return out, sigma

    @staticmethod
    def backward(ctx, grad_out, _grad_sigma):
        x, raw_step, step, offset, mean, std, sigma, scale = ctx.saved_tensors
        need_x, need_step, need_offset = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        kernels = ctx.kernels
        grad = (grad_out if grad_out.dtype == torch.float32 else grad_out.float()).contiguous()
        flat_offset = cpu_kernels.flat(offset)
        rows = std.numel()
        if rows > 1:
            grad_x, residual, outside_sums, std_sums = kernels.standardized_rows_backward(
                grad, x, cpu_kernels.flat(step), flat_offset, mean, std, scale.reshape(-1), ctx.weight, ctx.epsilon,
                ctx.n, ctx.p, need_x,
            )
        else:
            grad_x, residual, outside_sums = kernels.fake_quantize_backward(
                grad, x, cpu_kernels.flat(scale), flat_offset, ctx.n, ctx.p, need_x
            )
            # dL/dσ (the grid may have one row per channel where σ has one for all), through the
            # EMA mixing and max(std, ε), into the std's coefficient.
            grad_std = (residual * step.reshape(-1) * ctx.weight).sum().reshape(1)
            grad_std = torch.where(std >= ctx.epsilon, grad_std, 0.0)
            coefficient = grad_std / (std.clamp_min(ctx.epsilon) * (x.numel() - 1))
            _, std_sums = kernels.std_backward(x, flat_offset, mean, coefficient, grad_x if need_x else None)
        grad_step = grad_offset = None
        if need_step:
            grad_step = _raw_step_gradient(_sum_to(residual * sigma.reshape(-1), step.shape), raw_step, ctx.factor)
        if need_offset:
            # The grid's Σ g (1 - m) and the std's -Σ dL/dstd · (x - o - mean) / ((N - 1) std).
            grad_offset = _sum_to(outside_sums, offset.shape) - _sum_to(std_sums, offset.shape)
        return grad_x if need_x else None, grad_step, grad_offset, None, None, None, None, None, None, None


def learnable_step(step: torch.Tensor, x_numel: int, positive_clip: int) -> torch.Tensor:
    """``s'``: the raw learnable step guarded (:func:`guard_step`), its gradient scaled by LSQ's ``g``.

    ``x_numel`` counts the elements the step quantizes; when ``x`` is one shard of a larger batch
    (data-parallel training) it is the whole batch's, whose step gradients are added up.
    """
    return scale_gradient(guard_step(step), step_gradient_scale(x_numel, step.numel(), positive_clip))


def standardized_lsq_quantize(
    x: torch.Tensor,
    step: torch.Tensor,
    negative_clip: int,
    positive_clip: int,
    ema_term: torch.Tensor | None,
    weight: float,
    rows: int,
    sigma_shape: list[int],
    offset: torch.Tensor | None = None,
    x_numel: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lsq_quantize` with σ computed inside (:class:`StandardizedLsqFakeQuantize`): ``(out, σ)``."""
    factor = step_gradient_scale(x.numel() if x_numel is None else x_numel, step.numel(), positive_clip)
    return StandardizedLsqFakeQuantize.apply(
        x, step, offset, ema_term, weight, rows, sigma_shape, negative_clip, positive_clip, factor
    )


def lsq_quantize(
    x: torch.Tensor,
    step: torch.Tensor,
    negative_clip: int,
    positive_clip: int,
    sigma: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
    x_numel: int | None = None,
) -> torch.Tensor:
    """Fake-quantize ``x`` on the LSQ grid (module docstring), result in float32.

    ``step`` is the raw learnable step, guarded and gradient-scaled inside as :func:`learnable_step`
    does (``x_numel`` as there).
    """
    factor = step_gradient_scale(x.numel() if x_numel is None else x_numel, step.numel(), positive_clip)
    if not torch.is_grad_enabled():  # validation: the same values without the autograd function
        return fake_quantize_values(x, _scaled_step_value(step, factor), negative_clip, positive_clip, sigma, offset)
    return LsqFakeQuantize.apply(x, step, sigma, offset, negative_clip, positive_clip, factor)


def lsq_tangents(
    x: torch.Tensor, scale: torch.Tensor, n: int, p: int, offset: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-element derivatives of ``out`` for a fixed ``x``: ``(∂out/∂c, ∂out/∂o)`` = ``(q - m t, 1 - m)``.

    ``c = s' σ`` is a scalar (``∂out/∂o`` is ``None`` without an offset). These are the factors
    the backward pass multiplies ``g_out`` by (module docstring), so ``dL/dc = Σ g_out ∂out/∂c``.
    A layer whose input carries no gradient (a network's first layer) uses them to get the
    step's and offset's gradients from its own forward pass instead of a gradient for its input.
    """
    codes = _codes(x.detach(), scale.detach(), None if offset is None else offset.detach())
    # m = ([n < t < p] + [n <= t <= p]) / 2: 1 inside, 1/2 on a bound, 0 outside.
    mask = ((codes > n) & (codes < p)).float().add_(((codes >= n) & (codes <= p)).float()).mul_(0.5)
    scale_tangent = codes.clamp(n, p).round_().sub_(mask * codes)
    offset_tangent = None if offset is None else torch.sub(1.0, mask)
    return scale_tangent, offset_tangent
