"""RUPQ's standardization: the state behind σ (its EMA) and which σ rule a step uses.

The arithmetic (σ from the std, the EMA mixing, the ε guard) is in
:mod:`rupq.quantizers.fake_quantize`; this module holds what a quantizer keeps between steps:

- weights: ``dim = [1, 2, 3]`` (conv) or ``[1]`` (linear): one σ per output channel,
  ``momentum = 0`` (a fresh std each step);
- activations: ``dim = None``: one σ, an exponential moving average with ``momentum``;
- under DistributedDataParallel, training steps take the std of the global batch
  (:func:`global_standard_deviation`), so that every process holds the same EMA.
"""

from contextlib import contextmanager

import torch
from torch import nn

from rupq.errors import ConfigError
from rupq.quantizers.fake_quantize import SIGMA_EPSILON, sigma_rule, standard_deviation


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
        # True inside frozen_ema(): training steps leave the EMA as it was.
        self._freeze_ema = False
        # Under DistributedDataParallel (set_process_group, by rupq.quantizers.data_parallel on
        # activations): training steps take σ of the global batch, so every process holds the same EMA.
        self.process_group = None
        self.register_buffer("ema_std", torch.full([], self.std_init or 1.0))
        self.register_buffer("ema_std_initialized", torch.tensor(self.std_init is not None))
        self._ema_ready = self.std_init is not None

    def set_process_group(self, process_group) -> None:
        """Take σ of training steps over the global batch of ``process_group`` (DDP's group);
        ``None``: over this process's tensor."""
        self.process_group = process_group

    @contextmanager
    def frozen_ema(self):
        """Inside the block training steps leave the EMA as it was (apart from its first-batch
        initialization): the calibration pass of :func:`~rupq.quantizers.initialization.initialize_quantizers`."""
        previous = self._freeze_ema
        self._freeze_ema = True
        try:
            yield self
        finally:
            self._freeze_ema = previous

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
        if dims != set(range(1, rank)):
            raise ConfigError(
                f"Standardization: dim {self.dim} on a tensor of {rank} dims: σ is either one for the whole "
                f"tensor (dim: null) or one per output channel (dim: {list(range(1, rank))})"
            )
        return [tensor_shape[0]] + [1] * (rank - 1)

    def std_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        """The dims σ's std reduces: all of them, or all but the leading one (``dim``)."""
        return tuple(range(0 if self.dim is None else 1, x.dim()))

    def ensure_ema_initialized(self, x: torch.Tensor, offset: torch.Tensor | None) -> None:
        """On the very first tensor (no ``std_init``, no loaded state) its std ``std(x - o)``
        initialises the EMA; afterwards nothing. Call it before :meth:`formula_arguments`."""
        if not self._ema_ready:
            self.initialize_ema(standard_deviation(x.float() if offset is None else x.float() - offset, self.std_dims(x)))

    def formula_arguments(self, x: torch.Tensor, offset: torch.Tensor | None) -> dict:
        """The σ rule for :func:`~rupq.quantizers.fake_quantize.fake_quantize` (changes nothing).

        Training: ``m · ema + (1 - m) · std(x - o)``, computed inside the formula (under DDP from
        the global batch's std, computed here). Eval: the stored EMA, or the detached std when
        ``m == 0``.
        """
        if not self.training:
            if self.momentum != 0.0:
                return {"sigma": self.ema_std.detach()}
            return {"std_dims": self.std_dims(x), "std_trainable": False}
        if self.process_group is not None and torch.is_grad_enabled():
            std = global_standard_deviation(x, self.process_group, offset)
            if not self.trainable:
                std = std.detach()
            return {"sigma": sigma_rule(std, self.ema_std, self.momentum)}
        return {
            "std_dims": self.std_dims(x),
            "ema": self.ema_std,
            "momentum": self.momentum,
            "std_trainable": self.trainable,
        }

    @torch.no_grad()
    def initialize_ema(self, std: torch.Tensor) -> None:
        """The EMA starts at the first tensor's std (when no ``std_init`` was given)."""
        self.ema_std.copy_(std.reshape(self.ema_std.shape))
        self.ema_std_initialized.fill_(True)
        self._ema_ready = True

    def update_ema(self, sigma: torch.Tensor) -> None:
        """``ema ← σ`` of a training step (unless frozen)."""
        if not self._freeze_ema:
            if torch.compiler.is_compiling():
                # Inside a whole compiled model the backward pass may recompute σ from the EMA
                # buffer it read; updated in place, the buffer would hold the next σ by then
                # (pytorch/pytorch#197039: silently wrong gradients). A new tensor leaves the
                # one read untouched.
                self.ema_std = sigma.detach().reshape(self.ema_std.shape).clone()
            else:
                self.ema_std.copy_(sigma.detach().reshape(self.ema_std.shape))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ema_ready = bool(self.ema_std_initialized)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, momentum={self.momentum}, std_init={self.std_init}, trainable={self.trainable}"
