"""Every config in rupq/examples runs end to end with --fast-dev-run on tiny data in the real formats.

The paper's recipes (ImageNet, DIV2K/Set14, COCO), the quickstart and the demos: each one
trains two batches, validates two batches and runs its callbacks, with only the overrides that
tiny data needs (smaller batches and images, no DataLoader workers). Quantized configs start, as
documented, from a full-precision ``model.ckpt`` (``--load``) of their architecture. The runs are
in-process, which saves importing torch 45 times.
"""

import re

import pytest

from conftest import REPO, write_tiny_fashion_mnist, write_tiny_imagenet
from detection_data import write_tiny_coco
from rupq.config import load_config
from rupq.config_text import config_value_text
from rupq.main import main
from rupq.models import create_model
from rupq.tools.training.task import model_checkpoint
from rupq.tools.utils.checkpoint import save_atomic
from superresolution_data import write_div2k, write_set14

EXAMPLES = REPO / "rupq" / "examples"
YOLO_V3_CFG = REPO / "rupq" / "models" / "cfg" / "yolov3.cfg"
CONFIGS = sorted(EXAMPLES.rglob("*.yaml"))
DATASET = "task.training_loop.dataset"


def test_all_45_example_configs_are_covered():
    assert len(CONFIGS) == 45


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """One folder per dataset key, and a datasets-info file naming them."""
    root = tmp_path_factory.mktemp("tiny_data")
    # HR images of the same size for ×4 and ×2 (written second, so the HR files fit both).
    write_div2k(root / "div2k", scale=4, train_ids=(1, 2, 3), val_ids=(801, 802), lr_size=(12, 16))
    write_div2k(root / "div2k", scale=2, train_ids=(1, 2, 3), val_ids=(801, 802), lr_size=(24, 32))
    write_set14(root / "set14", scale=4, lr_size=(10, 14))
    write_set14(root / "set14", scale=2, lr_size=(20, 28))
    paths = {
        "imagenet2012": write_tiny_imagenet(root / "imagenet"),
        "div2k": root / "div2k",
        "set14": root / "set14",
        "coco": write_tiny_coco(root / "coco", train=4, val=3),
        "fashion_mnist": write_tiny_fashion_mnist(root / "fashion"),
    }
    info = root / "datasets_info.yaml"
    info.write_text("".join(f"{key}: {path}\n" for key, path in paths.items()))
    # YOLO-v3 with 1/32 of its channels: the same layers and names (the configs' per-layer
    # exceptions apply), 62 M → 0.07 M parameters.
    slim = re.sub(r"(?m)^filters=(\d+)", lambda m: f"filters={max(2, int(m.group(1)) // 32)}", YOLO_V3_CFG.read_text())
    (root / "yolov3-slim.cfg").write_text(slim)
    return info


@pytest.fixture
def tiny_environment(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RUPQ_DATASETS_INFO", str(tiny_data))
    monkeypatch.setenv("RUPQ_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def fp_config_of(config):
    """The full-precision config whose model a quantized config starts from."""
    candidates = [config.parent / "fp.yaml", config.parent / "edsr_fp.yaml"]
    if config.is_relative_to(EXAMPLES / "quantized"):
        candidates.append(EXAMPLES / "float" / config.parent.relative_to(EXAMPLES / "quantized") / "fp.yaml")
    return next(candidate for candidate in candidates if candidate.is_file())


_checkpoints = {}


def model_overrides(config, tiny_data) -> list[str]:
    """The slim YOLO-v3 for configs that build the full one."""
    if load_config(config)["task"].model_arch != "yolo_v3":
        return []
    return [f"task.model_kwargs={{cfg: {tiny_data.parent / 'yolov3-slim.cfg'}, num_classes: 3}}"]


def fp_checkpoint(config, folder, tiny_data):
    """A model.ckpt of the architecture of ``config``'s FP config (untrained: only the format matters)."""
    fp_config = fp_config_of(config)
    task = load_config(fp_config, model_overrides(fp_config, tiny_data))["task"]
    key = (task.model_arch, repr(sorted(task.model_kwargs.items())))
    if key not in _checkpoints or not _checkpoints[key].is_file():
        path = folder / f"{task.model_arch}_{len(_checkpoints)}.ckpt"
        save_atomic(model_checkpoint(create_model(task.model_arch, **task.model_kwargs)), path)
        _checkpoints[key] = path
    return _checkpoints[key]


def tiny_overrides(config) -> list[str]:
    task = load_config(config)["task"]
    dataset = type(task.training_loop.dataset).__name__
    overrides = [f"{DATASET}.batch_size=2", f"{DATASET}.num_workers=0"]
    if dataset == "ImageNet2012Dataloader":
        overrides.append(f"{DATASET}.image_size=64")
    if dataset == "DIV2KDataloader":
        overrides.append(f"{DATASET}.patch_size=16")
    if dataset == "COCODataloader":
        overrides += [f"{DATASET}.image_size=64", f"{DATASET}.multiscale=false"]
    for index, callback in enumerate(task.callbacks):
        if type(callback).__name__ == "ValidateCOCOCallback":
            overrides.append(f"task.callbacks.{index}.map.img_size=64")
        if type(callback).__name__ == "QuantImagesCallback":  # ~0.3 s a figure, two per layer: draw one layer
            overrides.append(f"task.callbacks.{index}.max_layers=1")
    if task.model_parser is not None:
        # Fewer candidate steps for the min-error initialisation (300 on YOLO-v3's 62 M weights take long).
        for path in quantizer_initializer_paths(config):
            if config_value_text(config, path).startswith("!MinErrorInitializer"):
                overrides.append(f"{path}.n_iters=10")
    return overrides


def quantizer_initializer_paths(config):
    from rupq.config_text import config_tree

    wrappers = config_tree(config)["task"]["model_parser"]["wrappers"]
    return [f"task.model_parser.wrappers.{layer}.quantizer.{which}.initializer"
            for layer, wrapper in wrappers.items() for which in ("input_quantizer", "weight_quantizer")
            if "initializer" in wrapper["quantizer"][which]]


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(EXAMPLES)) for c in CONFIGS])
def test_example_config_fast_dev_run(config, tiny_data, tiny_environment, capsys):
    logdir = tiny_environment / "logs"
    overrides = tiny_overrides(config) + model_overrides(config, tiny_data)
    arguments = ["--config", str(config), "--logdir", str(logdir), "--fast-dev-run", "--set", *overrides]
    if load_config(config)["task"].model_arch is None:
        arguments += ["--load", str(fp_checkpoint(config, tiny_environment.parent, tiny_data))]
    try:
        main(arguments)
    except SystemExit as exit:
        pytest.fail(f"exit status {exit.code}: {capsys.readouterr().err.strip().splitlines()[-1:]}")
    output = capsys.readouterr().out
    assert "epoch 1/1 train:" in output and "epoch 1/1 val:" in output, output
    assert "fast dev run: 2 training and 2 validation batches of epoch 1" in output
    assert not logdir.exists()  # nothing a real run would reuse
