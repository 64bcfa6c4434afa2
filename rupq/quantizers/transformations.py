"""RUPQ's standardization: quantize ``x / σ`` and multiply the result back by ``σ``.

With ``σ`` the (unbiased) standard deviation, the step lives in standardized units of similar
magnitude in every layer and channel, so Adam's update size (≈ learning rate) is the same
*relative* update everywhere.

- weights: ``σ = std(w, dim)`` with ``dim = [1, 2, 3]`` (conv) or ``[1]`` (linear), one per
  output channel, ``momentum = 0`` (fresh each step);
- activations: one scalar ``σ`` tracked as an exponential moving average; in training
  ``σ_new = m · ema + (1 - m) · std(x)`` (the ema term carries no gradient), ``ema ← σ_new``;
  in eval mode the stored ``ema`` (or the detached batch std when ``m == 0``).

Gradient flows through ``σ`` (into ``x``) unless ``trainable`` is false.

A constant tensor (a dead channel, an input collapsed to one value) has ``σ = 0``; σ is used as
``max(σ, SIGMA_EPSILON)``, which leaves every real tensor's σ, and its gradient, unchanged.
"""

import math

import torch
from torch import nn

from rupq.errors import ConfigError
from rupq.quantizers import cpu_kernels

#: Smallest σ divided by (see the module docstring).
SIGMA_EPSILON = 1e-8


class _StandardDeviation(torch.autograd.Function):
    """Unbiased ``std(x - o)`` over ``dims`` in float32; ``o`` (an offset, or ``None``) broadcasts.

    Two passes (mean, then the norm of the deviations); backward recomputes ``x - o - mean``
    instead of keeping it. ``torch.std`` over inner dims is an order of magnitude slower on CPU,
    and this runs on every weight at every training step. On contiguous float32 CPU tensors,
    reducing all dims or all but the leading one, forward and backward are one pass each
    through :mod:`rupq.quantizers.cpu_kernels` (float64 sums).

    ``d std / d x = (x - o - mean) / ((N - 1) std)``, ``d std / d o = -Σ d std / d x``.
    """

    @staticmethod
    def forward(ctx, x, offset, dims):
        rows = _kernel_rows(x, offset, dims)
        # Backward takes the path forward took (whatever RUPQ_NO_CPP_KERNELS says by then).
        kernels = ctx.kernels = None if rows is None else cpu_kernels.for_tensors(x, offset)
        if kernels is not None:
            # One pass: float64 sums of (x - o) and its square per row.
            mean, std = kernels.std_forward(x, cpu_kernels.flat(offset), rows)
            reduced = {d % x.dim() for d in dims}
            kept = [1 if d in reduced else size for d, size in enumerate(x.shape)]
            mean, std = mean.reshape(kept), std.reshape(kept)
            count = x.numel() // max(rows, 1)
        else:
            shifted = x.float() if offset is None else x.float() - offset
            mean = shifted.mean(dims, keepdim=True)
            count = shifted.numel() // mean.numel()
            std = torch.linalg.vector_norm(shifted - mean, dim=dims, keepdim=True).div_(math.sqrt(count - 1))
        ctx.dims, ctx.count, ctx.x_dtype = dims, count, x.dtype
        ctx.save_for_backward(x, offset, mean, std)
        return std

    @staticmethod
    def backward(ctx, grad_std):
        x, offset, mean, std = ctx.saved_tensors
        coefficient = grad_std / (std.clamp_min(SIGMA_EPSILON) * (ctx.count - 1))
        need_offset = offset is not None and ctx.needs_input_grad[1]
        kernels = ctx.kernels
        if kernels is not None:
            grad_x, sums = kernels.std_backward(
                x, cpu_kernels.flat(offset), cpu_kernels.flat(mean), cpu_kernels.flat(coefficient), None
            )
            grad_offset = -sums.reshape(mean.shape).sum_to_size(offset.shape) if need_offset else None
            return grad_x, grad_offset, None
        # coefficient * (x - o - mean) as one multiply-add pass.
        centre = mean if offset is None else mean + offset
        grad_shifted = torch.addcmul(-(coefficient * centre), x.float(), coefficient)
        grad_offset = None
        if need_offset:
            grad_offset = -grad_shifted.sum_to_size(offset.shape)
        return grad_shifted.to(ctx.x_dtype), grad_offset, None


def _kernel_rows(x: torch.Tensor, offset: torch.Tensor | None, dims: list[int]) -> int | None:
    """Rows of the C++ std kernels for reducing ``dims`` (1 for all dims, ``C`` for all but the
    leading one), or ``None`` when the reduction is another one."""
    reduced = sorted(d % x.dim() for d in dims) if x.dim() else []
    if reduced == list(range(x.dim())):
        rows = 1
    elif x.dim() > 1 and reduced == list(range(1, x.dim())):
        rows = x.shape[0]
    else:
        return None
    if offset is not None and offset.numel() not in (1, rows):
        return None
    return rows


class _AllReduceSum(torch.autograd.Function):
    """Sum of a tensor over the processes of ``group``; the gradient of each process's input is
    the sum of every process's output gradient (each process's loss depends on the total)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad = grad_total.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


def global_standard_deviation(x: torch.Tensor, process_group, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased std of ``x - offset`` over the union of every process's ``x`` (a scalar).

    Each process adds ``Σ (x - o)``, ``Σ (x - o)²`` and its element count ``n`` (float64, against
    cancellation) in one all-reduce; ``σ = sqrt((S₂ - S₁² / N) / (N - 1))`` with the totals. The
    all-reduce is differentiable, so ``dσ/dx`` reaches every process's activations as in one process.
    """
    shifted = x.float() if offset is None else x.float() - offset
    count = torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)
    moments = torch.stack([shifted.sum(dtype=torch.float64), shifted.square().sum(dtype=torch.float64), count])
    total, squares, count = _AllReduceSum.apply(moments, process_group).unbind()
    variance = (squares - total * total / count) / (count - 1)
    return variance.clamp_min(SIGMA_EPSILON**2).sqrt().float()


def standard_deviation(x: torch.Tensor, dims: list[int] | None, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased std of ``x - offset`` over ``dims`` (all dims when ``None``), kept dims of size 1."""
    all_dims = list(range(x.dim())) if dims is None else list(dims)
    std = _StandardDeviation.apply(x, offset, all_dims).clamp_min(SIGMA_EPSILON)
    return std.reshape([]) if dims is None else std


class Standardization(nn.Module):
    """Divide a tensor by its standard deviation before the grid (module docstring).

    Args:
        dim: dims to reduce for the std; ``None`` reduces all (one scalar σ).
        momentum: EMA momentum; 0 means a fresh std every step (weights).
        std_init: initial EMA value; ``None`` takes the first batch's std.
        trainable: whether the gradient flows through σ.
    """

    def __init__(
        self,
        dim: list[int] | None = None,
        momentum: float = 0.0,
        std_init: float | None = None,
        trainable: bool = True,
    ):
        super().__init__()
        if not 0.0 <= float(momentum) < 1.0:
            raise ConfigError(f"Standardization: momentum must be in [0, 1), got {momentum}")
        if std_init is not None and not float(std_init) > 0.0:
            raise ConfigError(f"Standardization: std_init must be positive, got {std_init}")
        self.dim = None if dim is None else [int(d) for d in dim]
        self.momentum = float(momentum)
        self.std_init = None if std_init is None else float(std_init)
        self.trainable = bool(trainable)
        # initialize_quantizers sets this so that its calibration pass leaves the EMA as it was
        # (apart from the first-batch initialization).
        self.freeze_ema = False
        # Under DistributedDataParallel (set by rupq.quantizers.data_parallel on activations):
        # training steps take σ of the global batch, so every process holds the same EMA.
        self.process_group = None
        self.register_buffer("ema_std", torch.full([], self.std_init or 1.0))
        self.register_buffer("ema_std_initialized", torch.tensor(self.std_init is not None))
        self._ema_ready = self.std_init is not None

    def configure(self, sigma_shape: list[int]) -> None:
        """Give the EMA the shape of σ for the tensor it will see."""
        self.ema_std = torch.full(sigma_shape, self.std_init or 1.0, device=self.ema_std.device)

    def sigma_shape(self, tensor_shape: list[int]) -> list[int]:
        if self.dim is None:
            return []
        rank = len(tensor_shape)
        if any(not -rank <= d < rank for d in self.dim):
            raise ConfigError(
                f"Standardization: dim {self.dim} does not fit a tensor of {rank} dims (shape {list(tensor_shape)})"
            )
        dims = {d % rank for d in self.dim}
        return [1 if i in dims else size for i, size in enumerate(tensor_shape)]

    def sigma(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """σ of ``x - offset`` (float32); updates the EMA in training mode."""
        if self.training or self.momentum == 0.0 or not self._ema_ready:
            if self.process_group is not None and self.training and torch.is_grad_enabled():
                batch_std = global_standard_deviation(x, self.process_group, offset)
            else:
                batch_std = standard_deviation(x, self.dim, offset)
            if not self.trainable or not self.training:
                batch_std = batch_std.detach()
            if not self._ema_ready:
                self.ema_std.copy_(batch_std.detach().reshape(self.ema_std.shape))
                self.ema_std_initialized.fill_(True)
                self._ema_ready = True
        if not self.training:
            return self.ema_std.detach() if self.momentum != 0.0 else batch_std
        if self.momentum == 0.0:
            sigma = batch_std
        else:
            sigma = (self.momentum * self.ema_std).detach() + (1.0 - self.momentum) * batch_std
        self.update_ema(sigma)
        return sigma

    def update_ema(self, sigma: torch.Tensor) -> None:
        """``ema ← σ`` of a training step (unless frozen)."""
        if not self.freeze_ema:
            self.ema_std.copy_(sigma.detach().reshape(self.ema_std.shape))

    def fused_mixing(self, x: torch.Tensor, offset: torch.Tensor | None = None):
        """``(a, w, rows)`` with this training step's ``σ = a + w · std(x - o)`` when the C++ CPU
        kernels can compute σ inside the grid (``StandardizedLsqFakeQuantize``), else ``None``.

        ``a = momentum · ema`` (detached; ``None`` without momentum), ``w = 1 - momentum``,
        ``rows``: 1 for one σ, ``C`` for one per leading channel. ``σ`` of the fused function
        then goes to :meth:`update_ema`.
        """
        if not (self.training and self.trainable and self._ema_ready and self.process_group is None):
            return None
        rows = _kernel_rows(x, offset, list(range(x.dim())) if self.dim is None else self.dim)
        if rows is None or cpu_kernels.for_tensors(x, offset) is None:
            return None
        if self.momentum == 0.0:
            return None, 1.0, rows
        return (self.momentum * self.ema_std).detach(), 1.0 - self.momentum, rows

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x / σ, σ)``."""
        sigma = self.sigma(x)
        return x / sigma, sigma

    def inverse(self, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return y * sigma

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ema_ready = bool(self.ema_std_initialized)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, momentum={self.momentum}, std_init={self.std_init}, trainable={self.trainable}"
