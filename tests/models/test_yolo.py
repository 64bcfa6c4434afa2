"""YOLO-v3 from Darknet cfg files, and Darknet .weights files."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from detection_data import one_thread  # noqa: F401 (fixture)

from rupq.errors import CheckpointError, ConfigError
from rupq.models import create_model
from rupq.models.yolo import Darknet, YOLOLayer, load_darknet_weights, save_darknet_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def yolo_v3():
    return create_model("yolo_v3")


def test_full_cfg_has_the_published_parameter_count(yolo_v3):
    assert sum(p.numel() for p in yolo_v3.parameters() if p.requires_grad) == 61_949_149
    assert sum(isinstance(m, nn.Conv2d) for m in yolo_v3.modules()) == 75


def test_full_cfg_returns_three_scales_for_416(yolo_v3):
    images = torch.rand(1, 3, 416, 416)
    yolo_v3.train()
    with torch.no_grad():
        raw = yolo_v3(images)
    assert [tuple(t.shape) for t in raw] == [(1, 3, 13, 13, 85), (1, 3, 26, 26, 85), (1, 3, 52, 52, 85)]
    assert [layer.stride for layer in yolo_v3.yolo_layers] == [32, 16, 8]
    yolo_v3.eval()
    with torch.no_grad():
        decoded = yolo_v3(images)
    assert decoded.shape == (1, 3 * (13 * 13 + 26 * 26 + 52 * 52), 85)
    assert decoded[..., 4:].min() >= 0 and decoded[..., 4:].max() <= 1  # probabilities


def test_layer_names_follow_the_darknet_port(yolo_v3):
    names = dict(yolo_v3.named_modules())
    for name, kind in [
        ("module_list.0.conv_0", nn.Conv2d), ("module_list.0.batch_norm_0", nn.BatchNorm2d),
        ("module_list.0.leaky_0", nn.LeakyReLU), ("module_list.4.shortcut_4", nn.Module),
        ("module_list.81.conv_81", nn.Conv2d), ("module_list.82.yolo_82", YOLOLayer),
        ("module_list.83.route_83", nn.Module), ("module_list.85.upsample_85", nn.Upsample),
        ("module_list.94.yolo_94", YOLOLayer), ("module_list.106.yolo_106", YOLOLayer),
    ]:
        assert isinstance(names[name], kind), name
    # The detection convolutions have a bias and no BatchNorm; all others the reverse.
    assert names["module_list.81.conv_81"].bias is not None and "module_list.81.batch_norm_81" not in names
    assert names["module_list.0.conv_0"].bias is None
    assert len(yolo_v3.module_list) == 107


def test_num_classes_override_resizes_the_detection_convolutions():
    model = create_model("yolo_v3_tiny_demo", num_classes=3)
    assert [layer.num_classes for layer in model.yolo_layers] == [3, 3]
    assert model.module_list[15][0].out_channels == 3 * (3 + 5)
    model.train()
    outputs = model(torch.rand(2, 3, 96, 64))
    assert [tuple(t.shape) for t in outputs] == [(2, 3, 3, 2, 8), (2, 3, 6, 4, 8)]


def test_eval_decoding_follows_the_yolo_formulas():
    model = create_model("yolo_v3_tiny_demo", num_classes=2)
    layer = model.yolo_layers[0]
    layer.eval()
    raw = torch.randn(1, 3 * 7, 2, 3)
    decoded = layer(raw).view(1, 3, 2, 3, 7)
    t = raw.view(1, 3, 7, 2, 3).permute(0, 1, 3, 4, 2)
    j, i, a = 1, 2, 0  # row 1, column 2, first anchor
    expected_cx = (torch.sigmoid(t[0, a, j, i, 0]) + i) * layer.stride
    expected_h = layer.anchors[a, 1] * torch.exp(t[0, a, j, i, 3])
    assert torch.allclose(decoded[0, a, j, i, 0], expected_cx)
    assert torch.allclose(decoded[0, a, j, i, 3], expected_h)


def test_tiny_arch_is_registered_and_small():
    model = create_model("yolo_v3_tiny_demo")
    assert model.rupq_arch == {"name": "yolo_v3_tiny_demo", "kwargs": {}}
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    assert model.image_size == 128


def test_cfg_by_path_and_errors_name_the_line(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[net]\nwidth=64\n\n[convolutional]\nfilters=8\nsize=3\n\n[dropout]\nprobability=0.5\n")
    with pytest.raises(ConfigError, match=r"bad.cfg:8: unsupported section \[dropout\]"):
        Darknet(cfg)
    with pytest.raises(ConfigError, match="neither a file nor a shipped cfg"):
        create_model("yolo_v3", cfg="no-such-cfg")
    with pytest.raises(ConfigError, match="not a multiple of the largest stride 32"):
        create_model("yolo_v3_tiny_demo", image_size=100)


def _write_weights(path, header, values) -> None:
    with open(path, "wb") as handle:
        np.array(header[:3], dtype=np.int32).tofile(handle)
        np.array(header[3:], dtype=np.int64 if header[1] >= 2 else np.int32).tofile(handle)
        np.asarray(values, dtype=np.float32).tofile(handle)


def test_darknet_weights_fill_conv_and_batch_norm_in_file_order(tmp_path):
    model = create_model("yolo_v3_tiny_demo", num_classes=1)
    count = sum(p.numel() for p in model.parameters()) + sum(
        m.running_mean.numel() + m.running_var.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )
    path = tmp_path / "tiny.weights"
    _write_weights(path, [0, 2, 0, 12345], np.arange(count) % 1000)
    load_darknet_weights(model, path)
    first = model.module_list[0]
    bn, conv = first.batch_norm_0, first.conv_0
    # Layer 0: BatchNorm bias, weight, running mean, running var (8 each), then the 8×3×3×3 weights.
    assert bn.bias.tolist() == list(range(0, 8)) and bn.weight.tolist() == list(range(8, 16))
    assert bn.running_mean.tolist() == list(range(16, 24)) and bn.running_var.tolist() == list(range(24, 32))
    assert conv.weight.flatten()[:3].tolist() == [32, 33, 34]
    # The detection convolution (no BatchNorm) stores its bias before its weights.
    last = model.module_list[22].conv_22
    assert last.weight.flatten()[-1].item() == (count - 1) % 1000
    assert last.bias[0].item() == (count - last.weight.numel() - last.bias.numel()) % 1000

    # Old header (version 0.1: images seen as int32) is read too.
    _write_weights(path, [0, 1, 0, 7], np.ones(count))
    load_darknet_weights(model, path)
    assert torch.all(model.module_list[0].conv_0.weight == 1)


def test_darknet_weights_round_trip(tmp_path):
    source, target = create_model("yolo_v3_tiny_demo"), create_model("yolo_v3_tiny_demo")
    with torch.no_grad():
        for tensor in list(source.parameters()) + list(source.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    save_darknet_weights(source, tmp_path / "model.weights")
    load_darknet_weights(target, tmp_path / "model.weights")
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        if a.is_floating_point():
            assert torch.equal(a, b), name


def test_darknet_weights_size_mismatch_is_one_line(tmp_path):
    model = create_model("yolo_v3_tiny_demo")
    path = tmp_path / "short.weights"
    _write_weights(path, [0, 2, 0, 0], np.zeros(1000))
    with pytest.raises(CheckpointError) as error:
        load_darknet_weights(model, path)
    message = str(error.value)
    assert "\n" not in message and "holds 1000 weights" in message and "yolov3-tiny-demo.cfg" in message
    with pytest.raises(CheckpointError, match="cannot read Darknet weights"):
        load_darknet_weights(model, tmp_path / "missing.weights")
