"""``!ValidateCOCOCallback``: registers the mAP metrics, prints COCO's summary, validates the final model."""

import types

import pytest

from rupq.dataloaders.coco import COCODataloader
from rupq.tools.callbacks import ValidateCOCOCallback
from rupq.tools.metrics import MAP
from rupq.tools.metrics.map import COCOmAP


class FakeTrainer:
    """Counts validations; a validation logs like the trainer and calls the callback's hook."""

    def __init__(self, callback, dataset, epochs=3):
        self.callback, self.epoch, self.epochs = callback, 0, epochs
        self.training_loop = types.SimpleNamespace(dataset=dataset, val_metrics={})
        self.validations, self.messages = [], []

    def log_text(self, message):
        self.messages.append(message)

    def validate(self):
        self.validations.append(self.epoch)
        self.callback.on_validation_epoch_end(self)


def make(tmp_path):
    callback = ValidateCOCOCallback(MAP(img_size=416, iou_thres=0.5, conf_thres=0.01, nms_thres=0.5))
    dataset = COCODataloader(batch_size=2, image_size=608, root=str(tmp_path))
    return callback, FakeTrainer(callback, dataset)


def test_registers_both_maps_and_the_validation_size(tmp_path):
    callback, trainer = make(tmp_path)
    callback.on_fit_start(trainer)
    metrics = trainer.training_loop.val_metrics
    assert list(metrics) == ["mAP50", "mAP"]
    assert metrics["mAP50"] is callback.map and isinstance(metrics["mAP"], COCOmAP)
    assert trainer.training_loop.dataset.val_image_size == 416 and trainer.training_loop.dataset.image_size == 608


def test_final_model_is_validated_once_when_validation_never_ran(tmp_path):
    callback, trainer = make(tmp_path)
    callback.on_fit_start(trainer)
    trainer.epoch = 2
    callback.on_fit_end(trainer)
    assert trainer.validations == [2]
    assert any("no images" in message for message in trainer.messages)


def test_no_second_validation_when_the_last_epoch_was_validated(tmp_path):
    callback, trainer = make(tmp_path)
    callback.on_fit_start(trainer)
    trainer.epoch = 2
    trainer.validate()
    callback.on_fit_end(trainer)
    assert trainer.validations == [2]
    # The state survives a resume.
    restored = ValidateCOCOCallback(callback.map)
    restored.load_state_dict(callback.state_dict())
    assert restored.validated_epoch == 2


def test_needs_a_map():
    with pytest.raises(ValueError, match="must be a !MAP"):
        ValidateCOCOCallback(map=0.5)
