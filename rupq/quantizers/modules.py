"""Quantized layers: a ``Conv2d`` / ``Linear`` whose input and weight pass through quantizers.

In a config, ``QuantConv2d`` / ``QuantLinear`` are *prototypes* without a layer;
:class:`~rupq.quantizers.parser.ModelParser` deep-copies one per wrapped layer and attaches the
original layer, which stays reachable as ``.module`` (``conv1.module.weight``).
"""

import torch
import torch.nn.functional as F
from torch import nn

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
    #: Whether training on an input without gradient takes the linearized path (``_input_is_fixed``).
    #: The tests' chain-of-ops oracle turns it off to run every layer on plain autograd.
    linearize_fixed_input = True

    def __init__(self, quantizer: ModuleQuantizer):
        super().__init__()
        if not isinstance(quantizer, ModuleQuantizer):
            raise ConfigError(f"{type(self).__name__}: quantizer must be a ModuleQuantizer, got {quantizer!r}")
        self.quantizer = quantizer
        self._weight_cache: tuple | None = None

    def attach(self, module: nn.Module, input_bit_width: int, weight_bit_width: int, half_wave: bool, layer_name: str) -> "QuantModule":
        if type(module) is not self.wrapped_type:
            raise ConfigError(
                f"layer '{layer_name}' is a {type(module).__name__}; {type(self).__name__} wraps {self.wrapped_type.__name__} layers"
            )
        self.module = module
        self.quantizer.configure(list(module.weight.shape), input_bit_width, weight_bit_width, half_wave, layer_name)
        self.quantizer.to(module.weight.device)
        return self

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
        if self.training or torch.is_grad_enabled() or not weight_quantizer.initialized:
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
        input_quantizer = self.quantizer.input_quantizer
        if not (self.linearize_fixed_input and self._input_is_fixed(x)):
            return self._layer(input_quantizer(x), self.quantized_weight(), self.bias)
        quantized, tangents = input_quantizer.linearize(x)
        weight = self.quantized_weight()
        out = self._layer(quantized, weight, self.bias)
        parameters = [parameter for parameter, _ in tangents]
        return _InputParameterGradients.apply(out, self, weight.detach(), [tangent for _, tangent in tangents], *parameters)

    def _input_is_fixed(self, x: torch.Tensor) -> bool:
        """Training on an input without gradient (images into a network's first layer).

        The input quantizer's parameters still need ``dL/dx_q`` contracted with ``∂x_q/∂θ``.
        Autograd would get it from the full input gradient of the layer, which for a conv
        on 3 channels costs several times its forward pass; ``Σ dL/dout · layer(∂x_q/∂θ)``
        is the same number (the layer is linear in its input) for one forward pass per parameter.
        """
        quantizer = self.quantizer.input_quantizer
        return torch.is_grad_enabled() and not x.requires_grad and quantizer.initialized and quantizer.step.requires_grad

    def _tangent_contraction(self, grad_out: torch.Tensor, tangent: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``Σ dL/dout · layer(T)`` for an input tangent ``T`` (no bias: ``out`` is linear in its input)."""
        return torch.dot(grad_out.reshape(-1).float(), self._layer(tangent.to(weight.dtype), weight, None).reshape(-1).float())

    def _layer(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class _InputParameterGradients(torch.autograd.Function):
    """``out`` unchanged; each scalar parameter ``θ_k`` of the input quantizer gets the gradient
    ``Σ dL/dout · layer(T_k)`` with ``T_k = ∂x_q/∂θ_k`` (:meth:`QuantModule._tangent_contraction`).

    Called as ``apply(out, layer, weight, [T_1, T_2, ...], θ_1, θ_2, ...)``.
    """

    @staticmethod
    def forward(ctx, out, layer, weight, tangents, *parameters):
        ctx.layer = layer
        ctx.shapes = [parameter.shape for parameter in parameters]
        ctx.save_for_backward(weight, *tangents)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad_out):
        weight, *tangents = ctx.saved_tensors
        gradients = [ctx.layer._tangent_contraction(grad_out, tangent, weight).reshape(shape)
                     for tangent, shape in zip(tangents, ctx.shapes)]
        return (grad_out, None, None, None, *gradients)


#: A conv's tangent with at most this fraction of non-zeros (the LSQ+ offset's ``1 - m``: only
#: the clipped pixels) is contracted at its non-zeros (:func:`conv_input_gradient_at`) on CPU.
SPARSE_TANGENT_FRACTION = 0.01


def conv_input_gradient_at(grad_out, weight, positions, stride, padding, dilation) -> torch.Tensor:
    """``dL/dx`` of ``conv2d(x, weight)`` (groups 1, zero padding) at input ``positions`` ``[P, 4]``
    (``n, c, h, w``), gathered from ``grad_out`` without the full transposed convolution:
    ``Σ_{k, i, j} grad_out[n, k, (h + pad - i dil) / stride, ...] · weight[k, c, i, j]`` over the
    taps that land on an output pixel.
    """
    n, c, h, w = positions.unbind(1)
    out_h, out_w = grad_out.shape[2:]
    taps_h = torch.arange(weight.shape[2], device=weight.device)
    taps_w = torch.arange(weight.shape[3], device=weight.device)
    offset_h = h[:, None] + padding[0] - taps_h * dilation[0]  # [P, kh]
    offset_w = w[:, None] + padding[1] - taps_w * dilation[1]  # [P, kw]
    valid_h = (offset_h % stride[0] == 0) & (offset_h >= 0) & (offset_h < out_h * stride[0])
    valid_w = (offset_w % stride[1] == 0) & (offset_w >= 0) & (offset_w < out_w * stride[1])
    rows = (offset_h // stride[0]).clamp_(0, out_h - 1)
    cols = (offset_w // stride[1]).clamp_(0, out_w - 1)
    # Advanced indices split by a slice: the broadcast [P, kh, kw] dims come first, channels last.
    gathered = grad_out[n[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [P, kh, kw, K]
    taps = weight[:, c].permute(1, 2, 3, 0)  # [P, kh, kw, K]
    valid = valid_h[:, :, None] & valid_w[:, None, :]
    return ((gathered.float() * taps.float()).sum(-1) * valid).sum((1, 2))


class QuantConv2d(QuantModule):
    """``conv2d(quantize(x), quantize(w))`` with the wrapped ``Conv2d``'s bias, stride, padding, dilation and groups."""

    wrapped_type = nn.Conv2d

    def _tangent_contraction(self, grad_out: torch.Tensor, tangent: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        conv = self.module
        # Sparse tangents on CPU only: counting the non-zeros would make a GPU wait for the host.
        if tangent.device.type == "cpu" and conv.groups == 1 and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple):
            if int(torch.count_nonzero(tangent)) <= SPARSE_TANGENT_FRACTION * tangent.numel():
                positions = tangent.nonzero()
                gradient_at = conv_input_gradient_at(grad_out, weight, positions, conv.stride, conv.padding, conv.dilation)
                return torch.dot(tangent[positions.unbind(1)].float(), gradient_at)
        return super()._tangent_contraction(grad_out, tangent, weight)

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
