"""One-shot initialization of every quantizer of a parsed model from a batch."""

from contextlib import ExitStack

import torch
from torch import nn

from rupq.quantizers.compiled import quantize
from rupq.quantizers.transformations import Standardization
from rupq.quantizers.walk import quantizers_of, unwrap


@torch.no_grad()
def initialize_quantizers(model: nn.Module, *inputs) -> None:
    """Initialise every quantizer with one training-mode forward pass over ``inputs``.

    Run it on the full batch before any DataParallel/DDP replication, so that replicas start
    from initialised quantizers. Everything else the pass would change is put back: BatchNorm
    running statistics and counters (every buffer outside the quantizers), the σ EMAs beyond
    their first-batch initialization, the random number generators, the train/eval mode.
    """
    model = unwrap(model)
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
        with ExitStack() as frozen:
            for standardization in standardizations:
                frozen.enter_context(standardization.frozen_ema())
            model.train()
            with torch.random.fork_rng(devices=cuda_devices), quantize.eagerly():
                model(*inputs)
    finally:
        for buffer, value in saved_buffers:
            buffer.copy_(value)
        for module, training in modes.items():
            module.training = training
