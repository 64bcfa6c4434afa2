"""A model named ``torchvision:NAME`` in a config is rebuilt from its checkpoints: ``--load``,
``--checkpoint_path`` and ``rupq export`` read the name and arguments the checkpoint records."""

import os

import torch
import torchvision

from conftest import (CLASSIFICATION_LOOP_AND_TASK, FASHION_FP_CONFIG, REPO, run_export, run_main, write_config,
                      write_tiny_fashion_mnist, write_tiny_imagenet)

ARCH = {"name": "torchvision:mobilenet_v3_small", "kwargs": {"num_classes": 10, "in_chans": 1}}
RECIPE = REPO / "rupq" / "examples" / "any_model" / "torchvision_mobilenet_v3_small" / "w4a4_rupq.yaml"
DATASET = "task.training_loop.dataset"


def recorded(checkpoint) -> dict:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return saved["arch"] if "arch" in saved else saved["model"]["arch"]


def test_torchvision_model_by_name_round_trips_through_its_checkpoints(tmp_path):
    root = write_tiny_fashion_mnist(tmp_path / "fashion")
    model = "  model_arch: torchvision:mobilenet_v3_small\n  model_kwargs: {num_classes: 10, in_chans: 1}\n"
    fp = write_config(tmp_path / "fp.yaml", FASHION_FP_CONFIG.format(root=root, epochs=1, model=model))
    logs = tmp_path / "logs"
    result = run_main("--config", fp, "--logdir", logs)
    assert result.returncode == 0, result.stderr
    assert recorded(logs / "version_0" / "model.ckpt") == ARCH

    tiny = [f"{DATASET}.root={root}", f"{DATASET}.batch_size=16"] + [
        f"task.model_parser.wrappers.{kind}.quantizer.{which}.initializer.n_iters=10"
        for kind in ("Conv2d", "Linear") for which in ("input_quantizer", "weight_quantizer")]
    result = run_main("--config", RECIPE, "--logdir", logs, "--load", logs / "version_0" / "model.ckpt", "--set", *tiny)
    assert result.returncode == 0, result.stderr
    quantized = logs / "version_1"
    assert recorded(quantized / "model.ckpt") == ARCH
    assert recorded(quantized / "checkpoints" / "last.ckpt") == ARCH

    result = run_main("--config", RECIPE, "--logdir", logs, "--checkpoint_path", quantized / "checkpoints" / "last.ckpt",
                      "--set", *tiny, "task.epochs=2")
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2" in result.stdout and "epoch 1/2" not in result.stdout  # resumed after epoch 1

    result = run_export("--checkpoint", quantized / "model.ckpt", "--out", tmp_path / "model.onnx")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model.onnx").is_file()


IMAGENET_CONFIG = """dataset: &dataset !ImageNet2012Dataloader
  batch_size: 2
  num_workers: 0
  image_size: 32
  root: {root}
optimizers: &optimizers
  weight_optimizer: {{name: SGD, params: {{lr: 0.01}}}}
""" + CLASSIFICATION_LOOP_AND_TASK + """  epochs: 1
  optimizers: *optimizers
  model_saver: {{monitor: val_accuracy, mode: max}}
"""


def test_load_by_name_reads_the_local_cache_or_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = write_config(tmp_path / "fp.yaml", IMAGENET_CONFIG.format(root=write_tiny_imagenet(tmp_path / "imagenet")))
    arguments = ["--config", config, "--logdir", tmp_path / "logs", "--load", "torchvision:mobilenet_v3_small"]
    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(weights.url)
    result = run_main(*arguments)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --load torchvision:mobilenet_v3_small: the pretrained weights are not on "
                                    f"disk (looked for {cached})") and result.stderr.count("\n") == 1, result.stderr
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.get_model("mobilenet_v3_small", weights=None).state_dict(), cached)
    result = run_main(*arguments, "--fast-dev-run")
    assert result.returncode == 0, result.stderr
    assert "fast dev run: 2 training and 2 validation batches" in result.stdout
