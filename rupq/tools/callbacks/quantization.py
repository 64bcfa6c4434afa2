"""TensorBoard views of the quantizers: their variables every epoch, distributions once.

``QuantVarsCallback`` logs, per quantizer, the step (mean over channels), the offset and the
σ EMA. ``QuantImagesCallback`` draws, after the first epoch, each wrapped layer's per-channel
weight distributions and its input activation histogram with the quantization range on top.
"""

import sys

import torch

from rupq.quantizers.quantizers import StepQuantizer
from rupq.quantizers.walk import quant_layers_of, quantizers_of
from rupq.quantizers.fake_quantize import standard_deviation
from rupq.tools.callbacks.base import Callback


def pyplot():
    """matplotlib's pyplot, imported when the first figure is drawn, so that importing the callbacks
    (and so loading any config) leaves matplotlib alone. Unless the user's own code already chose
    a backend through pyplot, the figures are drawn with the file-only Agg backend (no display needed)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean(tensor: torch.Tensor) -> float:
    return tensor.detach().float().mean().item()


def move_inputs(inputs, device):
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(move_inputs(item, device) for item in inputs)
    return inputs


def call_model(model, inputs):
    return model(*inputs) if isinstance(inputs, (list, tuple)) else model(inputs)


class QuantVarsCallback(Callback):
    """Each epoch: ``quant_vars/<quantizer>/step`` (mean per channel), ``.../offset``, ``.../ema_std``;
    every ``log_every_n_steps`` training steps the same under ``step/quant_vars/…`` against the global step."""

    def on_train_batch_end(self, trainer) -> None:
        if trainer.should_log_step:
            for name, value in self.variables(trainer.model):
                trainer.log_step_scalar(name, value)

    def on_train_epoch_end(self, trainer) -> None:
        for name, value in self.variables(trainer.model):
            trainer.log_scalar(name, value)

    @staticmethod
    def variables(model):
        for name, quantizer in quantizers_of(model):
            yield f"quant_vars/{name}/step", _mean(quantizer.step)
            offset = getattr(quantizer, "offset", None)
            if offset is not None:
                yield f"quant_vars/{name}/offset", _mean(offset)
            if quantizer.transformation is not None and quantizer.transformation.momentum > 0:
                yield f"quant_vars/{name}/ema_std", _mean(quantizer.transformation.ema_std)


@torch.no_grad()
def quantization_range(quantizer: StepQuantizer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n·|s|·σ + o, p·|s|·σ + o)`` for tensor ``x`` in eval mode, per channel when the step or σ is."""
    scale = quantizer.step.detach().abs().float()
    transformation = quantizer.transformation
    if transformation is not None:
        if transformation.momentum > 0:
            scale = scale * transformation.ema_std
        else:
            scale = scale * standard_deviation(x.detach().float(), transformation.std_dims(x)).reshape(transformation.sigma_shape(list(x.shape)))
    offset = getattr(quantizer, "offset", None)
    offset = torch.zeros([]) if offset is None else offset.detach().float()
    return (quantizer.negative_clip * scale + offset).cpu(), (quantizer.positive_clip * scale + offset).cpu()


class QuantImagesCallback(Callback):
    """After the first epoch, per wrapped layer: weight distributions and input histogram with ranges.

    Args:
        max_channels: how many output channels the weight figure shows.
        bins: histogram bins of the input activations.
        max_layers: draw only the first ``max_layers`` wrapped layers (None: all; each layer costs
            two figures, and YOLO-v3 has 75 layers).
    """

    def __init__(self, max_channels: int = 64, bins: int = 100, max_layers: int | None = None):
        self.max_channels = int(max_channels)
        self.bins = int(bins)
        self.max_layers = None if max_layers is None else int(max_layers)

    def on_train_epoch_end(self, trainer) -> None:
        if trainer.epoch != 0:
            return
        layers = list(quant_layers_of(trainer.model))[: self.max_layers]
        if not layers:
            return
        inputs = self._capture_inputs(trainer, layers)
        for name, layer in layers:
            trainer.log_figure(f"quant_images/{name}/weight", self._weight_figure(name, layer))
            if name in inputs:
                trainer.log_figure(f"quant_images/{name}/input", self._input_figure(name, layer, inputs[name]))

    @torch.no_grad()
    def _capture_inputs(self, trainer, layers) -> dict[str, torch.Tensor]:
        """Each wrapped layer's input over one training batch, run in eval mode (no state changes)."""
        captured = {}
        handles = [
            layer.register_forward_pre_hook(lambda _, args, name=name: captured.setdefault(name, args[0].detach().float().cpu()))
            for name, layer in layers
        ]
        model = trainer.model
        modes = {module: module.training for module in model.modules()}
        try:
            batch = next(iter(trainer.training_loop.dataset.train_dataloader()))
            inputs, _ = trainer.training_loop.unpack_batch(batch)
            model.eval()
            call_model(model, move_inputs(inputs, trainer.device))
        finally:
            for handle in handles:
                handle.remove()
            for module, training in modes.items():
                module.training = training
        return captured

    def _weight_figure(self, name, layer):
        weight = layer.module.weight.detach().float()
        low, high = quantization_range(layer.quantizer.weight_quantizer, weight)
        channels = min(self.max_channels, weight.shape[0])
        rows = weight[:channels].reshape(channels, -1).cpu()
        figure, axes = pyplot().subplots(figsize=(max(6.0, channels * 0.18), 4))
        axes.boxplot(list(rows.numpy()), positions=range(channels), widths=0.6, showfliers=False)
        positions = torch.arange(channels).numpy()
        axes.scatter(positions, low.reshape(-1).expand(weight.shape[0])[:channels].numpy(), marker="_", color="red", label="quantization range")
        axes.scatter(positions, high.reshape(-1).expand(weight.shape[0])[:channels].numpy(), marker="_", color="red")
        axes.set_xticks(positions[:: max(1, channels // 16)])
        axes.set_xlabel("output channel")
        axes.set_title(f"{name}: weights ({layer.quantizer.weight_quantizer.bit_width} bit)")
        axes.legend(loc="upper right")
        figure.tight_layout()
        return figure

    def _input_figure(self, name, layer, inputs):
        quantizer = layer.quantizer.input_quantizer
        low, high = quantization_range(quantizer, inputs)
        figure, axes = pyplot().subplots(figsize=(6, 4))
        axes.hist(inputs.reshape(-1).numpy(), bins=self.bins, log=True, color="tab:blue")
        for bound in (low.item(), high.item()):
            axes.axvline(bound, color="red", linestyle="--")
        axes.set_title(f"{name}: input ({quantizer.bit_width} bit, {'half-wave' if quantizer.half_wave else 'signed'})")
        axes.set_xlabel("value")
        figure.tight_layout()
        return figure
