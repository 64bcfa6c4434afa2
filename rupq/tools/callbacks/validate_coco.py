"""``!ValidateCOCOCallback``: the detection mAP of the validation set, logged and printed.

At the start of training the callback adds its :class:`~rupq.tools.metrics.MAP` to the training
loop's validation metrics (as ``mAP50`` — ``mAP<iou_thres·100>`` in general — and, through a view,
``mAP``), so that every validation epoch of the trainer logs ``val_mAP50`` (the original RUPQ code's number)
and ``val_mAP`` (COCO mAP@[.5:.95] by pycocotools), and makes the dataloader letterbox validation
images to the metric's ``img_size``. After each validation it prints pycocotools' summary.

The original RUPQ code's quantized configs skip validation during training (``check_val_every_n_epochs``
larger than ``epochs``); when the last epoch was not validated, the callback validates the final
model at the end of training, so that every run reports its mAP.
"""

from rupq.tools.callbacks.base import Callback
from rupq.tools.metrics.map import MAP, COCOmAP


class ValidateCOCOCallback(Callback):
    def __init__(self, map: MAP):
        if not isinstance(map, MAP):
            raise ValueError(f"map must be a !MAP, got {map!r}")
        self.map = map
        self.validated_epoch: int | None = None

    def on_fit_start(self, trainer) -> None:
        loop = trainer.training_loop
        loop.val_metrics[self.map.name] = self.map
        loop.val_metrics["mAP"] = COCOmAP(self.map)
        if hasattr(loop.dataset, "set_val_image_size"):
            loop.dataset.set_val_image_size(self.map.img_size)

    def on_validation_epoch_end(self, trainer) -> None:
        self.validated_epoch = trainer.epoch
        results = self.map.results()
        trainer.log_text(
            f"epoch {trainer.epoch + 1}/{trainer.epochs} COCO evaluation of {len(self.map.images)} images: "
            f"{self.map.name} = {results[self.map.name]:.4f}, mAP@[.5:.95] = {results['mAP']:.4f}\n"
            f"{results['coco_summary']}"
        )

    def on_fit_end(self, trainer) -> None:
        if self.validated_epoch != trainer.epoch:
            trainer.log_text("validating the final model")
            trainer.validate()

    def state_dict(self) -> dict:
        return {"validated_epoch": self.validated_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.validated_epoch = state["validated_epoch"]
