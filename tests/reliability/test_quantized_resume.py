"""Resuming a quantized run is exact: an LSQ+ and a RUPQ run stopped by SIGTERM in the middle of
an epoch and resumed with ``--checkpoint_path`` end exactly as the same run never interrupted —
weights, steps, offsets, σ EMAs, initialisation flags, BatchNorm statistics (re-estimated at the
end in the RUPQ recipe), every optimizer's and scheduler's state, the best model and every logged
value.

The recipes are the shipped quickstart ones (``rupq/examples/quickstart/w4a4_*.yaml``), with only
the data, the model size, the epochs and the schedule length replaced. All runs go through the
command line's ``main`` in this process (one thread, so runs are bitwise repeatable).
"""

import os
import signal

import pytest

from conftest import REPO, edit_shipped, run_main, write_config, write_tiny_fashion_mnist
from rupq.tools.training.loops import TrainingLoop
from rupq.tools.utils.checkpoint import TRAINING_FORMAT, load_checkpoint
from training_state import assert_identical, results, tensorboard_scalars

QUICKSTART = REPO / "rupq" / "examples" / "quickstart"
ITERATIONS_PER_EPOCH = 8  # 64 training images, batch 8
EPOCHS = 2
# SIGTERM arrives during this iteration (1-based, counted from the start of the run): the third
# of the first epoch, so the resumed run finishes a partly trained epoch, then trains another.
SIGTERM_AT_ITERATION = 3


def quantized_config(folder, recipe: str, fashion_root):
    """The shipped quickstart recipe ``w4a4_{recipe}.yaml`` on tiny data for ``EPOCHS`` epochs."""
    text = (QUICKSTART / f"w4a4_{recipe}.yaml").read_text()
    text = edit_shipped(text, "  batch_size: 128\n", f"  batch_size: 8\n  root: {fashion_root}\n")
    text = edit_shipped(text, "T_max: 469", f"T_max: {ITERATIONS_PER_EPOCH * EPOCHS}")
    text = edit_shipped(text, "  epochs: 1\n", f"  epochs: {EPOCHS}\n"
                        "  model_arch: small_resnet\n  model_kwargs: {widths: [4, 8], blocks: [1, 1]}\n")
    if recipe == "rupq":  # BatchNorm re-estimation before the last validation (the MobileNet-v2 recipes')
        text += "  callbacks:\n    - !BatchNormReestimationCallback {num_batches: 3}\n"
    return write_config(folder / f"{recipe}.yaml", text)


def sigterm_during_iteration(monkeypatch, iteration: int) -> None:
    """Deliver SIGTERM to this process while training iteration ``iteration`` runs, as a job
    scheduler's notice would arrive: the run must finish that iteration and write a checkpoint."""
    original = TrainingLoop.training_step
    calls = []

    def training_step(self, model, batch):
        calls.append(1)
        if len(calls) == iteration:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, batch)

    monkeypatch.setattr(TrainingLoop, "training_step", training_step)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return write_tiny_fashion_mnist(tmp_path_factory.mktemp("data") / "fashion")


@pytest.mark.parametrize("recipe", ["lsqplus", "rupq"])
def test_quantized_run_resumed_mid_epoch_equals_the_uninterrupted_run(tmp_path, fashion, monkeypatch, recipe):
    config = quantized_config(tmp_path, recipe, fashion)
    straight = run_main("--config", config, "--logdir", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    with monkeypatch.context() as patch:
        sigterm_during_iteration(patch, SIGTERM_AT_ITERATION)
        stopped = run_main("--config", config, "--logdir", tmp_path / "stopped")
    checkpoint = tmp_path / "stopped/version_0/checkpoints/last.ckpt"
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    saved = load_checkpoint(checkpoint, TRAINING_FORMAT)
    assert (saved["epoch"], saved["batch"]) == (0, SIGTERM_AT_ITERATION)  # in the middle of the first epoch

    resumed = run_main("--config", config, "--logdir", tmp_path / "resumed", "--checkpoint_path", checkpoint)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at epoch 1, iteration {SIGTERM_AT_ITERATION + 1}" in resumed.stdout
    assert "initial step" not in resumed.stdout  # the quantizers were initialised once, by the first run

    expected_dir, actual_dir = tmp_path / "straight/version_0", tmp_path / "resumed/version_0"
    expected = load_checkpoint(expected_dir / "checkpoints/last.ckpt", TRAINING_FORMAT)
    actual = load_checkpoint(actual_dir / "checkpoints/last.ckpt", TRAINING_FORMAT)
    # The model (weights, steps, offsets, σ EMAs, flags, BatchNorm statistics), every optimizer
    # (SGD momenta, Adam moments and step counts), every scheduler, the counters, the RNG
    # states, the callbacks' states and the logged values.
    assert_identical(expected, actual)
    assert_identical(load_checkpoint(expected_dir / "model.ckpt"), load_checkpoint(actual_dir / "model.ckpt"))
    assert_identical(results(expected_dir), results(actual_dir))
    # What TensorBoard shows of the interrupted and the resumed run together (the resumed one
    # logs the end of the interrupted epoch and the next one): the uninterrupted run's scalars.
    assert_identical(tensorboard_scalars(expected_dir), tensorboard_scalars(tmp_path / "stopped/version_0", actual_dir))
