"""The super-resolution example configs: the seed's, unchanged, and the demo's."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from conftest import REPO
from superresolution_data import write_div2k, write_set14

from rupq import main
from rupq.config import load_config
from rupq.models import create_model

EXAMPLES = REPO / "rupq" / "examples"
SEED_SR_CONFIGS = sorted((EXAMPLES / "float" / "superresolution").rglob("*.yaml")) + sorted(
    (EXAMPLES / "quantized" / "superresolution").rglob("*.yaml")
)
DEMO_CONFIGS = sorted((EXAMPLES / "superresolution_demo").glob("*.yaml"))


class _Untagged(yaml.SafeLoader):
    """Reads a config as plain data: every ``!Tag`` node becomes its mapping (or None)."""


_Untagged.add_multi_constructor(
    "!", lambda loader, suffix, node: loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else None
)


def plain(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_Untagged)


def test_all_seed_configs_are_here():
    assert len(SEED_SR_CONFIGS) == 14
    names = {str(p.relative_to(EXAMPLES)) for p in SEED_SR_CONFIGS}
    for model in ("edsr", "srresnet"):
        assert f"float/superresolution/{model}/fp.yaml" in names
        for bits in (2, 3, 4):
            for method in ("rupq", "lsqplus"):
                assert f"quantized/superresolution/{model}/w{bits}a{bits}_{method}.yaml" in names


@pytest.mark.parametrize("path", [p for p in SEED_SR_CONFIGS if "quantized" in p.parts], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_layer_named_by_the_model_parser_is_a_conv2d(path):
    model = create_model(path.parent.name)
    convs = {name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    parser = plain(path)["model_parser"]
    named = set()
    for key in ("input_bit_width", "weight_bit_width", "half_wave"):
        named |= set((parser[key] or {}).get("exceptions") or {})
    named |= {key for key in parser["wrappers"] if key not in ("Conv2d", "Linear")}
    assert named and named <= convs, sorted(named - convs)


@pytest.mark.parametrize("path", SEED_SR_CONFIGS + DEMO_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_loads(path):
    config = load_config(path)
    task, dataset = config["task"], config["dataset"]
    assert task.training_loop.dataset is dataset
    psnr = task.training_loop.val_metrics["PSNR"]
    benchmark = next(c for c in task.callbacks if type(c).__name__ == "BenchmarkSuperresolutionCallback")
    assert type(benchmark.psnr) is type(psnr)  # the seed writes `!psnr` in some configs
    if dataset.normalize:
        assert (psnr.min_val, psnr.max_val, psnr.boundary_size) == (-2.5, 2.5, 4)
    else:  # EDSR: 0–255 pixels
        assert (psnr.min_val, psnr.max_val, psnr.boundary_size) == (0, 255, dataset.scale)
    assert benchmark.normalize == dataset.normalize and benchmark.scale == dataset.scale


@pytest.mark.parametrize("path", SEED_SR_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_cosine_schedules_span_the_training_at_one_patch_per_image(path):
    """An epoch is one patch of each of the 800 DIV2K training images: T_max = epochs × 800 / batch."""
    config = plain(path)
    iterations = config["task"]["epochs"] * 800 // config["dataset"]["batch_size"]
    for optimizer in config["optimizers"].values():
        scheduler = optimizer["scheduler"]
        if scheduler["name"] == "CosineAnnealingLR":
            assert scheduler["params"]["T_max"] == iterations
        else:
            assert max(scheduler["params"]["milestones"]) < iterations


TINY_SR_CONFIG = """
dataset: &dataset !DIV2KDataloader
  batch_size: 4
  patch_size: 8
  scale: 2
  normalize: False
  repeat: 2
  num_workers: 0
optimizers: &optimizers
  weight_optimizer: {{name: Adam, params: {{lr: 0.001}}}}
training_loop: &training_loop !TrainingLoop
  dataset: *dataset
  loss: !L1Loss
  train_metrics: {{PSNR: !PSNR {{min_val: 0, max_val: 255, boundary_size: 2}}}}
  val_metrics: {{PSNR: !PSNR {{min_val: 0, max_val: 255, boundary_size: 2}}}}
task: !Task
  training_loop: *training_loop
  epochs: 2
  optimizers: *optimizers
  model_arch: {arch}
  model_kwargs: {{scale: 2, num_blocks: 1, num_features: 8}}
  model_saver: {{monitor: val_PSNR, mode: max}}
  callbacks:
    - !BenchmarkSuperresolutionCallback
      scale: 2
      normalize: False
      psnr: !psnr {{min_val: 0, max_val: 255, boundary_size: 2}}
"""


def tiny_sr_run(tmp_path, datasets_info, arch):
    write_div2k(tmp_path / "div2k", scale=2, train_ids=(1, 2), val_ids=(801,))
    write_set14(tmp_path / "set14", scale=2)
    info = datasets_info(div2k=tmp_path / "div2k", set14=tmp_path / "set14")
    config = tmp_path / "sr.yaml"
    config.write_text(TINY_SR_CONFIG.format(arch=arch))
    return info, config


@pytest.mark.parametrize("arch", ["edsr", "srresnet"])
def test_run_logs_validation_and_set14_psnr(tmp_path, datasets_info, monkeypatch, capsys, arch):
    monkeypatch.setenv("RUPQ_CACHE_DIR", str(tmp_path / "cache"))
    _, config = tiny_sr_run(tmp_path, datasets_info, arch)
    version = main.run(main.parse_args(["--config", str(config), "--logdir", str(tmp_path / "runs")]))
    captured = capsys.readouterr()
    assert "Set14 ×2: PSNR" in captured.out + captured.err
    results = json.loads((version / "results.json").read_text())
    for key in ("val_PSNR", "train_PSNR", "set14_PSNR", "set14_bicubic_PSNR"):
        assert 0 < results[key] < 100, key


def test_missing_dataset_is_a_one_line_error(tmp_path, datasets_info, capsys):
    datasets_info(div2k=tmp_path)
    (tmp_path / "DIV2K_train_HR").mkdir()
    config = tmp_path / "sr.yaml"
    config.write_text(TINY_SR_CONFIG.format(arch="edsr"))
    with pytest.raises(SystemExit) as exit:
        main.main(["--config", str(config), "--logdir", str(tmp_path / "runs")])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: DIV2K: folder {tmp_path / 'DIV2K_train_LR_bicubic' / 'X2'} does not exist "
        f"(expected DIV2K_train_HR/0001.png and DIV2K_train_LR_bicubic/X2/0001x2.png under {tmp_path})"
    )


def test_demo_configs_fp_then_w4a4_from_the_fp_model(tmp_path, datasets_info, monkeypatch):
    """The demo's two steps, shortened to one epoch of one small batch each, on a tiny DIV2K folder."""
    monkeypatch.setenv("RUPQ_CACHE_DIR", str(tmp_path / "cache"))
    write_div2k(tmp_path / "div2k", scale=2, train_ids=(1, 2), val_ids=(801,), lr_size=(20, 24))
    write_set14(tmp_path / "set14", scale=2, lr_size=(20, 20))
    datasets_info(div2k=tmp_path / "div2k", set14=tmp_path / "set14")
    shorter = {"repeat: 20": "repeat: 2", "batch_size: 16": "batch_size: 4", "patch_size: 64": "patch_size: 16",
               "epochs: 40": "epochs: 1", "epochs: 15": "epochs: 1",
               "check_val_every_n_epochs: 5": "check_val_every_n_epochs: 1",
               "    - !QuantImagesCallback\n": ""}  # its figures are tested with the quantization callbacks
    versions = {}
    for name in ("edsr_fp", "edsr_w4a4_rupq"):
        text = (EXAMPLES / "superresolution_demo" / f"{name}.yaml").read_text()
        for old, new in shorter.items():
            text = text.replace(old, new)
        config = tmp_path / f"{name}.yaml"
        config.write_text(text)
        load = ["--load", str(versions["edsr_fp"] / "model.ckpt")] if name != "edsr_fp" else []
        versions[name] = main.run(main.parse_args(["--config", str(config), "--logdir", str(tmp_path / name), *load]))
    results = json.loads((versions["edsr_w4a4_rupq"] / "results.json").read_text())
    assert {"val_PSNR", "set14_PSNR", "set14_bicubic_PSNR"} <= set(results)
    state = torch.load(versions["edsr_w4a4_rupq"] / "model.ckpt", weights_only=True)["state_dict"]
    assert "body.4.module.weight" in state and "sub_mean.mean_shift" in state
