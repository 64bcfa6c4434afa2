"""Shared fixtures: tiny datasets written in the real on-disk formats, and a CLI runner."""

import contextlib
import gzip
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# The suite runs the quantizer formula eagerly, in this process and in the runs it starts:
# compiling its graphs costs tens of seconds on a 2-core machine. The compiled path has its own
# tests (tests/quantizers/formula_paths.py and the tests that use it).
os.environ.setdefault("RUPQ_COMPILE", "0")

# Inductor decides from the sizes of a graph's first call whether its loops are worth several
# threads, and its on-disk cache does not key on sizes (the graphs have dynamic shapes): graphs
# compiled here on tiny tensors would hand single-threaded kernels to every later training run on
# this machine (up to 2x slower quantizers). The tests keep a cache of their own.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"torchinductor_rupq_tests_{os.getuid()}")
)

# pytest.ini runs the suite in one pytest-xdist worker per core (at most 4): each worker, and the
# runs it starts, keeps to one intra-op thread, so that two workers on two cores ask for two.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzipped idx file, the MNIST/Fashion-MNIST format."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_tiny_fashion_mnist(root: Path, train: int = 64, test: int = 32) -> Path:
    """``train`` training and ``test`` test 28×28 images whose class is visible (bright band at
    row 2·class on dim noise), classes in turn."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, size=(count, 28, 28))
        for index, label in enumerate(labels):
            images[index, 2 * label : 2 * label + 3] = 255
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def write_glyph_fashion_mnist(root: Path, train: int, test: int, seed: int = 0) -> Path:
    """Fashion-MNIST files of a learnable 10-class task: each class has its own 4×4 glyph, stamped
    6 times at random places on noise, so a small convnet (whose global pooling forgets where
    things are) learns it in a few epochs. Classes in turn; test images are new draws."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    glyphs = rng.integers(0, 2, size=(10, 4, 4)) * 255
    for split, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 80, size=(count, 28, 28))
        for image, label in zip(images, labels):
            for y, x in rng.integers(0, 24, size=(6, 2)):
                image[y : y + 4, x : x + 4] = glyphs[label]
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def edit_shipped(text: str, old: str, new: str) -> str:
    """``text`` of a shipped config with ``old`` replaced by ``new``; fails when the shipped file
    no longer contains ``old`` (a test must not quietly run something else)."""
    assert old in text, f"the shipped config no longer contains {old!r}"
    return text.replace(old, new)


@pytest.fixture
def tiny_fashion_mnist(tmp_path) -> Path:
    return write_tiny_fashion_mnist(tmp_path / "fashion")


@pytest.fixture
def tiny_imagenet(tmp_path) -> Path:
    return write_tiny_imagenet(tmp_path / "imagenet")


def random_pixels(rng) -> np.ndarray:
    return rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)


def write_tiny_imagenet(root: Path, image=random_pixels) -> Path:
    """ImageNet folder layout: train/ and val/ with 2 classes of small JPEGs (``image(rng)``:
    the pixels of each, random 40×48 by default)."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("val", 2)):
        for cls in ("n01440764", "n01443537"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for index in range(per_class):
                Image.fromarray(image(rng)).save(folder / f"{cls}_{index}.JPEG")
    return root


@pytest.fixture
def datasets_info(tmp_path, monkeypatch):
    """Point RUPQ_DATASETS_INFO at a fresh file; returns a function that writes key: path entries."""
    info = tmp_path / "datasets_info.yaml"
    info.write_text("")
    monkeypatch.setenv("RUPQ_DATASETS_INFO", str(info))

    def set_paths(**paths):
        info.write_text("".join(f"{key}: {value}\n" for key, value in paths.items()))
        return info

    return set_paths


def run_cli(*args, env=None, cwd=REPO, timeout=600, script=REPO / "rupq" / "main.py") -> subprocess.CompletedProcess:
    """Run ``python rupq/main.py ARGS`` (or another ``script``) as a user would, from the repository root."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONPATH", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


# Tiny models on a shared 2-core machine: one intra-op thread per process. Two threads per
# process next to DataLoader workers and other jobs make each step up to 100× slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run_main(*args) -> subprocess.CompletedProcess:
    """``rupq.main.main(ARGS)`` in this process: the command line's own argument parsing, error
    printing and exit status, without the ~3 s of a fresh interpreter. Anything but SystemExit
    (an exception main lets escape) fails the calling test with its traceback."""
    from rupq.main import main

    stdout, stderr = io.StringIO(), io.StringIO()
    code, threads = 0, torch.get_num_threads()
    torch.set_num_threads(1)  # as ONE_THREAD does for subprocesses
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main([str(arg) for arg in args])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        finally:
            torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["rupq", *map(str, args)], code, stdout.getvalue(), stderr.getvalue())


def run_export(*args) -> subprocess.CompletedProcess:
    """``rupq export ARGS`` in this process (its own parsing, printing and exit status)."""
    from rupq.export import main as export_main

    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            export_main([str(arg) for arg in args])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


#: A training loop over ``*dataset`` (cross-entropy, top-1 accuracy) and the head of the ``!Task``
#: that runs it: the common part of the tests' classification configs, which go on with the
#: Task's other arguments. No braces, so it joins templates filled in with ``str.format``.
CLASSIFICATION_LOOP_AND_TASK = """training_loop: &training_loop !TrainingLoop
  dataset: *dataset
  loss: !CrossEntropyLoss
  train_metrics:
    accuracy: !Accuracy
  val_metrics:
    accuracy: !Accuracy
task: !Task
  training_loop: *training_loop
"""
FASHION_FP_CONFIG = """
dataset: &dataset !FashionMNISTDataloader
  batch_size: 16
  root: {root}
optimizers: &optimizers
  weight_optimizer:
    name: SGD
    params: {{lr: 0.05, momentum: 0.9}}
    scheduler:
      name: CosineAnnealingLR
      params: {{T_max: 8}}
""" + CLASSIFICATION_LOOP_AND_TASK + """  epochs: {epochs}
  optimizers: *optimizers
  model_saver: {{monitor: val_accuracy, mode: max}}
{model}"""
SMALL_MODEL = """  model_arch: small_resnet
  model_kwargs: {widths: [4, 8], blocks: [1, 1]}
"""


def fashion_config(path: Path, root: Path, epochs: int = 1, with_model: bool = True) -> Path:
    """A tiny full-precision Fashion-MNIST config; without the model it needs --load."""
    return write_config(path, FASHION_FP_CONFIG.format(root=root, epochs=epochs, model=SMALL_MODEL if with_model else ""))
