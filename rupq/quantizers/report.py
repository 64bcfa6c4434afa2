"""Reports on a parsed model: the calibration report (the quantizers as initialised) and the
summary of what is quantized and what stayed in float, with the reason."""

from collections import Counter

import torch
from torch import nn

from rupq.quantizers.modules import QuantModule
from rupq.quantizers.parser import FLOAT_REASONS, layers_read_by_parent
from rupq.quantizers.quantizers import StepOffsetQuantizer
from rupq.quantizers.walk import quant_layers_of, unwrap


def _format_step(step: torch.Tensor) -> str:
    if step.numel() == 1:
        return f"{step.item():.6g}"
    return f"{step.mean().item():.6g} ({step.min().item():.4g}..{step.max().item():.4g})"


def calibration_report(model: nn.Module) -> str:
    """Plain-text table of every wrapped layer's quantizers as initialised.

    Columns: layer, tensor (input/weight), bits, half-wave, min and max of the first quantized
    tensor (after offset and standardization), initial step (mean and min..max per channel).
    """
    header = ("layer", "tensor", "bits", "half_wave", "min", "max", "initial step")
    rows = []
    for name, layer in quant_layers_of(model):
        for tensor, quantizer in (("input", layer.quantizer.input_quantizer), ("weight", layer.quantizer.weight_quantizer)):
            if quantizer.initialized:
                values = (f"{quantizer.min_value.item():.6g}", f"{quantizer.max_value.item():.6g}", _format_step(quantizer.initial_step))
            else:
                values = ("-", "-", "not initialized")
            rows.append((name, tensor, str(quantizer.bit_width), "yes" if quantizer.half_wave else "no", *values))
    return "\n".join(_table(header, rows))


#: Layer types with weights that the method has no quantized counterpart for.
UNSUPPORTED = (
    nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag, nn.RNNBase, nn.MultiheadAttention,
)
NORMALIZATION = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def float_reason(name: str, module: nn.Module, recorded: dict[str, str], read_by_parent: dict[str, str]) -> str:
    """Why a layer with parameters is not quantized."""
    if name in recorded:
        return recorded[name]
    if name in read_by_parent:
        return read_by_parent[name]
    if isinstance(module, nn.MultiheadAttention):
        return "unsupported: the packed input projection (in_proj_weight) of MultiheadAttention"
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return "not selected by the wrappers"
    if isinstance(module, UNSUPPORTED):
        return f"unsupported type {type(module).__name__} (RUPQ quantizes Conv2d and Linear layers)"
    if isinstance(module, NORMALIZATION) or "Norm" in type(module).__name__:
        return "normalization (float in the method)"
    return "parameters outside a Conv2d/Linear layer (float in the method)"


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def summary(model: nn.Module) -> str:
    """Every quantized layer (name, type, bits, per-channel weight step, input offset, σ) and every
    layer with parameters left in float, with the reason; normalization layers by type."""
    model = unwrap(model)
    recorded = getattr(model, FLOAT_REASONS, {})
    read_by_parent = layers_read_by_parent(model)
    quantized, floating, normalization = [], [], {}
    inside_wrapped = set()
    for name, module in model.named_modules():
        if any(name.startswith(f"{wrapped}.") for wrapped in inside_wrapped):
            continue
        if isinstance(module, QuantModule):
            inside_wrapped.add(name)
            inputs, weights = module.quantizer.input_quantizer, module.quantizer.weight_quantizer
            quantized.append((
                name, type(module.module).__name__, str(weights.bit_width),
                f"{inputs.bit_width} {'unsigned' if inputs.half_wave else 'signed'}",
                "yes" if weights.per_channel else "no", "yes" if isinstance(inputs, StepOffsetQuantizer) else "no",
                "/".join(side for side, q in (("w", weights), ("a", inputs)) if q.transformation is not None) or "-",
            ))
            continue
        if next(module.parameters(recurse=False), None) is None:
            continue
        reason = float_reason(name, module, recorded, read_by_parent)
        if reason.startswith("normalization"):
            normalization.setdefault(type(module).__name__, []).append(name)
        else:
            floating.append((name or "(model)", type(module).__name__, reason))
    if not quantized:
        lines = ["no quantized layer (rupq.quantize or a model_parser wraps Conv2d and Linear layers)"]
    else:
        counts = ", ".join(f"{count} {kind}" for kind, count in sorted(Counter(row[1] for row in quantized).items()))
        lines = [f"quantized: {len(quantized)} layers ({counts})"]
        lines += _table(("layer", "type", "weight bits", "input bits", "per-channel", "offset", "standardized"), quantized)
    left = len(floating) + sum(len(names) for names in normalization.values())
    lines.append(f"left in float: {left} layers with parameters")
    rows = floating + [
        (f"{len(names)} layer{'s' if len(names) > 1 else ''} ({_abbreviate(names)})", kind, "normalization (float in the method)")
        for kind, names in sorted(normalization.items())
    ]
    if rows:
        lines += _table(("layer", "type", "reason"), rows)
    return "\n".join(lines)


def _abbreviate(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
