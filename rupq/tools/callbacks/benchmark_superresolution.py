"""``!BenchmarkSuperresolutionCallback``: PSNR of the trained model on the Set14 benchmark.

Runs at the end of the last training epoch (on the model as it is then, not the best checkpoint),
and also every ``every_n_epochs`` epochs when that is given. Logs ``set14_PSNR`` through the
trainer (TensorBoard and ``results.json``) and prints it, next to the PSNR of plain bicubic
upscaling (``set14_bicubic_PSNR``, computed once), the reference every SR model must beat.
"""

import torch

from rupq.dataloaders.set14 import Set14Dataloader
from rupq.dataloaders.transforms.superresolution import bicubic_upscale
from rupq.tools.callbacks.base import Callback
from rupq.tools.metrics.psnr import PSNR


class BenchmarkSuperresolutionCallback(Callback):
    def __init__(self, psnr: PSNR, scale: int, normalize: bool = True, every_n_epochs: int | None = None,
                 root: str | None = None):
        if not isinstance(psnr, PSNR):
            raise ValueError(f"psnr must be a !PSNR metric, got {psnr!r}")
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer or omitted, got {every_n_epochs}")
        self.psnr = psnr
        self.scale = scale
        self.normalize = normalize
        self.every_n_epochs = every_n_epochs
        # Built now (argument checks), opened on the first benchmark.
        self.benchmark_data = Set14Dataloader(scale=scale, normalize=normalize, root=root)
        self.bicubic_psnr: float | None = None

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, device: torch.device) -> float:
        """Mean PSNR of ``model`` over Set14 (computes the bicubic reference on the first call)."""
        was_training = model.training
        model.eval()
        bicubic = PSNR(self.psnr.min_val, self.psnr.max_val, self.psnr.boundary_size)
        self.psnr.reset()
        try:
            for lr, hr in self.benchmark_data.val_dataloader():
                lr, hr = lr.to(device), hr.to(device)
                self.psnr.update(model(lr), hr)
                if self.bicubic_psnr is None:
                    bicubic.update(bicubic_upscale(lr, self.scale, self.normalize), hr)
        finally:
            model.train(was_training)
        if self.bicubic_psnr is None:
            self.bicubic_psnr = bicubic.compute()
        return self.psnr.compute()

    def on_train_epoch_end(self, trainer) -> None:
        periodic = self.every_n_epochs is not None and (trainer.epoch + 1) % self.every_n_epochs == 0
        if not trainer.is_main or not (trainer.is_last_epoch or periodic):
            return
        value = self.evaluate(trainer.model, trainer.device)
        trainer.log_scalar("set14_PSNR", value)
        trainer.log_scalar("set14_bicubic_PSNR", self.bicubic_psnr)
        trainer.log_text(f"epoch {trainer.epoch + 1}/{trainer.epochs} Set14 ×{self.scale}: "
                         f"PSNR {value:.2f} dB (bicubic {self.bicubic_psnr:.2f} dB)")
