"""Training faults lose nothing: a non-finite loss stops the run with the last good checkpoint
kept; Ctrl-C and SIGTERM write a resumable checkpoint; resuming from the middle of an epoch ends
with the same weights, bit for bit, as a run that was never interrupted; a checkpoint write killed
at any moment leaves the previous checkpoint loadable."""

import os
import random
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, fashion_config, run_cli, write_config, write_tiny_fashion_mnist
from reliability_support import ONE_THREAD, one_error_line, run_main
from rupq.tools.utils.checkpoint import TRAINING_FORMAT, load_checkpoint, save_atomic

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


def worker_config(folder, fashion_root):
    """2 epochs of 32 iterations (batch 2), augmentation on, 2 DataLoader worker processes."""
    text = fashion_config(folder / "base.yaml", fashion_root, epochs=2).read_text()
    text = text.replace("  batch_size: 16\n", "  batch_size: 2\n  num_workers: 2\n")
    return write_config(folder / "workers.yaml", text)


def interrupt_when_training(config, logdir, send) -> tuple[subprocess.CompletedProcess, str]:
    """Start the CLI, wait for the first training progress bar, call ``send(process)``, wait for it."""
    env = dict(os.environ, **ONE_THREAD)
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(
        [sys.executable, str(REPO / "rupq" / "main.py"), "--config", str(config), "--logdir", str(logdir)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    stderr, deadline = b"", time.monotonic() + 300
    try:
        while b"epoch 1/2 train" not in stderr:  # tqdm draws the bar when the loop starts
            assert time.monotonic() < deadline and process.poll() is None, stderr.decode()
            if select.select([process.stderr], [], [], 1.0)[0]:
                stderr += os.read(process.stderr.fileno(), 65536)
        send(process)
        stdout, rest = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout.decode(), (stderr + rest).decode())


def final_state(version_dir):
    return load_checkpoint(version_dir / "checkpoints" / "last.ckpt", TRAINING_FORMAT)


def assert_same_training_state(expected, actual):
    assert expected["model"]["state_dict"].keys() == actual["model"]["state_dict"].keys()
    for name, value in expected["model"]["state_dict"].items():
        assert torch.equal(value, actual["model"]["state_dict"][name]), name
    expected_moments = expected["optimizers"]["weight_optimizer"]["state"]
    actual_moments = actual["optimizers"]["weight_optimizer"]["state"]
    for index, state in expected_moments.items():
        assert torch.equal(state["momentum_buffer"], actual_moments[index]["momentum_buffer"]), index
    assert (expected["epoch"], expected["batch"], expected["global_step"]) == (
        actual["epoch"], actual["batch"], actual["global_step"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same config run from start to end (once for the module)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    config = worker_config(folder, write_tiny_fashion_mnist(folder / "fashion"))
    result = run_cli("--config", config, "--logdir", folder / "straight", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return config, final_state(folder / "straight" / "version_0")


@pytest.mark.parametrize("how", ["SIGTERM to the main process", "Ctrl-C to the process group"])
def test_interrupted_mid_epoch_then_resumed_equals_the_uninterrupted_run(tmp_path, uninterrupted, how):
    config, expected = uninterrupted
    if how.startswith("SIGTERM"):
        send = lambda process: process.send_signal(signal.SIGTERM)  # noqa: E731  (a scheduler's notice)
    else:
        send = lambda process: os.killpg(process.pid, signal.SIGINT)  # noqa: E731  (the terminal's Ctrl-C)
    stopped = interrupt_when_training(config, tmp_path / "stopped", send)
    checkpoint_path = tmp_path / "stopped" / "version_0" / "checkpoints" / "last.ckpt"
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert f"training interrupted; resume with --checkpoint_path {checkpoint_path}" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "exited unexpectedly" not in stopped.stderr
    name = "SIGTERM" if how.startswith("SIGTERM") else "SIGINT"
    assert stopped.stdout.count(f"{name} received: finishing this iteration") == 1  # workers stay quiet
    saved = load_checkpoint(checkpoint_path, TRAINING_FORMAT)
    assert 0 < saved["batch"] < 32, (saved["epoch"], saved["batch"])  # in the middle of an epoch
    assert not (tmp_path / "stopped" / "version_0" / "results.json").exists()

    resumed = run_cli("--config", config, "--logdir", tmp_path / "resumed", "--checkpoint_path", checkpoint_path,
                      env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at epoch {saved['epoch'] + 1}, iteration {saved['batch'] + 1}" in resumed.stdout
    assert_same_training_state(expected, final_state(tmp_path / "resumed" / "version_0"))


# ---- killed while writing a checkpoint --------------------------------------------------------


def write_checkpoints_forever(path, first_step: int) -> None:
    """The child process: write checkpoints ``first_step``, ``first_step + 1`` … until killed."""
    try:
        torch.set_num_threads(1)  # no OpenMP pool inherited across fork
        step = first_step
        while True:
            # 16 MB, so that most of the time goes into writing it.
            save_atomic({"format": TRAINING_FORMAT, "step": step, "weights": torch.full((4_000_000,), float(step))},
                        path)
            step += 1
    finally:
        os._exit(0)


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    rng = random.Random(0)
    last_step, kills, mid_write = -1, 25, 0
    for kill in range(kills):
        pid = os.fork()
        if pid == 0:
            write_checkpoints_forever(path, last_step + 1)
        deadline = time.monotonic() + 60
        # Let the child finish at least one write of its own, then kill it at a random moment:
        # every other time as soon as its next temporary file appears (in the middle of a write).
        while not (path.is_file() and load_checkpoint(path)["step"] > last_step):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        if kill % 2:
            while not any(p.suffix == ".tmp" for p in path.parent.iterdir()) and time.monotonic() < deadline:
                pass
            time.sleep(rng.uniform(0, 0.01))
        else:
            time.sleep(rng.uniform(0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        leftovers = [p for p in path.parent.iterdir() if p.suffix == ".tmp"]
        mid_write += bool(leftovers)
        for leftover in leftovers:  # what the next run's writer would never read
            leftover.unlink()
        saved = load_checkpoint(path, TRAINING_FORMAT)
        assert saved["step"] > last_step
        assert torch.equal(saved["weights"], torch.full((4_000_000,), float(saved["step"])))  # not torn
        last_step = saved["step"]
    assert mid_write >= kills // 4, f"only {mid_write} of {kills} kills hit a write in progress"
