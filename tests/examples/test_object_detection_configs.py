"""The object-detection example configs: the seed's (unchanged) and the demo's."""

from pathlib import Path

import pytest
import torch.nn as nn
import yaml
from conftest import REPO

from rupq.config import load_config
from rupq.models import create_model

EXAMPLES = REPO / "rupq" / "examples"
SEED_CONFIGS = [EXAMPLES / "float" / "object_detection" / "fp.yaml"] + sorted(
    (EXAMPLES / "quantized" / "object_detection").glob("*.yaml")
)
QUANTIZED = [p for p in SEED_CONFIGS if "quantized" in p.parts]
DEMO_CONFIGS = sorted((EXAMPLES / "detection_demo").glob("*.yaml"))


class _Untagged(yaml.SafeLoader):
    """Reads a config as plain data: every ``!Tag`` node becomes its mapping (or None)."""


_Untagged.add_multi_constructor(
    "!", lambda loader, suffix, node: loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else None
)


def plain(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_Untagged)


@pytest.fixture(scope="module")
def yolo_v3():
    return create_model("yolo_v3")


def test_all_seed_configs_are_here():
    names = {p.name for p in QUANTIZED}
    assert names == {"w2a2_rupq.yaml", "w3a3_rupq.yaml", "w3a3_lsqplus.yaml", "w4a4_rupq.yaml", "w4a4_lsqplus.yaml"}
    assert SEED_CONFIGS[0].is_file()


@pytest.mark.parametrize("path", SEED_CONFIGS, ids=lambda p: p.name)
def test_seed_hyperparameters(path):
    config = plain(path)
    assert config["dataset"] == {"batch_size": 64, "image_size": 608, "multiscale": True}
    assert config["task"]["epochs"] == 300
    weights = config["optimizers"]["weight_optimizer"]
    assert weights["name"] == "SGD" and weights["params"]["lr"] == 0.01 and weights["params"]["nesterov"] is True
    callback = config["task"]["callbacks"][0]["map"]
    assert callback == {"img_size": 608, "iou_thres": 0.5, "conf_thres": 0.01, "nms_thres": 0.5}
    # Every schedule (warm-up + cosine decay) ends at the same iteration.
    ends = {
        optimizer["scheduler"]["params"]["lr_lambda"]["warmup_steps"]
        + optimizer["scheduler"]["params"]["lr_lambda"]["decay_steps"]
        for optimizer in config["optimizers"].values()
    }
    assert ends == {549_900}
    if "quantized" in path.parts:
        assert config["task"]["check_val_every_n_epochs"] == 1000 and "model_arch" not in config["task"]
    else:
        assert config["task"]["model_arch"] == "yolo_v3"


def test_float_config_builds_the_objects():
    config = load_config(SEED_CONFIGS[0])
    task = config["task"]
    loop = task.training_loop
    assert type(loop).__name__ == "ObjectDetectionTrainingLoop" and type(loop.loss).__name__ == "YOLOLoss"
    assert loop.dataset is config["dataset"] and loop.print_calibration is False
    callback = task.callbacks[0]
    assert type(callback).__name__ == "ValidateCOCOCallback" and callback.map.img_size == 608


@pytest.mark.parametrize("path", QUANTIZED, ids=lambda p: p.name)
def test_quantized_configs_wrap_every_convolution(path, yolo_v3):
    import copy

    config = load_config(path)
    model = config["model_parser"].parse(copy.deepcopy(yolo_v3))
    bits = int(path.name[1])
    wrapped = {name: module for name, module in model.named_modules() if type(module).__name__ == "QuantConv2d"}
    assert len(wrapped) == 75 and not any(type(m) is nn.Conv2d and not n.endswith(".module") for n, m in model.named_modules())
    first = wrapped["module_list.0.conv_0"].quantizer
    assert (first.input_quantizer.bit_width, first.weight_quantizer.bit_width, first.input_quantizer.half_wave) == (8, 8, True)
    for name in ("module_list.1.conv_1", "module_list.81.conv_81", "module_list.105.conv_105"):
        quantizer = wrapped[name].quantizer
        assert (quantizer.input_quantizer.bit_width, quantizer.weight_quantizer.bit_width) == (bits, bits)
        assert quantizer.input_quantizer.half_wave is False
        assert quantizer.weight_quantizer.per_channel is ("rupq" in path.name and bits != 2)


@pytest.mark.parametrize("path", DEMO_CONFIGS, ids=lambda p: p.name)
def test_demo_configs_load(path):
    config = load_config(path)
    task = config["task"]
    assert task.training_loop.dataset.image_size == task.callbacks[0].map.img_size
    if path.name == "fp.yaml":
        assert task.model_arch == "yolo_v3_tiny_demo"
    else:
        assert task.model_arch is None and task.model_parser is not None
