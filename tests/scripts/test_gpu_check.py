"""scripts/gpu_check.sh without GPUs: it refuses cleanly, and its dry run writes a config that trains."""

import os
import subprocess

import pytest
import torch

from conftest import REPO, run_cli
from rupq.config import load_config

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def gpu_check(*args) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPUs")
def test_refuses_without_gpus():
    result = gpu_check("--steps", "2")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "gpu_check: no CUDA GPU is visible (torch.cuda.device_count() is 0): nothing to measure; "
        "run it on a machine with GPUs"
    )


def test_bad_arguments_are_one_line_errors():
    assert gpu_check("--steps", "0").stderr.strip() == "gpu_check: '0' is not a positive integer"
    assert gpu_check("--gpus", "2").stderr.strip() == "gpu_check: --gpus only goes with --dry-run"
    assert gpu_check("--fast").returncode == 2


def test_dry_run_prints_both_modes_and_its_config_trains(tmp_path):
    result = gpu_check("--dry-run", "--gpus", "2", "--steps", "2", "--batch_per_gpu", "4", "--workdir", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"gpu_check: 2 GPU(s) (0,1), global batch 8, 2 steps, work folder {tmp_path}"
    config = tmp_path / "config.yaml"
    assert lines[1].endswith(f"rupq/main.py --config {config} --logdir {tmp_path}/data_parallel --gpu 0,1")
    assert lines[2].endswith(
        f"-m torch.distributed.run --standalone --nproc_per_node 2 rupq/main.py --config {config} "
        f"--logdir {tmp_path}/distributed --gpu 0,1"
    )
    task = load_config(config)["task"]
    assert task.training_loop.dataset.batch_size == 8 and task.model_arch == "small_resnet" and task.epochs == 1
    assert task.model_parser is not None
    # The DataParallel command as printed (on the CPU it says so and trains on one device).
    trained = run_cli(*lines[1].split(" rupq/main.py ", 1)[1].split())
    assert trained.returncode == 0, trained.stderr
    assert "--gpu 0,1: CUDA is not available, running on the CPU" in trained.stdout
    assert (tmp_path / "data_parallel/version_0/results.json").is_file()
