import urllib.error

import pytest
import torch
import torchvision

from rupq.errors import CheckpointError, ConfigError
from rupq.tools.training.task import RunContext, torchvision_pretrained


def test_torchvision_weights_unavailable_is_one_line(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(CheckpointError) as error:
        torchvision_pretrained("resnet18")
    message = str(error.value)
    assert message.startswith("cannot obtain torchvision's ImageNet weights for resnet18 (URLError:")
    assert "\n" not in message


def test_torchvision_weights_are_loaded_through_the_weights_api(monkeypatch):
    reference = torchvision.models.resnet18(weights=None).state_dict()
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, **kw: reference)
    model = torchvision_pretrained("resnet18")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


def test_only_known_torchvision_models():
    with pytest.raises(ConfigError, match="pretrained weights are known for resnet18, mobilenet_v2"):
        torchvision_pretrained("vgg16")


def test_run_context_defaults_to_single_process():
    context = RunContext(version_dir=None, device=torch.device("cpu"))
    model = torch.nn.Linear(2, 2)
    assert context.is_main and context.wrap_model(model) is model


def test_resumed_run_starts_with_the_interrupted_runs_best_model(tmp_path):
    from rupq.tools.training.task import Task

    old = tmp_path / "version_0"
    (old / "checkpoints").mkdir(parents=True)
    (old / "model.ckpt").write_bytes(b"best so far")
    new = tmp_path / "version_1"
    new.mkdir()
    context = RunContext(version_dir=new, device=torch.device("cpu"),
                         checkpoint_path=str(old / "checkpoints" / "last.ckpt"))
    Task._carry_over_best_model(context)
    assert (new / "model.ckpt").read_bytes() == b"best so far"
