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
    only = gpu_check("--only", "tests,benchmark")
    assert (only.returncode, only.stderr.strip()) == (2, "gpu_check: --only 'benchmark': expected tests, bench or parallel")


def commands(stdout: str) -> dict:
    """``{"DataParallel": command, …}`` from a dry run's lines ``NAME: COMMAND``."""
    return dict(line.split(": ", 1) for line in stdout.strip().splitlines()[1:])


def test_only_runs_the_parts_it_names(tmp_path):
    result = gpu_check("--dry-run", "--gpus", "1", "--only", "parallel", "--workdir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(commands(result.stdout)) == ["DataParallel", "DDP"]
    result = gpu_check("--dry-run", "--gpus", "1", "--only", "tests,bench", "--workdir", tmp_path)
    assert list(commands(result.stdout)) == ["CUDA formula", "benchmark"]


def test_dry_run_prints_every_part_and_its_config_trains(tmp_path):
    result = gpu_check("--dry-run", "--gpus", "2", "--steps", "2", "--batch_per_gpu", "4", "--workdir", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == (f"gpu_check: 2 GPU(s) (0,1), global batch 8, 2 steps, work folder {tmp_path}, "
                        "parts tests,bench,parallel")
    printed = commands(result.stdout)
    assert list(printed) == ["CUDA formula", "benchmark", "DataParallel", "DDP"]
    config = tmp_path / "config.yaml"
    assert printed["DataParallel"].endswith(f"rupq/main.py --config {config} --logdir {tmp_path}/data_parallel --gpu 0,1")
    assert printed["DDP"].endswith(
        f"-m torch.distributed.run --standalone --nproc_per_node 2 rupq/main.py --config {config} "
        f"--logdir {tmp_path}/distributed --gpu 0,1"
    )
    task = load_config(config)["task"]
    assert task.training_loop.dataset.batch_size == 8 and task.model_arch == "small_resnet" and task.epochs == 1
    assert task.model_parser is not None
    # The DataParallel command as printed (on the CPU it says so and trains on one device).
    trained = run_cli(*printed["DataParallel"].split(" rupq/main.py ", 1)[1].split())
    assert trained.returncode == 0, trained.stderr
    assert "--gpu 0,1: CUDA is not available, running on the CPU" in trained.stdout
    assert (tmp_path / "data_parallel/version_0/results.json").is_file()
