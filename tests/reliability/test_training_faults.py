"""Training faults lose nothing: a non-finite loss stops the run with the last good checkpoint
kept; Ctrl-C and SIGTERM write a resumable checkpoint; resuming from the middle of an epoch ends
exactly as a run that was never interrupted, also with DataLoader workers; a checkpoint write
killed at any point leaves the previous checkpoint loadable.

No test bets on time: signals are sent when the run has reached a point it shows (a worker
opened the image the test holds back), kills when the writer has reached a point it reports."""

import os
import re
import select
import signal
import subprocess
import sys
import time

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASSIFICATION_LOOP_AND_TASK, REPO, fashion_config, write_config
from reliability_support import ONE_THREAD, one_error_line, run_main
from rupq.dataloaders.base import EpochSampler
from rupq.tools.utils.checkpoint import TRAINING_FORMAT, load_checkpoint, save_atomic
from training_state import assert_identical, results, tensorboard_scalars

# One pytest-xdist worker runs this module: its tests share a trained model (a module fixture).
pytestmark = pytest.mark.xdist_group(__name__)

# ---- non-finite loss ------------------------------------------------------------------------


def exploding_config(tmp_path, tiny_fashion_mnist, milestone: int):
    """2 epochs of 4 iterations; from iteration ``milestone + 1`` the learning rate is 1e28."""
    text = fashion_config(tmp_path / "base.yaml", tiny_fashion_mnist, epochs=2).read_text()
    text = text.replace("      name: CosineAnnealingLR\n      params: {T_max: 8}",
                        f"      name: MultiStepLR\n      params: {{milestones: [{milestone}], gamma: 1.0e+30}}")
    return write_config(tmp_path / "explode.yaml", text)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_fashion_mnist):
    config = exploding_config(tmp_path, tiny_fashion_mnist, milestone=4)  # epoch 1 trains normally
    version = tmp_path / "logs" / "version_0"
    line = one_error_line(run_main("--config", config, "--logdir", tmp_path / "logs"))
    assert re.fullmatch(
        r"error: loss is (nan|inf) at epoch 2, iteration [2-4]: stopping; "
        + re.escape(f"the last good checkpoint is {version / 'checkpoints' / 'last.ckpt'}"), line), line
    checkpoint = load_checkpoint(version / "checkpoints" / "last.ckpt", TRAINING_FORMAT)
    assert (checkpoint["epoch"], checkpoint["batch"]) == (1, 0)  # written at the end of epoch 1, not after
    for name, value in checkpoint["model"]["state_dict"].items():
        assert torch.isfinite(value.float()).all(), name
    model = load_checkpoint(version / "model.ckpt")["state_dict"]
    assert all(torch.isfinite(value.float()).all() for value in model.values())
    assert not (version / "results.json").exists()


def test_non_finite_loss_before_any_checkpoint(tmp_path, tiny_fashion_mnist):
    config = exploding_config(tmp_path, tiny_fashion_mnist, milestone=1)
    line = one_error_line(run_main("--config", config, "--logdir", tmp_path / "logs"))
    assert re.fullmatch(r"error: loss is (nan|inf) at epoch 1, iteration [2-4]: stopping; "
                        r"no checkpoint had been written yet", line), line
    assert not (tmp_path / "logs/version_0/checkpoints/last.ckpt").exists()
    assert not (tmp_path / "logs/version_0/model.ckpt").exists()


# ---- interrupting and resuming ----------------------------------------------------------------

WORKERS_CONFIG = """
dataset: &dataset !ImageNet2012Dataloader
  batch_size: 2
  num_workers: 2
  image_size: 24
  root: {root}
optimizers: &optimizers
  weight_optimizer:
    name: SGD
    params: {{lr: 0.05, momentum: 0.9}}
    scheduler:
      name: CosineAnnealingLR
      params: {{T_max: 32}}
""" + CLASSIFICATION_LOOP_AND_TASK + """  epochs: 2
  optimizers: *optimizers
  model_saver: {{monitor: val_accuracy, mode: max}}
  model_arch: small_resnet
  model_kwargs: {{in_channels: 3, num_classes: 2, widths: [4, 8], blocks: [1, 1]}}
"""
TRAIN_IMAGES, BATCH = 32, 2
# The run is made to wait, in the middle of its first epoch, for the image that the 8th of its 16
# batches holds (its DataLoader worker reads the file from a pipe the test writes), and the
# signal comes while it waits: the run cannot have finished before it.
BLOCKING_BATCH = 7


def write_workers_run(folder):
    """ImageNet-layout data (2 classes of 16 training and 2 validation JPEGs, read one by one by 2
    DataLoader worker processes with random crops and flips) and a 2-epoch config of 16
    iterations per epoch."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", TRAIN_IMAGES // 2), ("val", 2)):
        for cls in ("n01440764", "n01443537"):
            (folder / "imagenet" / split / cls).mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 255, size=(30, 36, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / "imagenet" / split / cls / f"{cls}_{index:02d}.JPEG")
    return write_config(folder / "workers.yaml", WORKERS_CONFIG.format(root=folder / "imagenet"))


def blocking_image(folder) -> Path:
    """The training image that batch ``BLOCKING_BATCH`` of the first epoch starts with (the
    ImageFolder order: classes, then files, sorted; the epoch's order: EpochSampler's)."""
    images = sorted((folder / "imagenet" / "train").glob("*/*.JPEG"))
    return images[EpochSampler(len(images), seed=0, epoch=0).indices()[BLOCKING_BATCH * BATCH]]


def interrupt_while_it_waits_for_an_image(config, logdir, image: Path, send) -> subprocess.CompletedProcess:
    """Run the CLI with ``image`` replaced by a named pipe; when a DataLoader worker opens it (the
    run reached that image of its first epoch), ``send(process)`` the signal, then feed the image
    through the pipe and wait for the run to end. ``image`` is a plain file again afterwards."""
    contents = image.read_bytes()
    image.unlink()
    os.mkfifo(image)
    env = dict(os.environ, **ONE_THREAD)
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(
        [sys.executable, str(REPO / "rupq" / "main.py"), "--config", str(config), "--logdir", str(logdir)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        pipe = None
        while pipe is None:  # opening the write end fails until a reader has the pipe open
            try:
                pipe = os.open(image, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                assert process.poll() is None, process.communicate()[1].decode()[-3000:]
                time.sleep(0.01)
        send(process)
        os.set_blocking(pipe, True)
        try:
            os.write(pipe, contents)
        except BrokenPipeError:  # the run stopped before it needed this image
            pass
        os.close(pipe)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        image.unlink()
        image.write_bytes(contents)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout.decode(), stderr.decode())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same run from start to end (once for the module)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    result = run_main("--config", write_workers_run(folder), "--logdir", folder / "straight")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "straight" / "version_0"


@pytest.mark.parametrize("how", ["SIGTERM to the main process", "Ctrl-C to the process group"])
def test_interrupted_mid_epoch_then_resumed_equals_the_uninterrupted_run(tmp_path, uninterrupted, how):
    if how.startswith("SIGTERM"):
        send = lambda process: process.send_signal(signal.SIGTERM)  # noqa: E731  (a scheduler's notice)
    else:
        send = lambda process: os.killpg(process.pid, signal.SIGINT)  # noqa: E731  (the terminal's Ctrl-C)
    config = write_workers_run(tmp_path)
    stopped = interrupt_while_it_waits_for_an_image(config, tmp_path / "stopped", blocking_image(tmp_path), send)
    checkpoint_path = tmp_path / "stopped" / "version_0" / "checkpoints" / "last.ckpt"
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert f"training interrupted; resume with --checkpoint_path {checkpoint_path}" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "exited unexpectedly" not in stopped.stderr
    name = "SIGTERM" if how.startswith("SIGTERM") else "SIGINT"
    assert stopped.stdout.count(f"{name} received: finishing this iteration") == 1  # workers stay quiet
    saved = load_checkpoint(checkpoint_path, TRAINING_FORMAT)
    # In the first epoch, at the latest right after the batch the run waited for.
    assert saved["epoch"] == 0 and 1 <= saved["batch"] <= BLOCKING_BATCH + 1, (saved["epoch"], saved["batch"])
    assert not (tmp_path / "stopped" / "version_0" / "results.json").exists()

    resumed = run_main("--config", config, "--logdir", tmp_path / "resumed", "--checkpoint_path", checkpoint_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at epoch 1, iteration {saved['batch'] + 1}" in resumed.stdout
    actual = tmp_path / "resumed" / "version_0"
    assert_identical(final_state(uninterrupted), final_state(actual))
    assert_identical(results(uninterrupted), results(actual))
    assert_identical(tensorboard_scalars(uninterrupted), tensorboard_scalars(tmp_path / "stopped/version_0", actual))


def final_state(version_dir):
    return load_checkpoint(version_dir / "checkpoints" / "last.ckpt", TRAINING_FORMAT)


# ---- killed while writing a checkpoint --------------------------------------------------------

# Where in save_atomic the writer is killed, in the order they happen: after the temporary file
# is created and before a byte is written, half way through the data, before the data is
# flushed to disk, before the rename over the old checkpoint, and after it.
KILL_POINTS = ("before writing", "half written", "before fsync", "before rename", "after rename")


def write_until(point: str, path, step: int, reached) -> None:
    """The child process: write checkpoint ``step`` to ``path`` with ``save_atomic``; at ``point``
    tell the parent (one byte on the pipe ``reached``) and wait there to be killed."""
    import io

    def stop_here():
        os.write(reached, b"x")
        while True:
            signal.pause()

    real_save, real_fsync, real_replace = torch.save, os.fsync, os.replace

    def save(obj, stream):
        if point == "before writing":
            stop_here()
        if point == "half written":
            data = io.BytesIO()
            real_save(obj, data)
            stream.write(data.getvalue()[: len(data.getvalue()) // 2])
            stream.flush()
            stop_here()
        real_save(obj, stream)

    def fsync(fd):
        if point == "before fsync":
            stop_here()
        real_fsync(fd)

    def replace(source, target):
        if point == "before rename":
            stop_here()
        real_replace(source, target)
        if point == "after rename":
            stop_here()

    try:
        torch.set_num_threads(1)  # no OpenMP pool inherited across fork
        torch.save, os.fsync, os.replace = save, fsync, replace
        save_atomic({"format": TRAINING_FORMAT, "step": step, "weights": torch.full((1_000_000,), float(step))}, path)
    finally:
        os._exit(1)  # never reached when the kill came at the chosen point


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_during_a_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path, point):
    path = tmp_path / "checkpoints" / "last.ckpt"
    save_atomic({"format": TRAINING_FORMAT, "step": 0, "weights": torch.full((1_000_000,), 0.0)}, path)
    reached, tell = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reached)
        write_until(point, path, 1, tell)
    os.close(tell)
    try:
        assert select.select([reached], [], [], 120)[0], f"the writer never got to {point!r}"
        assert os.read(reached, 1) == b"x", f"the writer ended before {point!r}"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(reached)
    renamed = KILL_POINTS.index(point) > KILL_POINTS.index("before rename")
    saved = load_checkpoint(path, TRAINING_FORMAT)
    assert saved["step"] == (1 if renamed else 0)  # the new checkpoint only once renamed over the old
    assert torch.equal(saved["weights"], torch.full((1_000_000,), float(saved["step"])))  # not torn
    leftovers = [p.name for p in path.parent.iterdir() if p.suffix == ".tmp"]
    assert len(leftovers) == (0 if renamed else 1), leftovers
    # The next write removes what the killed writer left behind.
    save_atomic({"format": TRAINING_FORMAT, "step": 2, "weights": torch.zeros(1)}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
