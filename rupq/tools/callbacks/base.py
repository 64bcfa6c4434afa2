"""Callback protocol of the training loop.

A callback sees the running :class:`~rupq.tools.training.loop.Trainer` at fixed hook points.
The trainer exposes ``model`` (the unwrapped ``nn.Module``), ``device``, ``epoch`` (0-based),
``epochs``, ``global_step``, ``is_last_epoch``, ``limit_batches`` (``--fast-dev-run``'s batch
limit, None otherwise: a callback that iterates a dataset itself stops there), ``training_loop`` (its ``dataset`` gives
``train_dataloader()`` / ``val_dataloader()``), ``log_dir``, ``logged`` (the last value of every
logged name) and ``log_scalar(name, value)`` / ``log_figure(tag, figure)`` /
``log_text(message)``, which write on the main process only. Every ``log_every_n_steps`` training
steps ``should_log_step`` is true after the step, and ``log_step_scalar(name, value)`` writes
``step/<name>`` against the global step.
"""


class Callback:
    """Base class: override the hooks you need; all default to doing nothing."""

    def on_fit_start(self, trainer) -> None:
        """After the model is built, initialised and moved to its device."""

    def on_train_epoch_start(self, trainer) -> None:
        pass

    def on_train_batch_end(self, trainer) -> None:
        """After each optimizer step (``trainer.global_step`` already counts it)."""

    def on_train_epoch_end(self, trainer) -> None:
        """After the last training step of an epoch, before validation."""

    def on_validation_epoch_start(self, trainer) -> None:
        pass

    def on_validation_epoch_end(self, trainer) -> None:
        """After validation metrics are computed and logged (``trainer.logged`` holds them)."""

    def on_fit_end(self, trainer) -> None:
        """After the last epoch."""

    def state_dict(self) -> dict:
        """Plain data (tensors, numbers, strings) to put in the resumable checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
