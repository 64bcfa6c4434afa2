"""bench/reproduce.py: the derived configs keep the paper's recipes, and a tiny report runs end to end."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from rupq.config import config_tree, load_config

SCRIPT = REPO / "bench" / "reproduce.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproduce = load_script()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(derived):
    return load_config(derived.source, derived.overrides)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_classification_configs_keep_the_recipe_and_replace_data_schedule_and_seed(tiny_fashion_mnist, bits):
    budget = reproduce.BUDGETS["tiny"]
    iterations = 1  # the fixture's 64 training images fit one batch of 64
    derived = reproduce.classification_config("rupq", bits, budget, 7, str(tiny_fashion_mnist))
    assert derived.source.name == f"w{bits}a{bits}_rupq.yaml"
    task = load(derived)["task"]
    assert task.seed == 7 and task.epochs == budget.qat_epochs
    assert type(task.training_loop.dataset).__name__ == "FashionMNISTDataloader"
    assert task.callbacks == []  # !QuantImagesCallback dropped
    optimizers = task.optimizers
    assert optimizers["quant_weight_optimizer"]["name"] == "Adam"
    assert optimizers["quant_weight_optimizer"]["params"]["lr"] == pytest.approx(1e-5)
    assert optimizers["quant_input_optimizer"]["params"]["lr"] == pytest.approx(1e-3)
    assert optimizers["weight_optimizer"]["params"]["lr"] == pytest.approx(0.01)
    for optimizer in optimizers.values():
        assert optimizer["scheduler"]["params"]["T_max"] == budget.qat_epochs * iterations
    text = derived.effective_text()
    assert "!Standardization" in text and f"default: {bits}" in text and "conv1: 8" in text
    assert load_config_text(text)["task"].seed == 7  # the config.yaml a run writes reads back the same

    lsq = reproduce.classification_config("lsqplus", bits, budget, 7, str(tiny_fashion_mnist))
    lsq_text = lsq.effective_text()
    assert "!Standardization" not in lsq_text and "!MeanStdInitializer" in lsq_text
    assert set(load(lsq)["task"].optimizers) == {"weight_optimizer", "quant_optimizer"}
    assert load(lsq)["task"].optimizers["quant_optimizer"]["params"] == {"lr": 0.01, "momentum": 0.9}


def load_config_text(text):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(text)
        return load_config(path)


def test_fp_config_trains_small_resnet_with_the_imagenet_fp_recipe():
    budget = reproduce.BUDGETS["cpu"]
    task = load(reproduce.classification_config("fp", None, budget, 3, None))["task"]
    assert task.model_arch == "small_resnet" and task.seed == 3 and task.epochs == budget.fp_epochs
    assert task.optimizers["weight_optimizer"]["params"]["lr"] == pytest.approx(0.1)
    steps = budget.fp_epochs * -(-budget.train_subset // budget.batch_size)
    assert task.optimizers["weight_optimizer"]["scheduler"]["params"]["T_max"] == steps
    assert task.training_loop.dataset.train_subset == budget.train_subset


def test_sr_configs_renumber_the_per_block_exceptions_for_a_smaller_edsr(tmp_path):
    budget = reproduce.BUDGETS["cpu"]
    blocks = budget.sr_model_kwargs["num_blocks"]
    derived = reproduce.sr_config("rupq", 2, budget, 0, tmp_path / "sr_demo")
    text = derived.effective_text()
    written = tmp_path / "config.yaml"
    written.write_text(text)
    parser = config_tree(written)["model_parser"]
    half_wave = parser["half_wave"]["exceptions"]
    kept = sorted(int(n) for layer in half_wave for n in re.findall(r"body\.(\d+)\.conv_block", layer))
    assert kept == list(range(blocks))
    assert half_wave[f"body.{blocks}"] is False and "body.16" not in half_wave
    assert parser["input_bit_width"] == {"default": 2, "exceptions": {"head.0": 8, "tail.1": 8}}
    task = load(derived)["task"]
    assert task.epochs == budget.sr_qat_epochs
    (benchmark,) = task.callbacks  # !QuantImagesCallback dropped, the Set14 benchmark kept and pointed at the demo
    assert type(benchmark).__name__ == "BenchmarkSuperresolutionCallback"
    assert str(tmp_path / "sr_demo" / "Set14") in text
    fp = load(reproduce.sr_config("fp", None, budget, 0, tmp_path / "sr_demo"))
    assert fp["task"].model_kwargs == budget.sr_model_kwargs
    assert fp["task"].optimizers["weight_optimizer"]["params"]["lr"] == budget.sr_fp_lr


def test_seed_commands_cover_every_example_config():
    commands = "\n".join(reproduce.seed_commands())
    for config in sorted((REPO / "rupq" / "examples" / "quantized").rglob("*.yaml")):
        line = next(line for line in commands.splitlines() if str(config.relative_to(REPO)) in line)
        assert "--load " in line and "--gpu=0,1" in line
    for config in sorted((REPO / "rupq" / "examples" / "float").rglob("*.yaml")):
        assert f"--config {config.relative_to(REPO)} " in commands


def test_tiny_report_end_to_end(tmp_path, tiny_fashion_mnist):
    """FP, then LSQ+ and RUPQ at three bit widths from its model.ckpt, through the real CLI."""
    out, logdir = tmp_path / "docs", tmp_path / "runs"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    command = [sys.executable, str(SCRIPT), "--budget", "tiny", "--seeds", "5", "--tasks", "classification",
               "--fashion-root", str(tiny_fashion_mnist), "--out", str(out), "--logdir", str(logdir), "--quiet"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]

    report = (out / "RESULTS.md").read_text()
    rows = re.findall(r"^\| (FP|LSQ\+|RUPQ) \| (\d+)/\d+ \| ([\d.]+) \|", report, flags=re.M)
    assert sorted((method, bits) for method, bits, _ in rows) == sorted(
        [("FP", "32")] + [(m, str(b)) for m in ("LSQ+", "RUPQ") for b in (2, 3, 4)]
    )
    for _, _, accuracy in rows:
        assert 0.0 <= float(accuracy) <= 100.0
    assert "CPU:" in report and "torch " in report and "seeds: 5 " in report
    plot = out / "reproduction_accuracy.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({plot.name})" in report
    # Every quantized run started from the seed's FP model.
    fp_checkpoint = next((logdir / "fashion_mnist" / "seed_5" / "fp").glob("version_*/model.ckpt"))
    assert result.stdout.count(f"--load {fp_checkpoint}") == 6

    # Rerunning reuses the finished runs instead of training again.
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("reusing") == 7


def fake_rows(seeds, fp=90.0):
    """Rows as the runs produce them, with made-up values: only the report's layout is under test."""
    rows = []
    for seed in seeds:
        rows.append(dict(task="classification", method="fp", bits=32, seed=seed, value=fp + seed,
                         time_s=60.0, wall_s=70.0, cpu_s=120.0, run="x"))
        for bits in (2, 3, 4):
            for offset, method in ((-3.0, "lsqplus"), (-2.0, "rupq")):
                rows.append(dict(task="classification", method=method, bits=bits, seed=seed,
                                 value=fp + seed + offset - (4 - bits), time_s=90.0, wall_s=95.0, cpu_s=180.0, run="x"))
    return rows


def test_report_gives_mean_and_spread_over_seeds_and_the_published_numbers(tmp_path):
    args = reproduce.argparse.Namespace(command_line="python bench/reproduce.py --seeds 0 2", budget="cpu",
                                        seeds=[0, 2], sr_seeds=[0], tasks=["classification"],
                                        logdir=Path("runs/reproduce/cpu"))
    report_path = reproduce.write_report(fake_rows([0, 2]), args, reproduce.BUDGETS["cpu"], 0.0, [1.0, 2.0], tmp_path)
    report = report_path.read_text()
    # FP values 90 and 92: mean 91, sample standard deviation sqrt(2)
    assert "| FP | 32/32 | 91.00 ± 1.41 |" in report
    assert "| RUPQ | 2/2 | 87.00 ± 1.41 | -4.00 |" in report
    assert "| LSQ+ | 4/4 | 88.00 ± 1.41 | -3.00 |" in report
    assert "- w2a2: +1.00, +1.00 → mean +1.00" in report
    for value in ("69.76", "71.88", "67.6", "70.2", "71.1"):
        assert f"| {value} |" in report
    assert "published, not measured here" in report
    assert (tmp_path / "reproduction_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_report_of_unfinished_runs_says_so(tmp_path):
    rows = [row for row in fake_rows([0, 2]) if not (row["seed"] == 2 and row["method"] != "fp")]
    rows = [row for row in rows if not (row["method"] == "rupq" and row["bits"] == 2)]
    args = reproduce.argparse.Namespace(command_line="python bench/reproduce.py --seeds 0 2 --report-only",
                                        budget="cpu", seeds=[0, 2], sr_seeds=[0], tasks=["classification"],
                                        logdir=Path("runs/reproduce/cpu"))
    report = reproduce.write_report(rows, args, reproduce.BUDGETS["cpu"], 0.0, [1.0, 1.0], tmp_path).read_text()
    assert "Incomplete: 7 of the 14 training runs" in report
    assert "| RUPQ | 2/2 | not finished | – |" in report
    assert "| LSQ+ | 2/2 | 85.00 | -5.00 |" in report  # seed 0 only, against seed 0's FP
    assert "- w2a2: not finished → mean –" in report
    assert (tmp_path / "reproduction_accuracy.png").is_file()
