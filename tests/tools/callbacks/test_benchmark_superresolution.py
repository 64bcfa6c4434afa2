from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from superresolution_data import write_set14

from rupq.tools.callbacks import BenchmarkSuperresolutionCallback
from rupq.tools.metrics import PSNR


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("RUPQ_CACHE_DIR", str(tmp_path / "cache"))


class Darker(nn.Module):
    """Nearest-neighbour upscaling, 20 levels darker; remembers whether it ran in eval mode."""

    def __init__(self, scale):
        super().__init__()
        self.scale, self.modes = scale, []

    def forward(self, x):
        self.modes.append(self.training)
        return nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest") - 20


def fake_trainer(model, epoch, epochs):
    logged = {}
    return SimpleNamespace(
        model=model, device=torch.device("cpu"), epoch=epoch, epochs=epochs, is_main=True,
        is_last_epoch=epoch == epochs - 1, logged=logged, messages=[],
        log_scalar=lambda name, value: logged.__setitem__(name, value),
        log_text=lambda message: None,
    )


def expected_psnrs(images, scale):
    model, bicubic = PSNR(0, 255, scale), PSNR(0, 255, scale)
    for lr, hr in images.values():
        target = torch.from_numpy(hr[: scale * lr.shape[0], : scale * lr.shape[1]]).permute(2, 0, 1)[None].float()
        upscaled = torch.from_numpy(lr).permute(2, 0, 1)[None].float().repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        model.update(upscaled - 20, target)
        pil = Image.fromarray(lr).resize((lr.shape[1] * scale, lr.shape[0] * scale), Image.BICUBIC)
        bicubic.update(torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].float(), target)
    return model.compute(), bicubic.compute()


def test_set14_psnr_at_the_end_of_training(tmp_path, capsys):
    images = write_set14(tmp_path, names=("baboon", "comic"), scale=2, lr_size=(12, 12), grey_names=("comic",))
    callback = BenchmarkSuperresolutionCallback(psnr=PSNR(0, 255, 2), scale=2, normalize=False, root=str(tmp_path))
    model = Darker(2).train()
    trainer = fake_trainer(model, epoch=0, epochs=3)
    callback.on_train_epoch_end(trainer)
    assert trainer.logged == {}  # not the last epoch
    trainer = fake_trainer(model, epoch=2, epochs=3)
    callback.on_train_epoch_end(trainer)
    expected, bicubic = expected_psnrs(images, 2)
    assert trainer.logged["set14_PSNR"] == pytest.approx(expected)
    assert trainer.logged["set14_bicubic_PSNR"] == pytest.approx(bicubic)
    assert model.modes == [False, False] and model.training  # evaluated in eval mode, then restored


def test_every_n_epochs(tmp_path):
    write_set14(tmp_path, scale=2)
    callback = BenchmarkSuperresolutionCallback(psnr=PSNR(), scale=2, every_n_epochs=2, root=str(tmp_path))
    logged_at = []
    for epoch in range(5):
        trainer = fake_trainer(Darker(2), epoch=epoch, epochs=5)
        callback.on_train_epoch_end(trainer)
        if "set14_PSNR" in trainer.logged:
            logged_at.append(epoch + 1)
    assert logged_at == [2, 4, 5]


def test_argument_errors():
    with pytest.raises(ValueError, match="psnr must be a !PSNR"):
        BenchmarkSuperresolutionCallback(psnr=None, scale=2)
    with pytest.raises(ValueError, match="every_n_epochs must be a positive integer"):
        BenchmarkSuperresolutionCallback(psnr=PSNR(), scale=2, every_n_epochs=0)
