"""What each quantized layer becomes in an integer runtime: weight codes, activation grids.

Numbers come from the quantizers' state through :mod:`rupq.quantizers.fake_quantize` (the one
formula): the weight codes are ``round(clamp(w / c))`` with ``c = s'·σ`` computed by the formula
itself and checked to give PyTorch's quantized weight back bit for bit; an activation's scale is
``s'·σ_ema``, its range the quantizer's ``[n, p]``.
"""

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rupq.errors import ExportError

if TYPE_CHECKING:
    import torch

INTEGER_FORMAT = "rupq-integer-v1"


def quantized_layers(model) -> dict:
    """``{name: QuantConv2d/QuantLinear}`` in module order."""
    from rupq.quantizers.walk import quant_layers_of

    return dict(quant_layers_of(model))


def float_twin(model):
    """A copy of ``model`` with each quantized layer replaced by the plain layer it wraps."""
    from rupq.quantizers.walk import replace_modules

    twin = copy.deepcopy(model)
    replace_modules(twin, {name: layer.module for name, layer in quantized_layers(twin).items()})
    return twin


@dataclass
class WeightCodes:
    codes: "torch.Tensor"   # integers in [n, p], the weight's shape
    scale: "torch.Tensor"   # c = s'·σ, one per output channel (or one), float32
    bit_width: int


@dataclass
class ActivationGrid:
    scale: float            # s'·σ_ema
    offset: float | None    # LSQ+ offset (None: no offset)
    zero_point: int         # 0, or -round(o / scale) with --integer-zero-points (then offset is None)
    low: int                # n
    high: int               # p
    bit_width: int
    half_wave: bool


def weight_codes(layer, name: str) -> WeightCodes:
    """The layer's weight as integer codes and per-channel scales, equal to PyTorch's eval weight.

    The formula (:func:`fake_quantize`) computes the quantized weight and σ; ``c`` is its
    ``s'·σ``, so ``codes = out / c`` are the integers it rounded, and ``codes · c`` must give
    ``out`` back exactly (checked: DequantizeLinear computes that same product).
    """
    import torch

    from rupq.quantizers.fake_quantize import fake_quantize, learnable_step, step_gradient_scale

    quantizer = layer.quantizer.weight_quantizer
    if quantizer.bit_width > 8:
        raise ExportError(f"layer '{name}': a {quantizer.bit_width}-bit weight; the exporter writes 2-8-bit weights (int4, int8)")
    weight = layer.module.weight.detach().float()
    # LSQ's gradient scale changes s' = (|s| - |s|g) + |s|g by an ulp: use the weight's own g.
    grad_scale = step_gradient_scale(weight.numel(), quantizer.step.numel(), quantizer.positive_clip)
    transformation = quantizer.transformation
    sigma_arguments = {}
    if transformation is not None:
        transformation.ensure_ema_initialized(weight, None)  # as the quantizer's forward (calibrated: nothing)
        sigma_arguments = transformation.formula_arguments(weight, None)
    with torch.no_grad():
        out, sigma = fake_quantize(
            weight, quantizer.step.detach(), quantizer.negative_clip, quantizer.positive_clip, grad_scale,
            **sigma_arguments,
        )
        step = learnable_step(quantizer.step.detach(), grad_scale)
        scale = step if sigma is None else step * sigma
        scale = scale.expand(weight.shape[0], *([1] * (weight.dim() - 1))).contiguous()
        codes = (out / scale).round()
    if not torch.equal(codes * scale, out):
        raise ExportError(f"layer '{name}': the weight codes do not reproduce the quantized weight")
    return WeightCodes(codes.to(torch.int64), scale.flatten(), quantizer.bit_width)


def codes_give_quantized_weight(layer, codes: "torch.Tensor", scale: "torch.Tensor") -> bool:
    """Whether ``codes × scale`` (one scale per output channel, or one) is the layer's eval-mode
    quantized weight bit for bit: the check of a file's weights against PyTorch's."""
    import torch

    from rupq.quantizers.compiled import quantize

    with torch.no_grad(), quantize.eagerly():
        expected = layer.quantized_weight()
    shape = [-1] + [1] * (expected.dim() - 1)
    return torch.equal(codes.float() * scale.reshape(shape), expected)


def activation_grid(layer, name: str, integer_zero_point: bool) -> ActivationGrid:
    """The layer's input quantizer in eval mode: scale ``s'·σ_ema``, offset and integer range."""
    quantizer = layer.quantizer.input_quantizer
    transformation = quantizer.transformation
    # s' = max(|s|, ε); its gradient scale g only shapes the backward pass (with g = 1 the
    # formula's (|s| - |s|g) + |s|g is |s| itself, without the ulp that another g may add).
    from rupq.quantizers.fake_quantize import learnable_step

    scale = learnable_step(quantizer.step.detach(), 1.0)
    if transformation is not None:
        if transformation.momentum == 0.0:
            raise ExportError(
                f"layer '{name}': its input σ is the std of each batch (Standardization momentum 0), "
                "which no constant Q/DQ scale can express"
            )
        scale = scale * transformation.ema_std.detach()
    scale = float(scale)
    offset = getattr(quantizer, "offset", None)
    offset = None if offset is None else float(offset.detach())
    zero_point = 0
    if offset is not None and integer_zero_point:
        zero_point, offset = -round(offset / scale), None
    return ActivationGrid(scale, offset, zero_point, quantizer.negative_clip, quantizer.positive_clip,
                          quantizer.bit_width, quantizer.half_wave)


def round_offsets_to_zero_points(model) -> None:
    """Set each LSQ+ offset ``o`` to ``round(o / scale) · scale`` in place: the model that the
    ``--integer-zero-points`` export computes, to check it against and to measure the change."""
    import torch

    for name, layer in quantized_layers(model).items():
        grid = activation_grid(layer, name, integer_zero_point=True)
        offset = getattr(layer.quantizer.input_quantizer, "offset", None)
        if offset is not None:
            with torch.no_grad():
                offset.fill_(-grid.zero_point * grid.scale)


# ---- the integer checkpoint -----------------------------------------------------------------

def integer_checkpoint(model, arch: dict, input_size, integer_zero_points: bool) -> dict:
    """The ``--format torch`` file (layout in docs/export.md, section Integer checkpoint)."""
    import torch

    layers = quantized_layers(model)
    quantized_tensors = set()
    entries = {}
    for name, layer in layers.items():
        weight, grid = weight_codes(layer, name), activation_grid(layer, name, integer_zero_points)
        module = layer.module
        entry = {
            "type": type(module).__name__,
            "weight_codes": weight.codes.to(torch.int8),
            "weight_scale": weight.scale.clone(),
            "weight_bit_width": weight.bit_width,
            "bias": None if module.bias is None else module.bias.detach().clone(),
            "input_scale": grid.scale,
            "input_offset": 0.0 if grid.offset is None else grid.offset,
            "input_zero_point": grid.zero_point,
            "input_range": [grid.low, grid.high],
            "input_bit_width": grid.bit_width,
            "input_half_wave": grid.half_wave,
        }
        if isinstance(module, torch.nn.Conv2d):
            entry.update(stride=list(module.stride), padding=list(module.padding), dilation=list(module.dilation),
                         groups=module.groups, padding_mode=module.padding_mode)
        entries[name] = entry
        quantized_tensors.add(f"{name}.")
    rest = {key: value for key, value in model.state_dict().items()
            if not any(key.startswith(prefix) for prefix in quantized_tensors)}
    return {"format": INTEGER_FORMAT, "arch": arch, "input_size": list(input_size), "layers": entries,
            "state_dict": rest}


