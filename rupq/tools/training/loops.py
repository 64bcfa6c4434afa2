"""``!TrainingLoop``: what one training or validation step of a task does.

A loop knows its data (``dataset``), its loss and its metrics, and turns a batch into
``(loss, predictions, targets)``. Everything else — epochs, optimizers, logging, checkpoints,
callbacks — is the shared :class:`~rupq.tools.training.trainer.Trainer`. Task-specific loops
(detection) subclass this and override :meth:`unpack_batch` and the step methods.
"""

from typing import NamedTuple

import torch
import torch.nn as nn

from rupq.dataloaders.base import DataModule
from rupq.errors import ConfigError
from rupq.tools.metrics.base import Metric


class StepOutput(NamedTuple):
    loss: torch.Tensor | None
    preds: object
    targets: object


def move_to(data, device: torch.device):
    """Move every tensor inside nested lists/tuples/dicts to ``device``."""
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=True)
    if isinstance(data, (list, tuple)):
        moved = [move_to(item, device) for item in data]
        return type(data)(moved) if isinstance(data, list) else tuple(moved)
    if isinstance(data, dict):
        return {key: move_to(value, device) for key, value in data.items()}
    return data


def _check_metrics(metrics, which: str, loop: str) -> dict:
    metrics = metrics or {}
    if not isinstance(metrics, dict):
        raise ConfigError(f"!{loop}: {which} must be a mapping of name -> metric, got {type(metrics).__name__}")
    for name, metric in metrics.items():
        if not all(hasattr(metric, method) for method in ("update", "compute", "reset")):
            raise ConfigError(f"!{loop}: {which}.{name} is not a metric (needs update/compute/reset): {metric!r}")
    return metrics


class TrainingLoop:
    """Supervised ``inputs → model → loss(preds, targets)`` steps (classification, super-resolution)."""

    has_validation_loss = True

    def __init__(
        self,
        dataset: DataModule,
        loss: nn.Module | None = None,
        train_metrics: dict | None = None,
        val_metrics: dict | None = None,
        print_calibration: bool = True,
    ):
        loop = type(self).__name__  # the tag, in messages
        if not isinstance(dataset, DataModule):
            raise ConfigError(
                f"!{loop}: dataset must be a dataloader tag such as !ImageNet2012Dataloader, got {dataset!r}"
            )
        if loss is not None and not callable(loss):
            raise ConfigError(f"!{loop}: loss must be a loss module such as !CrossEntropyLoss, got {loss!r}")
        self.dataset = dataset
        self.loss = loss
        self.train_metrics: dict[str, Metric] = _check_metrics(train_metrics, "train_metrics", loop)
        self.val_metrics: dict[str, Metric] = _check_metrics(val_metrics, "val_metrics", loop)
        self.print_calibration = print_calibration

    def unpack_batch(self, batch):
        """``(inputs, targets)`` of a batch."""
        return batch[0], batch[1]

    def compute_loss(self, preds, targets, model) -> torch.Tensor:
        if self.loss is None:
            raise ValueError("the training loop has no loss; give !TrainingLoop a loss: argument")
        return self.loss(preds, targets)

    def training_step(self, model: nn.Module, batch) -> StepOutput:
        inputs, targets = self.unpack_batch(batch)
        preds = model(inputs)
        return StepOutput(self.compute_loss(preds, targets, model), preds, targets)

    def validation_step(self, model: nn.Module, batch) -> StepOutput:
        inputs, targets = self.unpack_batch(batch)
        preds = model(inputs)
        loss = self.loss(preds, targets) if self.loss is not None and self.has_validation_loss else None
        return StepOutput(loss, preds, targets)
