"""``!ObjectDetectionTrainingLoop``: YOLO training steps on ``(paths, images, targets, original_sizes)`` batches.

The loss needs the model's YOLO layers (anchors and strides), so the loop hands the model to it:
``loss(predictions, targets, model)``. Validation has no loss (the original RUPQ code logs none); the mAP is
computed by :class:`~rupq.tools.metrics.MAP` through :class:`~rupq.tools.callbacks.ValidateCOCOCallback`.
"""

import torch.nn as nn

from rupq.dataloaders.base import DataModule
from rupq.tools.losses.yolo import YOLOLoss
from rupq.tools.training.loops import StepOutput, TrainingLoop


class ObjectDetectionTrainingLoop(TrainingLoop):
    """Detection steps. A batch unpacks to ``(images, targets)`` where ``targets`` is a dict:
    ``boxes`` (``[N, 6]`` rows ``batch_index, class, cx, cy, w, h`` normalized to the input),
    ``original_sizes`` (``[B, 2]``), ``input_size`` (the square's side) and ``paths``.

    ``loss`` defaults to ``!YOLOLoss`` with its default gains. Validation metrics (``MAP``) get
    the eval-mode detections and that dict.
    """

    has_validation_loss = False

    def __init__(
        self,
        dataset: DataModule,
        loss: nn.Module | None = None,
        train_metrics: dict | None = None,
        val_metrics: dict | None = None,
        print_calibration: bool = True,
    ):
        if train_metrics:
            raise ValueError("detection has no per-step training metrics; give the mAP to !ValidateCOCOCallback")
        super().__init__(dataset, loss if loss is not None else YOLOLoss(), None, val_metrics, print_calibration)

    def unpack_batch(self, batch):
        paths, images, boxes, original_sizes = batch
        return images, {"boxes": boxes, "original_sizes": original_sizes, "input_size": images.shape[-1], "paths": paths}

    def compute_loss(self, preds, targets, model):
        return self.loss(preds, targets["boxes"], model)

    def validation_step(self, model: nn.Module, batch) -> StepOutput:
        images, targets = self.unpack_batch(batch)
        return StepOutput(None, model(images), targets)
