"""``torchvision:NAME`` and ``timm:NAME``: built by name with the config's arguments, and their
published weights read from the local cache only (the tests write that cache; nothing downloads)."""

import os
import socket
import sys

import pytest
import torch
import torchvision
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from rupq.errors import CheckpointError, ConfigError
from rupq.models import create_model, pretrained_model


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test of rupq.models.named touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("arch, kwargs", [
    ("torchvision:mobilenet_v3_small", {"num_classes": 10, "in_chans": 1}),
    ("timm:resnet18d", {"num_classes": 10, "in_chans": 1}),
])
def test_named_models_take_the_configs_arguments(arch, kwargs):
    model = create_model(arch, **kwargs).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert model.rupq_arch == {"name": arch, "kwargs": kwargs}
    rebuilt = create_model(model.rupq_arch["name"], **model.rupq_arch["kwargs"])
    rebuilt.load_state_dict(model.state_dict())  # strict: the same layers and shapes


@pytest.mark.parametrize("arch, message", [
    ("torchvision:mobilenet_v3_smal", "unknown model_arch 'torchvision:mobilenet_v3_smal' (torchvision's "
     "classification models, torchvision.models.list_models()); did you mean mobilenet_v3_small"),
    ("torchvision:fasterrcnn_resnet50_fpn", "unknown model_arch 'torchvision:fasterrcnn_resnet50_fpn'"),
    ("timm:resnet18e", "unknown model_arch 'timm:resnet18e' (timm.list_models()); did you mean resnet18"),
    ("mobilenet_v3_small", "unknown model_arch 'mobilenet_v3_small'; did you mean torchvision:mobilenet_v3_small?"),
])
def test_unknown_names_are_one_line_with_the_closest_names(arch, message):
    with pytest.raises(ConfigError) as error:
        create_model(arch)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_arguments_a_builder_does_not_take_name_the_model():
    with pytest.raises(ConfigError, match=r"^model_arch 'torchvision:resnet18': .*unexpected keyword argument 'widths'"):
        create_model("torchvision:resnet18", widths=[4, 8])
    with pytest.raises(ConfigError, match=r"^model_arch 'timm:resnet18d': .*'widths'"):
        create_model("timm:resnet18d", widths=[4, 8])


def test_timm_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    for call in (lambda: create_model("timm:resnet18d"), lambda: pretrained_model("timm:resnet18d")):
        with pytest.raises(ConfigError, match=r"^timm: models need timm, which is not installed: pip install 'rupq\[timm\]'"):
            call()


def published(model: torch.nn.Module) -> dict:
    """A state dict unlike any fresh model's, standing for the published weights."""
    generator = torch.Generator().manual_seed(1)
    return {key: torch.randn(value.shape, generator=generator).to(value.dtype) if value.is_floating_point() else value
            for key, value in model.state_dict().items()}


def assert_same_state(model, state):
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_torchvision_weights_come_from_torch_hubs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name = "mobilenet_v3_small"
    expected = tmp_path / "hub" / "checkpoints" / os.path.basename(torchvision.models.get_model_weights(name).DEFAULT.url)
    with pytest.raises(CheckpointError) as error:
        pretrained_model(f"torchvision:{name}")
    assert str(error.value).startswith(f"--load torchvision:{name}: the pretrained weights are not on disk "
                                       f"(looked for {expected}); nothing is downloaded")
    assert "\n" not in str(error.value)
    state = published(torchvision.models.get_model(name, weights=None))
    expected.parent.mkdir(parents=True)
    torch.save(state, expected)
    model = pretrained_model(f"torchvision:{name}")
    assert_same_state(model, state)
    assert model.rupq_arch == {"name": f"torchvision:{name}", "kwargs": {}}


def test_timm_weights_come_from_the_hugging_face_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(CheckpointError) as error:
        pretrained_model("timm:resnet18d")
    message = str(error.value)
    assert message.startswith("--load timm:resnet18d: the pretrained weights are not on disk (looked for "
                              f"{tmp_path / 'models--timm--resnet18d.ra2_in1k'}")
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message and "\n" not in message
    # The Hugging Face hub's cache layout: refs/main names the snapshot holding the file.
    folder = tmp_path / "models--timm--resnet18d.ra2_in1k"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    (folder / "snapshots" / "0123abcd").mkdir(parents=True)
    import timm

    state = published(timm.create_model("resnet18d", pretrained=False))
    save_file(state, folder / "snapshots" / "0123abcd" / "model.safetensors")
    model = pretrained_model("timm:resnet18d")
    assert_same_state(model, state)
    assert model.rupq_arch == {"name": "timm:resnet18d", "kwargs": {}}


def test_a_file_that_is_not_weights_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / os.path.basename(torchvision.models.get_model_weights("resnet18").DEFAULT.url)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated download")
    with pytest.raises(CheckpointError, match=f"^cannot read the pretrained weights {path}: "):
        pretrained_model("torchvision:resnet18")
