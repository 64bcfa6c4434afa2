"""bench/reproduce.py: the derived configs keep the paper's recipes, the ablations change one ingredient,
the scheduler respects the FP dependency, and a tiny report runs end to end through the real CLI."""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO
from rupq.config import load_config

# As when bench/reproduce.py runs as a script: bench/ on the path, its parts the package `reproduction`.
sys.path.insert(0, str(REPO / "bench"))
from reproduction import derive, report, runs  # noqa: E402
from reproduction.budgets import BUDGETS  # noqa: E402

SCRIPT = REPO / "bench" / "reproduce.py"


def load(derived):
    return load_config(derived.source, derived.overrides)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_small_resnet_configs_keep_the_resnet18_recipe_and_replace_data_schedule_and_seed(tiny_fashion_mnist, bits):
    size = BUDGETS["tiny"].models["small_resnet"]
    iterations = 1  # the fixture's 64 training images fit one batch of 64
    derived = derive.classification_config("small_resnet", "rupq", bits, size, 7, str(tiny_fashion_mnist))
    assert derived.source.name == f"w{bits}a{bits}_rupq.yaml" and derived.source.parent.name == "resnet18"
    task = load(derived)["task"]
    assert task.seed == 7 and task.epochs == size.qat_epochs
    assert task.training_loop.dataset.train_subset == size.qat_train_subset
    assert task.callbacks == []  # !QuantImagesCallback dropped
    optimizers = task.optimizers
    assert optimizers["quant_weight_optimizer"]["name"] == "Adam"
    assert optimizers["quant_weight_optimizer"]["params"]["lr"] == pytest.approx(1e-5)
    assert optimizers["quant_input_optimizer"]["params"]["lr"] == pytest.approx(1e-3)
    assert optimizers["weight_optimizer"]["params"]["lr"] == pytest.approx(0.01)
    for optimizer in optimizers.values():
        assert optimizer["scheduler"]["params"]["T_max"] == size.qat_epochs * iterations
    text = derived.effective_text()
    assert "!Standardization" in text and f"default: {bits}" in text and "conv1: 8" in text

    lsq = derive.classification_config("small_resnet", "lsqplus", bits, size, 7, str(tiny_fashion_mnist))
    assert "!Standardization" not in lsq.effective_text() and "!MeanStdInitializer" in lsq.effective_text()
    assert set(load(lsq)["task"].optimizers) == {"weight_optimizer", "quant_optimizer"}
    assert load(lsq)["task"].optimizers["quant_optimizer"]["params"] == {"lr": 0.01, "momentum": 0.9}


def test_fp_configs_train_the_small_models_on_all_images_with_the_imagenet_fp_recipes():
    budget = BUDGETS["cpu"].models
    task = load(derive.classification_config("small_resnet", "fp", None, budget["small_resnet"], 3, None))["task"]
    assert task.model_arch == "small_resnet" and task.seed == 3 and task.epochs == budget["small_resnet"].fp_epochs
    assert task.optimizers["weight_optimizer"]["params"]["lr"] == pytest.approx(0.1)
    steps = budget["small_resnet"].fp_epochs * -(-60000 // 128)
    assert task.optimizers["weight_optimizer"]["scheduler"]["params"]["T_max"] == steps
    assert task.training_loop.dataset.train_subset is None  # all 60 000 training images

    mobilenet = load(derive.classification_config("mobilenet_v2", "fp", None, budget["mobilenet_v2"], 0, None))["task"]
    assert mobilenet.model_arch == "mobilenet_v2" and mobilenet.model_kwargs["in_channels"] == 1
    assert mobilenet.optimizers["weight_optimizer"]["params"]["lr"] == pytest.approx(0.05)  # its own FP recipe


def test_mobilenet_v2_quantized_configs_keep_batchnorm_reestimation_and_the_layer_exceptions():
    size = BUDGETS["cpu"].models["mobilenet_v2"]
    derived = derive.classification_config("mobilenet_v2", "rupq", 2, size, 1, None)
    task = load(derived)["task"]
    assert [type(c).__name__ for c in task.callbacks] == ["BatchNormReestimationCallback"]
    parser = derived.tree()["model_parser"]
    assert parser["input_bit_width"]["exceptions"] == {"features.0.0": 8}
    assert parser["half_wave"]["exceptions"]["features.18.0"] is False
    assert task.training_loop.dataset.train_subset == size.qat_train_subset


def test_the_small_mobilenet_keeps_the_imagenet_layer_names():
    from rupq.models import create_model

    model = create_model("mobilenet_v2", **BUDGETS["cpu"].models["mobilenet_v2"].model_kwargs)
    imagenet_names = {name for name, _ in create_model("mobilenet_v2").named_modules()}
    assert {name for name, _ in model.named_modules()} == imagenet_names
    import torch

    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_sr_configs_renumber_the_per_block_exceptions_for_a_smaller_edsr(tmp_path):
    size = BUDGETS["cpu"].models["edsr"]
    blocks = size.model_kwargs["num_blocks"]
    derived = derive.sr_config("edsr", "rupq", 2, size, 0, tmp_path / "sr_demo")
    parser = derived.tree()["model_parser"]
    half_wave = parser["half_wave"]["exceptions"]
    kept = sorted(int(n) for layer in half_wave for n in re.findall(r"body\.(\d+)\.conv_block", layer))
    assert kept == list(range(blocks))
    assert half_wave[f"body.{blocks}"] is False and "body.16" not in half_wave
    assert parser["input_bit_width"] == {"default": 2, "exceptions": {"head.0": 8, "tail.1": 8}}
    task = load(derived)["task"]
    assert task.epochs == size.qat_epochs
    (benchmark,) = task.callbacks  # !QuantImagesCallback dropped, the Set14 benchmark kept and pointed at the demo
    assert type(benchmark).__name__ == "BenchmarkSuperresolutionCallback"
    assert str(tmp_path / "sr_demo" / "Set14") in derived.effective_text()
    fp = load(derive.sr_config("edsr", "fp", None, size, 0, tmp_path / "sr_demo"))
    assert fp["task"].model_kwargs == size.model_kwargs
    assert fp["task"].optimizers["weight_optimizer"]["params"]["lr"] == size.fp_lr


def test_srresnet_configs_are_x4_with_the_paper_exceptions(tmp_path):
    size = BUDGETS["cpu"].models["srresnet"]
    derived = derive.sr_config("srresnet", "lsqplus", 4, size, 0, tmp_path / "sr_demo")
    tree = derived.tree()
    assert tree["task"]["training_loop"]["dataset"]["scale"] == 4
    assert tree["model_parser"]["input_bit_width"]["exceptions"] == {"conv1.0": 8, "conv3.0": 8}
    fp = load(derive.sr_config("srresnet", "fp", None, size, 0, tmp_path / "sr_demo"))["task"]
    assert fp.model_arch == "srresnet" and fp.model_kwargs == size.model_kwargs


def test_ablations_change_one_ingredient_of_the_rupq_recipe():
    size = BUDGETS["cpu"].models["small_resnet"]
    rupq = derive.classification_config("small_resnet", "rupq", 3, size, 2, None)
    plain = derive.ablation_config("no_input_std", "small_resnet", 3, rupq)
    wrappers = load(plain)["task"].model_parser.wrappers
    for wrapper in wrappers.values():
        assert wrapper.quantizer.input_quantizer.transformation is None
        assert type(wrapper.quantizer.weight_quantizer.transformation).__name__ == "Standardization"

    sgd = derive.ablation_config("lsqplus_optimizers", "small_resnet", 3, rupq)
    optimizers = load(sgd)["task"].optimizers
    lsq = load(derive.classification_config("small_resnet", "lsqplus", 3, size, 2, None))["task"].optimizers
    assert optimizers == lsq  # LSQ+'s optimizers with the same schedule length
    assert optimizers["quant_optimizer"]["name"] == "SGD" and optimizers["quant_optimizer"]["params"]["momentum"] == 0.9
    assert "!Standardization" in sgd.effective_text()


def test_the_optimizer_ablation_of_edsr_scales_the_lsqplus_schedule(tmp_path):
    size = BUDGETS["cpu"].models["edsr"]
    rupq = derive.sr_config("edsr", "rupq", 2, size, 0, tmp_path / "sr_demo")
    ablated = load(derive.ablation_config("lsqplus_optimizers", "edsr", 2, rupq))["task"].optimizers
    lsq = load(derive.sr_config("edsr", "lsqplus", 2, size, 0, tmp_path / "sr_demo"))["task"].optimizers
    assert ablated == lsq


class FakeRunner:
    """Stands in for rupq/main.py: records the order runs start in and checks the FP dependency."""

    def __init__(self, values):
        self.values, self.started, self.lock = values, [], threading.Lock()

    def run(self, job):
        assert job.needs is None or job.needs.result is not None
        with self.lock:
            self.started.append(job.key)
        time.sleep(0.01)
        return {"best_val_accuracy": self.values(job.key), "version_dir": "x", "time_s": 1.0, "wall_s": 1.0,
                "cpu_s": 1.0}

    def stop(self):
        pass


def test_scheduler_runs_quantized_jobs_after_their_fp_and_ablates_the_cells_rupq_does_not_win(tmp_path):
    import reproduce_script

    args = reproduce_script.argparse.Namespace(seeds=[0, 1], sr_seeds=[0], models=["small_resnet"], logdir=tmp_path,
                                               fashion_root=None, no_ablations=False)
    plan = reproduce_script.Plan(args, BUDGETS["cpu"], tmp_path / "sr")
    # RUPQ loses at 3 bits only.
    values = lambda key: {"fp": 90.0, "lsqplus": 85.0, "rupq": 84.0 if key[2] == 3 else 86.0}.get(key[1], 85.5)  # noqa: E731
    fake = FakeRunner(values)
    jobs = runs.run_jobs(plan.build(), fake, workers=2, on_finish=plan.ablations_after)
    assert fake.started[0][1] == "fp"
    ablated = {(key[1], key[2], key[3]) for key in fake.started if ":" in key[1]}
    assert ablated == {(f"rupq:{name}", 3, seed) for name in derive.ABLATIONS for seed in (0, 1)}
    assert len(jobs) == 1 + 2 * 3 * 2 + len(derive.ABLATIONS) * 2
    assert plan.expected_runs() == 1 + 2 * 3 * 2


class FakeCommandRunner(runs.Runner):
    """The real runner with a stand-in command per job instead of rupq/main.py."""

    def __init__(self, commands: dict):
        super().__init__([], threads=1, fresh=True, quiet=True, report_only=False)
        self.commands = commands

    def command(self, job):
        return [sys.executable, "-c", self.commands[job.key]]


def fake_job(tmp_path, name: str) -> runs.Job:
    derived = argparse.Namespace(effective_text=lambda: f"# {name}\n")
    return runs.Job((name, "fp", None, 0), derived, tmp_path / name, tmp_path / "configs" / f"{name}.yaml")


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["stops", "killed"])
def test_a_failed_run_stops_the_run_beside_it_and_is_reported_at_once(tmp_path, ignores_sigterm):
    # The sibling would sleep a minute; the failing run waits until the sibling has started, so
    # that the sibling is under way when the failure comes.
    started = tmp_path / "sibling.pid"
    ignore = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignores_sigterm else ""
    runner = FakeCommandRunner({
        ("sibling", "fp", None, 0): f"{ignore}import os, time; open({str(started)!r}, 'w').write(str(os.getpid())); "
                                    "time.sleep(60)",
        ("failing", "fp", None, 0): f"import os, sys, time\nwhile not os.path.exists({str(started)!r}): "
                                    "time.sleep(0.01)\nsys.exit('the last line of its stderr')",
    })
    runner.stop_grace_s = 1.0
    begin = time.monotonic()
    try:
        with pytest.raises(SystemExit) as failure:
            runs.run_jobs([fake_job(tmp_path, "sibling"), fake_job(tmp_path, "failing")], runner, workers=2)
    finally:
        runner.stop()  # whatever happened, no process of this test outlives it
    assert time.monotonic() - begin < 30  # the sibling's 60 s were not waited for
    assert str(failure.value) == "error: run failing fp seed 0 failed with exit status 1: the last line of its stderr"
    assert not runner.processes  # every process it started has exited and been reaped
    with pytest.raises(ProcessLookupError):
        os.kill(int(started.read_text()), 0)  # signal 0: only asks whether the process exists


def test_no_run_starts_after_the_runner_stopped(tmp_path):
    runner = FakeCommandRunner({("late", "fp", None, 0): "pass"})
    runner.stop()
    with pytest.raises(SystemExit, match="stopped before this run started"):
        runner.run(fake_job(tmp_path, "late"))


@pytest.fixture(scope="module", autouse=True)
def reproduce_script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_script"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["reproduce_script"]


def fake_rows(seeds, fp=90.0, rupq_loses_at=None):
    """Rows as the runs produce them, with made-up values: only the report's layout is under test."""
    rows = [dict(model="small_resnet", method="fp", bits=32, seed=seeds[0], value=fp, time_s=60.0, wall_s=70.0,
                 cpu_s=120.0, run="x")]
    for seed in seeds:
        for bits in (2, 3, 4):
            for offset, method in ((-3.0, "lsqplus"), (-2.0, "rupq")):
                if method == "rupq" and bits == rupq_loses_at:
                    offset = -3.5
                rows.append(dict(model="small_resnet", method=method, bits=bits, seed=seed,
                                 value=fp + seed + offset - (4 - bits), time_s=90.0, wall_s=95.0, cpu_s=180.0, run="x"))
    return rows


TRAINED_BY = {"command": "python bench/reproduce.py --seeds 0 2", "wall_s": 600.0, "load_average": [1.0, 2.0]}


def report_args(**changes):
    args = dict(command_line="python bench/reproduce.py --seeds 0 2", budget="cpu", seeds=[0, 2], sr_seeds=[0],
                models=["small_resnet"], logdir=Path("runs/reproduce/cpu"), jobs=2, threads=1)
    args.update(changes)
    return argparse.Namespace(**args)


def test_report_gives_mean_spread_differences_and_verdicts(tmp_path):
    path = report.write_report(fake_rows([0, 2]), report_args(), BUDGETS["cpu"], TRAINED_BY, tmp_path, 13)
    text = path.read_text()
    assert "## small_resnet: Fashion-MNIST classification" in text
    assert "| FP | 32/32 | 90.00 | – | 90.00 |" in text
    # seeds 0 and 2: RUPQ 2/2 = 86, 88 → mean 87 ± 1.41
    assert "| RUPQ | 2/2 | 87.00 ± 1.41 | -3.00 | 86.00, 88.00 |" in text
    assert "| LSQ+ | 4/4 | 88.00 ± 1.41 | -2.00 | 87.00, 89.00 |" in text
    # RUPQ − LSQ+ = +1 for both seeds; spread 1.41 → within the spread
    assert "| RUPQ − LSQ+ | 2/2 | +1.00 ± 0.00 | +1.00, +1.00 | 1.41 | within the spread |" in text
    assert "wall-clock of that command: 10.0 min" in text
    assert "## Ablations" in text and "No cell needed one" in text
    for value in ("69.76", "71.88", "67.6", "70.2", "71.1"):
        assert f"| {value} |" in text
    assert (tmp_path / "reproduction.png").read_bytes()[:4] == b"\x89PNG"
    raw = json.loads((tmp_path / "reproduction_results.json").read_text())
    assert len(raw["rows"]) == 13


def test_report_explains_a_lost_cell_with_its_ablations(tmp_path):
    rows = fake_rows([0, 2], rupq_loses_at=3)
    for seed in (0, 2):
        lsq = next(r["value"] for r in rows if r["method"] == "lsqplus" and r["bits"] == 3 and r["seed"] == seed)
        rows.append(dict(model="small_resnet", method="rupq:no_input_std", bits=3, seed=seed, value=lsq + 2.0,
                         time_s=1.0, wall_s=1.0, cpu_s=1.0, run="x"))
        rows.append(dict(model="small_resnet", method="rupq:lsqplus_optimizers", bits=3, seed=seed, value=lsq - 0.5,
                         time_s=1.0, wall_s=1.0, cpu_s=1.0, run="x"))
    text = report.write_report(rows, report_args(), BUDGETS["cpu"], TRAINED_BY, tmp_path, 13).read_text()
    ablations = text[text.index("## Ablations"):]
    assert "### small_resnet 3/3" in ablations
    assert "| RUPQ without input standardization | 3/3 |" in ablations
    # without input standardization: +2.50 over RUPQ (spread 1.41), +2.00 over LSQ+ → that ingredient costs the cell
    assert "without input standardization: RUPQ gains +2.50" in ablations and "is what costs it this cell" in ablations
    assert "with LSQ+'s optimizers: no change beyond the spread" in ablations
    assert "**Reason:** RUPQ without input standardization reaches LSQ+" in ablations


def test_report_of_unfinished_runs_says_so(tmp_path):
    rows = [row for row in fake_rows([0, 2]) if not (row["seed"] == 2 and row["method"] != "fp")]
    rows = [row for row in rows if not (row["method"] == "rupq" and row["bits"] == 2)]
    text = report.write_report(rows, report_args(), BUDGETS["cpu"], TRAINED_BY, tmp_path, 13).read_text()
    assert "Incomplete: 6 of the 13 training runs" in text
    assert "| RUPQ | 2/2 | not finished | – |" in text
    assert "| RUPQ − LSQ+ | 2/2 | not finished |" in text


def test_tiny_report_end_to_end(tmp_path, tiny_fashion_mnist):
    """FP, then LSQ+ and RUPQ at three bit widths from its model.ckpt, two at a time, through the real CLI."""
    out, logdir = tmp_path / "docs", tmp_path / "runs"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    command = [sys.executable, str(SCRIPT), "--budget", "tiny", "--seeds", "5", "--models", "small_resnet",
               "--no-ablations", "--fashion-root", str(tiny_fashion_mnist), "--out", str(out),
               "--logdir", str(logdir), "--quiet"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]

    text = (out / "RESULTS.md").read_text()
    rows = re.findall(r"^\| (FP|LSQ\+|RUPQ) \| (\d+)/\d+ \| ([\d.]+) \|", text, flags=re.M)
    assert sorted((method, bits) for method, bits, _ in rows) == sorted(
        [("FP", "32")] + [(m, str(b)) for m in ("LSQ+", "RUPQ") for b in (2, 3, 4)])
    for _, _, accuracy in rows:
        assert 0.0 <= float(accuracy) <= 100.0
    assert "CPU:" in text and "torch " in text and "2 runs at a time" in text
    # Every quantized run started from the FP model.
    fp_checkpoint = next((logdir / "small_resnet" / "fp").glob("version_*/model.ckpt"))
    assert result.stdout.count(f"--load {fp_checkpoint}") == 6

    # Rerunning reuses the finished runs instead of training again.
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("reusing") == 7


def test_report_only_keeps_the_time_of_the_command_that_trained_the_runs(tmp_path, reproduce_script_module):
    raw = tmp_path / "reproduction_results.json"
    trained = {"command": "python bench/reproduce.py --budget cpu --out docs --quiet --fresh", "wall_s": 4000.0,
               "load_average": [0.1, 2.0]}
    raw.write_text(json.dumps({"command": trained["command"], "trained_by": trained}))
    previous = reproduce_script_module.previous_training
    assert previous(raw, "python bench/reproduce.py --budget cpu --out docs --report-only") == trained
    assert previous(raw, "python bench/reproduce.py --budget tiny --out docs --report-only") is None
    assert previous(tmp_path / "missing.json", "python bench/reproduce.py --report-only") is None


def test_the_reason_of_a_cell_follows_its_numbers():
    none = [("RUPQ without input standardization", "none", "…"), ("RUPQ with LSQ+'s optimizers", "none", "…")]
    assert "tied in this cell" in report.ablation_reason(none, gap=-0.05, noise=0.10, ablation_noise=0.12)
    assert "too small to attribute" in report.ablation_reason(none, gap=-0.05, noise=0.04, ablation_noise=0.13)
    assert "Reason not found" in report.ablation_reason(none, gap=-0.50, noise=0.10, ablation_noise=0.20)
    partial = [("RUPQ with LSQ+'s optimizers", "part", "…")]
    assert "in part" in report.ablation_reason(partial, gap=-0.50, noise=0.10, ablation_noise=0.20)


# ---- --ablation bound_gradient -------------------------------------------------------------------
def quantizer_rules(derived):
    """The ``bound_gradient`` of every input and weight quantizer prototype of a derived run."""
    wrappers = load(derived)["task"].model_parser.wrappers.values()
    return {quantizer.bound_gradient for wrapper in wrappers
            for quantizer in (wrapper.quantizer.input_quantizer, wrapper.quantizer.weight_quantizer)}


def test_bound_gradient_ablation_trains_both_methods_with_each_rule_after_the_fp(tmp_path, reproduce_script_module):
    args = argparse.Namespace(seeds=[0, 1, 2], sr_seeds=[0, 1], models=["small_resnet", "edsr"], logdir=tmp_path,
                              fashion_root=None, no_ablations=False)
    plan = reproduce_script_module.BoundGradientPlan(args, BUDGETS["cpu"], tmp_path / "sr")
    fake = FakeRunner(lambda key: 80.0)
    jobs = runs.run_jobs(plan.build(), fake, workers=2, on_finish=plan.ablations_after)
    quantized = [job for job in jobs if job.key[1] != "fp"]
    expected = {(model, f"{method}:{rule}", bits, seed)
                for model, bit_widths, seeds in (("small_resnet", (2, 3, 4), (0, 1, 2)), ("edsr", (2, 4), (0, 1)))
                for bits in bit_widths for seed in seeds for method in ("lsqplus", "rupq") for rule in ("mu_1", "mu_half")}
    assert {job.key for job in quantized} == expected and len(quantized) == len(expected) == 52
    assert plan.expected_runs() == 2 + 52 and len(jobs) == 54  # no RUPQ ablations on top
    assert all(job.needs.key == (job.key[0], "fp", None, 0) for job in quantized)  # the model's one FP run
    for job in quantized:
        assert job.logdir.name == f"w{job.key[2]}a{job.key[2]}_{job.key[1].replace(':', '_')}"
    size = BUDGETS["cpu"].models["small_resnet"]
    main_run = derive.classification_config("small_resnet", "rupq", 3, size, 1, None)
    by_key = {job.key: job for job in jobs}
    half, one = by_key[("small_resnet", "rupq:mu_half", 3, 1)], by_key[("small_resnet", "rupq:mu_1", 3, 1)]
    assert quantizer_rules(half.derived) == {0.5} and quantizer_rules(one.derived) == {1.0}
    assert quantizer_rules(main_run) == {1.0}  # the default
    # The rest of the recipe is the main report's run; μ = 1 is written out, so that a run trained
    # before the default changed is not reused for it.
    assert half.derived.overrides[:len(main_run.overrides)] == main_run.overrides
    assert one.derived.effective_text() != main_run.effective_text()
    assert quantizer_rules(by_key[("edsr", "lsqplus:mu_half", 2, 0)].derived) == {0.5}


def test_half_wave_input_offsets_are_read_from_the_checkpoint(tmp_path):
    import torch

    from rupq.models import create_model
    from rupq.tools.training.task import model_checkpoint

    model = load_config(REPO / "rupq/examples/quickstart/w4a4_rupq.yaml")["model_parser"].parse(create_model("small_resnet"))
    offsets = {name: module for name, module in model.named_modules() if name.endswith("input_quantizer")}
    with torch.no_grad():
        for index, quantizer in enumerate(offsets.values()):
            quantizer.offset.fill_(0.25 * index)
    (tmp_path / "version_0").mkdir()
    torch.save(model_checkpoint(model), tmp_path / "version_0" / "model.ckpt")
    expected = [0.25 * index for index, (name, q) in enumerate(offsets.items()) if q.half_wave]
    assert len(expected) == len(offsets) - 1  # conv1's input (the image) is signed
    assert runs.half_wave_input_offsets(tmp_path / "version_0") == expected


def bound_gradient_rows(seeds, moved_offsets):
    """Made-up ablation rows: μ = ½ is 1.0 better at 2 bits for RUPQ, otherwise within 0.1."""
    rows = [dict(model="small_resnet", method="fp", bits=32, seed=seeds[0], value=90.0, time_s=1.0, wall_s=1.0,
                 cpu_s=1.0, run="x")]
    for seed in seeds:
        for bits in (2, 3, 4):
            for method in ("lsqplus", "rupq"):
                for rule, gain, offset in (("mu_1", 0.0, 0.0), ("mu_half", 1.0 if (method, bits) == ("rupq", 2) else 0.1,
                                                                moved_offsets)):
                    rows.append(dict(model="small_resnet", method=f"{method}:{rule}", bits=bits, seed=seed,
                                     value=80.0 + bits + seed * 0.2 + gain, time_s=1.0, wall_s=1.0, cpu_s=1.0,
                                     run="x", offsets=[offset, 0.0, -offset]))
    return rows


def test_bound_gradient_report_gives_differences_verdicts_and_offsets_in_results_md(tmp_path):
    main_report = report.write_report(fake_rows([0, 2]), report_args(), BUDGETS["cpu"], TRAINED_BY, tmp_path, 13)
    args = report_args(command_line="python bench/reproduce.py --ablation bound_gradient --models small_resnet")
    trained = dict(TRAINED_BY, command=args.command_line, wall_s=1800.0)
    report.write_bound_gradient_report(bound_gradient_rows([0, 2], 0.03), args, BUDGETS["cpu"], trained, tmp_path,
                                       1 + 24)
    text = main_report.read_text()
    section = text[text.index("## Ablation: the gradient on a clip bound"):]
    assert text.index("## Ablations") < text.index("## Ablation: the gradient") < text.index("## How the runs were")
    assert "wall-clock 30.0 min" in section and "pytorch/pytorch#191142" in section
    # seeds 0 and 2 at 2 bits: μ = 1 → 82.0, 82.4; μ = ½ → 83.0, 83.4 (spread 0.28): + 1.00 beyond it
    assert ("| small_resnet | RUPQ | 2/2 | 82.20 ± 0.28 | 83.20 ± 0.28 | +1.00 ± 0.00 | +1.00, +1.00 | 0.28 | "
            "μ = ½ better | 0 (6/6 at 0) | 0.02 (2/6 at 0) |") in section
    assert "| small_resnet | LSQ+ | 3/3 | 83.20 ± 0.28 | 83.30 ± 0.28 | +0.10 ± 0.00 | +0.10, +0.10 | 0.28 | within the spread |" in section
    assert "cells beyond the seed spread: small_resnet RUPQ 2/2 (μ = ½ better)." in section
    assert "- Offsets: μ = 1 0 (36/36 at 0), μ = ½ 0.02 (12/36 at 0)" in section
    raw = json.loads((tmp_path / "bound_gradient_results.json").read_text())
    assert raw["trained_by"] == trained and len(raw["rows"]) == 25

    # Rewritten, not repeated; and a main report written afterwards keeps it.
    report.write_bound_gradient_report(bound_gradient_rows([0, 2], 0.06), args, BUDGETS["cpu"], trained, tmp_path, 25)
    text = main_report.read_text()
    assert text.count("## Ablation: the gradient") == 1 and "0.04 (2/6 at 0)" in text
    report.write_report(fake_rows([0, 2]), report_args(), BUDGETS["cpu"], TRAINED_BY, tmp_path, 13)
    text = main_report.read_text()
    assert text.count("## Ablation: the gradient") == 1 and "0.04 (2/6 at 0)" in text


def test_bound_gradient_ablation_command_line(tmp_path):
    """``--ablation bound_gradient`` on its own models by default; --report-only trains nothing and
    says how many runs are missing."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    command = [sys.executable, str(SCRIPT), "--ablation", "bound_gradient", "--models", "small_resnet", "--seeds", "4",
               "--report-only", "--out", str(tmp_path / "docs"), "--logdir", str(tmp_path / "runs")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("not finished") == 1  # the FP run; nothing can start without it
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "**Incomplete: 0 of the 12 quantized runs had finished.**" in text
    assert "| small_resnet | RUPQ | 4/4 | not finished | not finished | not finished |" in text
    help_text = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=env).stdout
    assert "--ablation {bound_gradient}" in help_text and "small_resnet and edsr" in help_text
