"""Helpers around a parsed model: one-shot initialization, the calibration report, quantizer listing."""

from collections.abc import Iterator

import torch
from torch import nn

from rupq.quantizers.compiled import quantize
from rupq.quantizers.modules import QuantModule
from rupq.quantizers.quantizers import StepQuantizer
from rupq.quantizers.transformations import Standardization


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DataParallel / DistributedDataParallel wrapper."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def quantizers_of(model: nn.Module) -> Iterator[tuple[str, StepQuantizer]]:
    """``(qualified_name, quantizer)`` for every quantizer, e.g. ``conv1.quantizer.input_quantizer``."""
    for name, module in _unwrap(model).named_modules():
        if isinstance(module, StepQuantizer):
            yield name, module


def quant_layers_of(model: nn.Module) -> Iterator[tuple[str, QuantModule]]:
    """``(layer_name, wrapped_layer)`` for every wrapped layer."""
    for name, module in _unwrap(model).named_modules():
        if isinstance(module, QuantModule):
            yield name, module


@torch.no_grad()
def initialize_quantizers(model: nn.Module, *inputs) -> None:
    """Initialise every quantizer with one training-mode forward pass over ``inputs``.

    Run it on the full batch before any DataParallel/DDP replication, so that replicas start
    from initialised quantizers. Everything else the pass would change is put back: BatchNorm
    running statistics and counters (every buffer outside the quantizers), the σ EMAs beyond
    their first-batch initialization, the random number generators, the train/eval mode.
    """
    model = _unwrap(model)
    modes = {module: module.training for module in model.modules()}
    quantizer_buffers = {
        id(buffer) for _, quantizer in quantizers_of(model) for buffer in quantizer.buffers()
    }
    saved_buffers = [
        (buffer, buffer.clone()) for buffer in model.buffers() if id(buffer) not in quantizer_buffers
    ]
    standardizations = [module for module in model.modules() if isinstance(module, Standardization)]
    cuda_devices = sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})
    try:
        for standardization in standardizations:
            standardization.freeze_ema = True
        model.train()
        with torch.random.fork_rng(devices=cuda_devices), quantize.eagerly():
            model(*inputs)
    finally:
        for standardization in standardizations:
            standardization.freeze_ema = False
        for buffer, value in saved_buffers:
            buffer.copy_(value)
        for module, training in modes.items():
            module.training = training


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
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
