"""Quantized layers: a ``Conv2d`` / ``Linear`` whose input and weight pass through quantizers.

In a config, ``QuantConv2d`` / ``QuantLinear`` are *prototypes* without a layer;
:class:`~rupq.quantizers.parser.ModelParser` deep-copies one per wrapped layer and attaches the
original layer, which stays reachable as ``.module`` (``conv1.module.weight``).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from rupq.errors import ConfigError
from rupq.quantizers.quantizers import StepQuantizer


class ModuleQuantizer(nn.Module):
    """The pair of quantizers of one layer: ``input_quantizer`` (activations) and ``weight_quantizer``."""

    def __init__(self, input_quantizer: StepQuantizer, weight_quantizer: StepQuantizer):
        super().__init__()
        for role, quantizer in (("input_quantizer", input_quantizer), ("weight_quantizer", weight_quantizer)):
            if not isinstance(quantizer, StepQuantizer):
                raise ConfigError(f"ModuleQuantizer: {role} must be a StepQuantizer, got {quantizer!r}")
        self.input_quantizer = input_quantizer
        self.weight_quantizer = weight_quantizer

    def configure(self, weight_shape: list[int], input_bit_width: int, weight_bit_width: int, half_wave: bool, layer_name: str) -> None:
        """Weights are signed with one step per output channel when ``per_channel``; inputs use one step."""
        if self.input_quantizer.per_channel:
            raise ConfigError(f"layer '{layer_name}': per_channel is supported for weight quantizers only")
        input_transformation = self.input_quantizer.transformation
        if input_transformation is not None and input_transformation.dim is not None:
            raise ConfigError(
                f"layer '{layer_name}': input Standardization must reduce all dims (dim: null), got dim {input_transformation.dim}"
            )
        self.input_quantizer.configure(input_bit_width, half_wave, [], [])
        weight_transformation = self.weight_quantizer.transformation
        sigma_shape = [] if weight_transformation is None else weight_transformation.sigma_shape(weight_shape)
        step_shape = [weight_shape[0]] + [1] * (len(weight_shape) - 1) if self.weight_quantizer.per_channel else []
        self.weight_quantizer.configure(weight_bit_width, False, step_shape, sigma_shape)

    def forward(self, inputs: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_quantizer(inputs), self.weight_quantizer(weight)


class QuantModule(nn.Module):
    """Base of the quantized layers: holds ``quantizer`` and, once attached, the original ``module``.

    In eval mode without autograd the quantized weight is computed once and reused until the
    weight or any quantizer tensor changes (tracked by tensor versions), the layer enters
    training mode or a state dict is loaded.
    """

    wrapped_type: type[nn.Module] = nn.Module

    def __init__(self, quantizer: ModuleQuantizer):
        super().__init__()
        if not isinstance(quantizer, ModuleQuantizer):
            raise ConfigError(f"{type(self).__name__}: quantizer must be a ModuleQuantizer, got {quantizer!r}")
        self.quantizer = quantizer
        self._weight_cache: tuple | None = None
        self._own_forward = False

    def attach(self, module: nn.Module, input_bit_width: int, weight_bit_width: int, half_wave: bool, layer_name: str) -> "QuantModule":
        if not isinstance(module, self.wrapped_type):
            raise ConfigError(
                f"layer '{layer_name}' is a {type(module).__name__}; {type(self).__name__} wraps {self.wrapped_type.__name__} layers"
            )
        self.module = module
        # A subclass that overrides forward (timm's Conv2dSame pads on the fly) runs its own
        # forward with the quantized weight; plain layers keep the direct functional call.
        self._own_forward = type(module).forward is not self.wrapped_type.forward
        self.quantizer.configure(list(module.weight.shape), input_bit_width, weight_bit_width, half_wave, layer_name)
        self.quantizer.to(module.weight.device)
        return self

    @property
    def runs_own_forward(self) -> bool:
        """Whether the wrapped layer's own forward runs (a subclass overriding it), on the quantized input."""
        return self._own_forward

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    def _cache_key(self) -> tuple:
        # The tensors the quantized weight depends on, read from the modules' own dicts:
        # parameters()/buffers() walk generators, several times this lookup's cost per layer.
        weight_quantizer = self.quantizer.weight_quantizer
        tensors = [self.module.weight, *weight_quantizer._parameters.values(), *weight_quantizer._buffers.values()]
        if weight_quantizer.transformation is not None:
            tensors += weight_quantizer.transformation._buffers.values()
        return tuple((t.data_ptr(), t._version) for t in tensors)

    def quantized_weight(self) -> torch.Tensor:
        weight_quantizer = self.quantizer.weight_quantizer
        # Inside a compiled model the graph quantizes the weight itself (tensor versions are not traceable).
        if self.training or torch.is_grad_enabled() or not weight_quantizer.initialized or torch.compiler.is_compiling():
            self._weight_cache = None
            return weight_quantizer(self.module.weight)
        key = self._cache_key()
        if self._weight_cache is None or self._weight_cache[0] != key:
            weight = weight_quantizer(self.module.weight)
            # Quantizing may touch buffers (σ EMA); key on the state after it.
            self._weight_cache = (self._cache_key(), weight)
        return self._weight_cache[1]

    def train(self, mode: bool = True) -> "QuantModule":
        # eval() is train(False): only entering training invalidates, so repeated eval() calls
        # (one per validation) keep the cached weights.
        if mode:
            self._weight_cache = None
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._weight_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "module"):
            raise RuntimeError(f"{type(self).__name__} prototype has no layer; ModelParser attaches one")
        if self._own_forward:
            return functional_call(self.module, {"weight": self.quantized_weight()}, (self.quantizer.input_quantizer(x),))
        return self._layer(self.quantizer.input_quantizer(x), self.quantized_weight(), self.bias)

    def _layer(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class QuantConv2d(QuantModule):
    """``conv2d(quantize(x), quantize(w))`` with the wrapped ``Conv2d``'s bias, stride, padding, dilation and groups
    (a subclass's own forward when it overrides it)."""

    wrapped_type = nn.Conv2d

    def _layer(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        conv = self.module
        if conv.padding_mode != "zeros":
            x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class QuantLinear(QuantModule):
    """``linear(quantize(x), quantize(w))`` with the wrapped ``Linear``'s bias."""

    wrapped_type = nn.Linear

    def _layer(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)
