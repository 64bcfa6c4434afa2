"""Quantizers with a learnable step (LSQ) and optionally a learnable offset (LSQ+).

``StepQuantizer``:       ``out = grid(x / σ) · σ``             (``σ = 1`` without a transformation)
``StepOffsetQuantizer``: ``out = grid((x - o) / σ) · σ + o``

The step is initialised on the first forward pass, on the tensor actually quantized
(``(x - o) / σ``), and never again: the step, an ``initialized_flag`` buffer and the first
tensor's min/max and step (for the calibration report) are all in the state dict.
"""

import torch
import torch.distributed as dist
from torch import nn

from rupq.errors import ConfigError
from rupq.quantizers.compiled import quantize
from rupq.quantizers.fake_quantize import (
    BOUND_GRADIENTS,
    DEFAULT_BOUND_GRADIENT,
    integer_range,
    standardization_sigma,
    step_gradient_scale,
)
from rupq.quantizers.initializers import MeanStdInitializer, MinErrorInitializer
from rupq.quantizers.transformations import Standardization


def _checked_bound_gradient(owner: str, value) -> float:
    # Only the two rules of the formula's docstring: any other μ on a bound is no method anyone
    # trained with, most likely a typo for one of them.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) not in BOUND_GRADIENTS:
        expected = " or ".join(str(rule) for rule in BOUND_GRADIENTS)
        raise ConfigError(f"{owner}: bound_gradient must be {expected} (the gradient on a clip bound), got {value!r}")
    return float(value)


class StepQuantizer(nn.Module):
    """Fake-quantizer with a learnable step on the LSQ grid (the formula: :mod:`rupq.quantizers.fake_quantize`).

    Args:
        initializer: computes the first step from the first tensor.
        transformation: optional :class:`Standardization` applied around the grid.
        per_channel: one step per output channel (weights only).
        bound_gradient: the fraction of the gradient passed to the input exactly on a clip bound,
            1.0 (the paper's runs, the default) or 0.5 (the original code on torch ≥ 2.14); the
            formula's docstring says why the two.
    """

    def __init__(
        self,
        initializer: MinErrorInitializer | MeanStdInitializer,
        transformation: Standardization | None = None,
        per_channel: bool = False,
        bound_gradient: float = DEFAULT_BOUND_GRADIENT,
    ):
        super().__init__()
        if not callable(initializer):
            raise ConfigError(f"{type(self).__name__}: initializer must be an initializer, got {initializer!r}")
        if transformation is not None and not isinstance(transformation, Standardization):
            raise ConfigError(f"{type(self).__name__}: transformation must be a Standardization, got {transformation!r}")
        self.initializer = initializer
        self.transformation = transformation
        self.per_channel = bool(per_channel)
        self.bound_gradient = _checked_bound_gradient(type(self).__name__, bound_gradient)
        self.bit_width: int | None = None
        self.half_wave = False
        self.negative_clip = 0
        self.positive_clip = 0
        self.step = nn.Parameter(torch.ones([]))
        self.register_buffer("initialized_flag", torch.tensor(False))
        self.register_buffer("min_value", torch.zeros([]))
        self.register_buffer("max_value", torch.zeros([]))
        self.register_buffer("initial_step", torch.ones([]))
        self._initialized = False
        # Data-parallel training cuts the global batch into this many equal shards (one per
        # DataParallel replica or DDP process); set_sharding, by rupq.quantizers.data_parallel on
        # input quantizers, so that LSQ's gradient scale counts the elements of the global batch.
        self.batch_shards = 1

    @property
    def initialized(self) -> bool:
        return self._initialized

    def set_sharding(self, shards: int, process_group=None) -> None:
        """This quantizer sees ``1 / shards`` of the global batch; ``process_group`` (DDP's group,
        or ``None``) is the one its standardization takes σ over in training steps."""
        self.batch_shards = int(shards)
        if self.transformation is not None:
            self.transformation.set_process_group(process_group)

    def configure(self, bit_width: int, half_wave: bool, step_shape: list[int], sigma_shape: list[int]) -> None:
        """Fix the integer range and create the step (and σ EMA) with their final shapes."""
        self.bit_width = int(bit_width)
        self.half_wave = bool(half_wave)
        self.negative_clip, self.positive_clip = integer_range(self.bit_width, self.half_wave)
        device = self.step.device
        self.step = nn.Parameter(torch.ones(step_shape, device=device))
        self.initial_step = torch.ones(step_shape, device=device)
        if self.transformation is not None:
            self.transformation.configure(sigma_shape)

    def _offset(self) -> torch.Tensor | None:
        return None

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor, offset: torch.Tensor | None) -> None:
        """The first step, from the tensor the grid quantizes: ``(x - o) / σ`` (σ by the training rule)."""
        quantized_input = x.float() if offset is None else x.float() - offset
        transformation = self.transformation
        if transformation is not None:
            sigma = standardization_sigma(x.float(), offset, transformation.std_dims(x), transformation.ema_std, transformation.momentum)
            quantized_input = quantized_input / sigma
        self.initialize_from(quantized_input)

    @torch.no_grad()
    def initialize_from(self, quantized_input: torch.Tensor) -> None:
        """Set the step from the initializer on ``quantized_input`` (the tensor the grid sees;
        its leading dim is the channels of a per-channel step) and record its range; once."""
        self.min_value.copy_(quantized_input.min())
        self.max_value.copy_(quantized_input.max())
        step = self.initializer(quantized_input, self.negative_clip, self.positive_clip, list(self.step.shape))
        self.step.copy_(step.reshape(self.step.shape))
        if dist.is_available() and dist.is_initialized():
            # Task initialises on the global first batch on every process, so the steps agree
            # already; rank 0's copy makes them bit-identical whatever each process computed.
            dist.broadcast(self.step.data, src=0)
        self.initial_step.copy_(self.step)
        self.initialized_flag.fill_(True)
        self._initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantized, _ = self._quantize(x)
        return quantized if quantized.dtype == x.dtype else quantized.to(x.dtype)

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(out in float32, the σ it used or None)``; initialises on the first call, updates the EMA."""
        if self.bit_width is None:
            raise RuntimeError(f"{type(self).__name__} used before ModelParser configured it")
        transformation = self.transformation
        offset = self._offset()
        sigma_arguments = {}
        if transformation is not None:
            transformation.ensure_ema_initialized(x, offset)
            sigma_arguments = transformation.formula_arguments(x, offset)
        if not self._initialized:
            self._initialize(x, offset)
        grad_scale = step_gradient_scale(x.numel() * self.batch_shards, self.step.numel(), self.positive_clip)
        with torch.autocast(x.device.type, enabled=False):  # the quantizer math stays in float32
            quantized, sigma = quantize(
                x, self.step, self.negative_clip, self.positive_clip, grad_scale, offset,
                bound_gradient=self.bound_gradient, **sigma_arguments,
            )
        if transformation is not None and self.training:
            transformation.update_ema(sigma)
        return quantized, sigma

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized_flag)

    def extra_repr(self) -> str:
        return (
            f"bit_width={self.bit_width}, half_wave={self.half_wave}, per_channel={self.per_channel}, "
            f"bound_gradient={self.bound_gradient}, initializer={self.initializer!r}"
        )


class StepOffsetQuantizer(StepQuantizer):
    """LSQ+ quantizer: a learnable offset ``o`` (initialised to 0), ``out = grid((x - o) / σ) · σ + o``."""

    def __init__(
        self,
        initializer: MinErrorInitializer | MeanStdInitializer,
        transformation: Standardization | None = None,
        per_channel: bool = False,
        bound_gradient: float = DEFAULT_BOUND_GRADIENT,
    ):
        super().__init__(initializer, transformation, per_channel, bound_gradient)
        self.offset = nn.Parameter(torch.zeros([]))

    def configure(self, bit_width: int, half_wave: bool, step_shape: list[int], sigma_shape: list[int]) -> None:
        super().configure(bit_width, half_wave, step_shape, sigma_shape)
        self.offset = nn.Parameter(torch.zeros(step_shape, device=self.step.device))

    def _offset(self) -> torch.Tensor | None:
        return self.offset
