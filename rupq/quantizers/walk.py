"""Walking a parsed model: its quantizers and quantized layers (through a DataParallel / DDP
wrapper), and putting modules in place of others by name."""

from collections.abc import Iterator

from torch import nn

from rupq.quantizers.modules import QuantModule
from rupq.quantizers.quantizers import StepQuantizer


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DataParallel/DistributedDataParallel wrapper."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def quantizers_of(model: nn.Module) -> Iterator[tuple[str, StepQuantizer]]:
    """``(qualified_name, quantizer)`` for every quantizer, e.g. ``conv1.quantizer.input_quantizer``."""
    for name, module in unwrap(model).named_modules():
        if isinstance(module, StepQuantizer):
            yield name, module


def quant_layers_of(model: nn.Module) -> Iterator[tuple[str, QuantModule]]:
    """``(layer_name, wrapped_layer)`` for every wrapped layer."""
    for name, module in unwrap(model).named_modules():
        if isinstance(module, QuantModule):
            yield name, module


def replace_modules(model: nn.Module, replacements: dict[str, nn.Module]) -> None:
    """Put each module of ``replacements`` in place of ``model``'s module of that name (a name of
    ``model.named_modules()`` before any replacement), by setting it on its parent."""
    named = dict(model.named_modules())
    for name, module in replacements.items():
        parent_name, _, child_name = name.rpartition(".")
        setattr(named[parent_name] if parent_name else model, child_name, module)
