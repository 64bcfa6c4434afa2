"""``rupq.save`` / ``rupq.load`` through the runs' loader, and ``rupq.export`` through the command's
writer and check, on a network rupq did not build."""

import onnx
import pytest
import torch
import torchvision

import rupq
from rupq.errors import CheckpointError, ConfigError
from rupq.tools.training.task import RunContext, Task


def quantized_mobilenet(seed=0):
    torch.manual_seed(seed)
    model = rupq.quantize(torchvision.models.mobilenet_v3_small(num_classes=5), "lsqplus_w4a4", verbose=False)
    rupq.calibrate(model, torch.randn(4, 3, 64, 64))
    return model.eval()


def test_save_then_load_into_a_freshly_quantized_model_gives_the_same_outputs(tmp_path):
    model, images = quantized_mobilenet(), torch.randn(2, 3, 64, 64)
    rupq.save(model, tmp_path / "model.ckpt")
    restored = rupq.load(tmp_path / "model.ckpt", quantized_mobilenet(seed=1))
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))


def test_load_refuses_what_does_not_fit(tmp_path):
    rupq.save(quantized_mobilenet(), tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="holds a quantized model but the model given is a full-precision one"):
        rupq.load(tmp_path / "model.ckpt", torchvision.models.mobilenet_v3_small(num_classes=5))
    other_bits = rupq.quantize(torchvision.models.mobilenet_v3_small(num_classes=5), "lsqplus_w3a3", verbose=False)
    with pytest.raises(CheckpointError, match="does not fit the config's model_parser: .* bit_width 4 in the checkpoint but 3"):
        rupq.load(tmp_path / "model.ckpt", other_bits)
    # --load reads model.ckpt files of the registry's models only: this one says how to read it
    task = Task.__new__(Task)
    task.model_arch, task.model_parser = None, None
    with pytest.raises(CheckpointError, match="rupq did not build .* rupq.load\\(path, model\\)"):
        task._base_model(RunContext(None, torch.device("cpu"), load=str(tmp_path / "model.ckpt")), None)


def test_export_writes_a_checked_file_and_leaves_the_model_alone(tmp_path, capsys):
    model = quantized_mobilenet().train()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    summary = rupq.export(model, tmp_path / "model.onnx", torch.randn(3, 3, 64, 64))
    assert "onnxruntime matches PyTorch layer by layer" in capsys.readouterr().out
    assert summary["top1_agreement"] == 1.0 and summary["max_difference"] <= summary["tolerance"]
    assert summary["layers"] == sum(1 for name, _ in model.named_modules() if name.endswith(".quantizer"))
    onnx.checker.check_model(onnx.load(tmp_path / "model.onnx"))
    assert model.training and all(torch.equal(state[name], tensor) for name, tensor in model.state_dict().items())
    with pytest.raises(ConfigError, match="not a file name in an existing folder"):
        rupq.export(model, tmp_path / "missing" / "model.onnx", torch.randn(1, 3, 64, 64))
