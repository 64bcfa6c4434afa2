"""Writes ``model.ckpt``: the best model by a monitored value, or the last one."""

import math

from rupq.errors import ConfigError
from rupq.tools.callbacks.base import Callback
from rupq.tools.utils.checkpoint import save_atomic


class ModelSaver(Callback):
    """``model_saver: {monitor, mode, save_last}`` of ``!Task``.

    With ``monitor`` (a logged name such as ``val_accuracy``) the model is saved whenever that
    value improves (``mode`` max or min); with ``save_last`` (or without a monitor) after every
    epoch. If the monitored value is never logged (validation disabled), the last model is kept.
    """

    def __init__(self, monitor: str | None = None, mode: str = "max", save_last: bool = False):
        if mode not in ("max", "min"):
            raise ConfigError(f"model_saver: mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.mode, self.save_last = monitor, mode, bool(save_last) or monitor is None
        self.best: float | None = None
        self.saved_best = False

    def _save(self, trainer) -> None:
        if trainer.is_main and trainer.log_dir is not None:
            save_atomic(trainer.build_model_checkpoint(), trainer.log_dir / "model.ckpt")

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return self.best is None or (value > self.best if self.mode == "max" else value < self.best)

    def on_validation_epoch_end(self, trainer) -> None:
        if self.monitor is None or self.save_last:
            return
        if self.monitor not in trainer.logged:
            known = ", ".join(sorted(k for k in trainer.logged if k.startswith("val_"))) or "none"
            raise ConfigError(f"model_saver monitors '{self.monitor}', which is not logged (logged: {known})")
        value = trainer.logged[self.monitor]
        if self._improved(value):
            self.best, self.saved_best = value, True
            trainer.logged[f"best_{self.monitor}"] = value
            self._save(trainer)

    def on_train_epoch_end(self, trainer) -> None:
        if self.save_last:
            self._save(trainer)

    def on_fit_end(self, trainer) -> None:
        if self.save_last or not self.saved_best:
            if not self.save_last:
                trainer.log_text(f"'{self.monitor}' was never logged: model.ckpt holds the last model")
            self._save(trainer)

    def state_dict(self) -> dict:
        return {"best": self.best, "saved_best": self.saved_best}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.saved_best = state["best"], state["saved_best"]
