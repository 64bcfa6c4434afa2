"""Data mistakes end as one line naming the folder, file (and line) with exit status 2.

Missing or empty dataset folders, missing splits, unreadable images (or, with
``skip_corrupt: true``, a warning per file and a count), truncated idx files and malformed
COCO label lines, all through the command line's ``main``; the two runs that involve DataLoader
worker processes are real ``python rupq/main.py`` runs.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fashion_config, run_cli, write_config
from detection_data import write_tiny_coco
from reliability_support import ONE_THREAD, one_error_line, run_main
from rupq.errors import DataError

IMAGENET_CONFIG = """dataset: &dataset !ImageNet2012Dataloader
  batch_size: 4
  num_workers: {workers}
  image_size: 32
  root: {root}{extra}
optimizers: &optimizers
  weight_optimizer:
    name: SGD
    params: {{lr: 0.01}}
training_loop: &training_loop !TrainingLoop
  dataset: *dataset
  loss: !CrossEntropyLoss
  val_metrics:
    accuracy: !Accuracy
task: !Task
  training_loop: *training_loop
  epochs: {epochs}
  optimizers: *optimizers
  model_arch: small_resnet
  model_kwargs: {{in_channels: 3, num_classes: 2, widths: [4, 8], blocks: [1, 1]}}
"""


def imagenet_config(path: Path, root: Path, workers: int = 0, epochs: int = 1, skip_corrupt: bool = False) -> Path:
    extra = "\n  skip_corrupt: true" if skip_corrupt else ""
    return write_config(path, IMAGENET_CONFIG.format(root=root, workers=workers, epochs=epochs, extra=extra))


def how_to_point(root_key: str, info: Path) -> str:
    return (f"set '{root_key}:' in {info}, point RUPQ_DATASETS_INFO at a file of your own, "
            "or give !ImageNet2012Dataloader a root: argument")


def run_imagenet(tmp_path, root, **kwargs):
    config = imagenet_config(tmp_path / "imagenet.yaml", root, **kwargs)
    return run_main("--config", config, "--logdir", tmp_path / "logs")


def test_missing_and_empty_dataset_folders(tmp_path, datasets_info):
    info = datasets_info()
    missing = tmp_path / "nowhere"
    assert one_error_line(run_imagenet(tmp_path, missing)) == (
        f"error: dataset 'imagenet2012': folder {missing} does not exist; {how_to_point('imagenet2012', info)}")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert one_error_line(run_imagenet(tmp_path, empty)) == (
        f"error: dataset 'imagenet2012': folder {empty} is empty; {how_to_point('imagenet2012', info)}")


def test_missing_split_and_split_without_images(tmp_path, tiny_imagenet):
    (tiny_imagenet / "train").rename(tiny_imagenet / "training")
    assert one_error_line(run_imagenet(tmp_path, tiny_imagenet)) == (
        f"error: ImageNet split folder {tiny_imagenet / 'train'} does not exist (expected class subfolders inside)")
    (tiny_imagenet / "train" / "n01440764").mkdir(parents=True)
    (tiny_imagenet / "train" / "n01440764" / "notes.txt").write_text("not an image")
    assert one_error_line(run_imagenet(tmp_path, tiny_imagenet)) == (
        f"error: ImageNet split folder {tiny_imagenet / 'train'}: Found no valid file for the classes n01440764. "
        "Supported extensions are: .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp")


def corrupt(path: Path, how: str) -> Path:
    if how == "garbage":
        path.write_bytes(b"this is not a JPEG file" * 10)
    else:  # a real JPEG cut in the middle, as an interrupted copy leaves it
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("how, reason", [
    ("garbage", "cannot identify image file"),
    ("truncated", r"image file is truncated \(\d+ bytes not processed\)"),
])
def test_unreadable_image_names_the_file(tmp_path, tiny_imagenet, how, reason):
    bad = corrupt(tiny_imagenet / "train" / "n01443537" / "n01443537_1.JPEG", how)
    line = one_error_line(run_imagenet(tmp_path, tiny_imagenet))
    assert re.fullmatch(
        f"error: cannot read image {re.escape(str(bad))}: {reason}; "
        r"give !ImageNet2012Dataloader skip_corrupt: true to skip unreadable files", line), line


def test_unreadable_image_in_a_dataloader_worker_is_one_line(tmp_path, tiny_imagenet):
    """The error crosses the worker process boundary, which wraps it in the worker's traceback."""
    bad = corrupt(tiny_imagenet / "val" / "n01440764" / "n01440764_1.JPEG", "garbage")
    config = imagenet_config(tmp_path / "imagenet.yaml", tiny_imagenet, workers=2)
    result = run_cli("--config", config, "--logdir", tmp_path / "logs", env=ONE_THREAD)
    line = one_error_line(result)
    assert line == (f"error: cannot read image {bad}: cannot identify image file; "
                    "give !ImageNet2012Dataloader skip_corrupt: true to skip unreadable files")
    assert "Caught DataError" not in result.stderr and "worker" not in result.stderr


def test_debug_shows_the_worker_traceback(tmp_path, tiny_imagenet):
    bad = corrupt(tiny_imagenet / "train" / "n01440764" / "n01440764_0.JPEG", "garbage")
    config = imagenet_config(tmp_path / "imagenet.yaml", tiny_imagenet, workers=1)
    with pytest.raises(DataError) as error:
        run_main("--config", config, "--logdir", tmp_path / "logs", "--debug")
    assert str(error.value).startswith(f"cannot read image {bad}: cannot identify image file")
    assert error.value.worker_traceback.startswith("Caught DataError in DataLoader worker process 0.")
    assert "in load_rgb_image" in error.value.worker_traceback  # where it happened, for --debug


def test_skip_corrupt_warns_once_per_file_with_a_count(tmp_path, tiny_imagenet):
    bad = [corrupt(tiny_imagenet / "train" / "n01440764" / "n01440764_2.JPEG", "garbage"),
           corrupt(tiny_imagenet / "train" / "n01443537" / "n01443537_0.JPEG", "truncated"),
           corrupt(tiny_imagenet / "val" / "n01443537" / "n01443537_1.JPEG", "garbage")]
    config = imagenet_config(tmp_path / "imagenet.yaml", tiny_imagenet, workers=2, epochs=2, skip_corrupt=True)
    result = run_cli("--config", config, "--logdir", tmp_path / "logs", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipping")]
    # Each file is reported once (the second epoch and validation skip known corrupt files silently).
    for path in bad:
        assert sum(f"cannot read image {path}:" in line for line in warnings) == 1, (path, warnings)
    assert len(warnings) == 3
    train_counts = sorted(int(re.search(r"\((\d+) unreadable file\(s\) skipped so far\)", line).group(1))
                          for line in warnings if "/train/" in line)
    assert train_counts[-1] == 2  # the count covers both worker processes
    assert json.loads((tmp_path / "logs/version_0/results.json").read_text())["val_accuracy"] >= 0


def test_truncated_fashion_mnist_file(tmp_path, tiny_fashion_mnist):
    images = tiny_fashion_mnist / "train-images-idx3-ubyte.gz"
    import gzip

    data = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(data[: len(data) - 100]))
    config = fashion_config(tmp_path / "fashion.yaml", tiny_fashion_mnist)
    line = one_error_line(run_main("--config", config, "--logdir", tmp_path / "logs"))
    assert line == (f"error: {images}: header says (64, 28, 28) but holds {64 * 28 * 28 - 100} values "
                    "(truncated file?)")


COCO_CONFIG = """dataset: &dataset !COCODataloader
  batch_size: 2
  image_size: 64
  multiscale: false
  num_workers: 0
  root: {root}
training_loop: &training_loop !ObjectDetectionTrainingLoop
  dataset: *dataset
  loss: !YOLOLoss
  print_calibration: false
task: !Task
  training_loop: *training_loop
  epochs: 1
  model_arch: yolo_v3_tiny_demo
  model_kwargs: {{num_classes: 3}}
  optimizers:
    weight_optimizer: {{name: SGD, params: {{lr: 0.001}}}}
"""


@pytest.mark.parametrize("bad_line, problem", [
    ("0 0.5 0.5 0.2", "expected 'class cx cy w h', got 4 fields: '0 0.5 0.5 0.2'"),
    ("dog 0.5 0.5 0.2 0.2", "expected 'class cx cy w h' numbers, got 'dog 0.5 0.5 0.2 0.2'"),
    ("7 0.5 0.5 0.2 0.2", "class must be an integer from 0 below 3"),
])
def test_malformed_coco_label_line_names_file_and_line(tmp_path, bad_line, problem):
    root = write_tiny_coco(tmp_path / "coco")
    labels = root / "labels" / "train" / "0002.txt"
    labels.write_text("1 0.5 0.5 0.25 0.25\n" + bad_line + "\n")
    config = write_config(tmp_path / "coco.yaml", COCO_CONFIG.format(root=root))
    line = one_error_line(run_main("--config", config, "--logdir", tmp_path / "logs"))
    assert line.startswith(f"error: {labels}:2: {problem}"), line


def test_coco_runs_when_the_labels_are_fine(tmp_path):
    """The same config without the bad line trains: the errors above come from the labels alone."""
    root = write_tiny_coco(tmp_path / "coco", train=2, val=2)
    config = write_config(tmp_path / "coco.yaml", COCO_CONFIG.format(root=root))
    result = run_main("--config", config, "--logdir", tmp_path / "logs")
    assert result.returncode == 0, result.stderr[-2000:]
