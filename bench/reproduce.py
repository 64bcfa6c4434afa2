"""Reproduction report: full precision vs LSQ+ vs RUPQ at 2, 3 and 4 bits, on data that is on disk.

    python bench/reproduce.py --budget cpu --seeds 0 1 --out docs

Classification: Fashion-MNIST with ``small_resnet``. For each seed the full-precision model is
trained once, then quantized from its ``model.ckpt`` (``--load``) with LSQ+ and with RUPQ at
w2a2, w3a3 and w4a4. Super-resolution: a small EDSR (×2) on the real-photo demo set of
``scripts/make_sr_demo_data.py``, against bicubic upscaling, at w4a4 and w2a2.

Every run is an ordinary ``rupq/main.py --config PAPER_CONFIG --set …`` run: the paper's config
(``rupq/examples/float/...`` and ``rupq/examples/quantized/...``) with command-line overrides.
The quantizers, initializers, optimizers, learning rates, bit-width exceptions and half-wave
rules are kept; only the dataset, the model, the epochs, the schedule lengths (``T_max`` /
milestones, scaled to the same fraction of training) and ``seed`` are replaced. The effective
configs are written to ``LOGDIR/configs/`` for inspection.

``--budget`` picks the size: ``tiny`` (a smoke test, seconds), ``cpu`` (a Fashion-MNIST subset,
the whole report in well under an hour on 2 cores), ``gpu`` (full Fashion-MNIST, longer
schedules, full-size EDSR). A finished run whose config is unchanged is reused, so an
interrupted report resumes where it stopped (``--fresh`` retrains everything), and
``--report-only`` writes the report from the runs finished so far without training.

The report ``OUT/RESULTS.md`` holds the measured tables, the machine, the times, a plot
``OUT/reproduction_accuracy.png`` and the commands for the paper's full experiments; the raw
numbers go to ``OUT/reproduction_results.json``.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rupq.config import config_tree, config_value_text, effective_config_text, load_config

REPO = Path(__file__).resolve().parent.parent
MAIN = REPO / "rupq" / "main.py"
EXAMPLES = REPO / "rupq" / "examples"
SR_DEMO_SCRIPT = REPO / "scripts" / "make_sr_demo_data.py"

METHODS = ("lsqplus", "rupq")
METHOD_NAMES = {"fp": "FP", "lsqplus": "LSQ+", "rupq": "RUPQ", "bicubic": "bicubic"}
CLASSIFICATION_BITS = (2, 3, 4)
# Training order: the lowest and the highest bit width first, so that a report cut short (and
# written with --report-only) already answers the two questions it is for.
CLASSIFICATION_RUN_ORDER = (2, 4, 3)
SR_BITS = (4, 2)
SR_SCALE = 2


@dataclass(frozen=True)
class Budget:
    """How much of everything one report trains (the paper's recipes are not touched)."""

    description: str
    train_subset: int | None  # Fashion-MNIST training images (None: all 60 000)
    val_subset: int | None  # Fashion-MNIST test images used for validation (None: all 10 000)
    batch_size: int
    fp_epochs: int
    qat_epochs: int
    model_kwargs: dict
    sr_model_kwargs: dict
    sr_batch_size: int
    sr_patch_size: int
    sr_repeat: int  # patches drawn per training photo and epoch
    sr_fp_epochs: int
    sr_qat_epochs: int
    # Adam learning rate of the FP EDSR (None: the paper config's 1e-4, made for 300 000 iterations; a
    # few hundred iterations at 1e-4 leave a small EDSR below bicubic). QAT keeps the paper's.
    sr_fp_lr: float | None = None


BUDGETS = {
    "tiny": Budget(
        description="smoke test: 256 training / 128 test images, one epoch per run, a 2-block EDSR",
        train_subset=256, val_subset=128, batch_size=64, fp_epochs=1, qat_epochs=1,
        model_kwargs={"widths": [8, 16], "blocks": [1, 1]},
        sr_model_kwargs={"num_blocks": 2, "num_features": 8}, sr_batch_size=4, sr_patch_size=32,
        sr_repeat=1, sr_fp_epochs=1, sr_qat_epochs=1,
    ),
    "cpu": Budget(
        description="2-core CPU: 8 000 training / 5 000 test images, FP 4 epochs, QAT 1 epoch; "
                    "EDSR with 4 blocks of 32 features, 600 FP iterations (Adam 1e-3) and 150 QAT iterations",
        train_subset=8000, val_subset=5000, batch_size=128, fp_epochs=4, qat_epochs=1,
        model_kwargs={},
        sr_model_kwargs={"num_blocks": 4, "num_features": 32}, sr_batch_size=16, sr_patch_size=64,
        sr_repeat=40, sr_fp_epochs=20, sr_qat_epochs=5, sr_fp_lr=1e-3,
    ),
    "gpu": Budget(
        description="one GPU: all 60 000 training / 10 000 test images, FP 30 epochs, QAT 15 epochs; "
                    "full-size EDSR (16 blocks of 64 features)",
        train_subset=None, val_subset=None, batch_size=128, fp_epochs=30, qat_epochs=15,
        model_kwargs={},
        sr_model_kwargs={"num_blocks": 16, "num_features": 64}, sr_batch_size=16, sr_patch_size=96,
        sr_repeat=100, sr_fp_epochs=100, sr_qat_epochs=40,
    ),
}

# Published numbers (ImageNet top-1, %), for the table of full experiments. Not measured here.
PUBLISHED = {
    ("resnet18", "fp"): ("69.76", "torchvision's ResNet18_Weights.IMAGENET1K_V1"),
    ("mobilenet_v2", "fp"): ("71.88", "torchvision's MobileNet_V2_Weights.IMAGENET1K_V1"),
    ("resnet18", "w2a2"): ("67.6", "LSQ, Esser et al. 2019 (ICLR 2020), Table 1"),
    ("resnet18", "w3a3"): ("70.2", "LSQ, Esser et al. 2019 (ICLR 2020), Table 1"),
    ("resnet18", "w4a4"): ("71.1", "LSQ, Esser et al. 2019 (ICLR 2020), Table 1"),
}


# ---- deriving configs from the paper's ones -----------------------------------------------------
@dataclass(frozen=True)
class DerivedRun:
    """A paper config and the ``--set`` overrides that adapt it; ``rupq/main.py`` applies them."""

    source: Path
    overrides: tuple[str, ...]

    def effective_text(self) -> str:
        """What the run writes to ``version_N/config.yaml`` (compared to find a finished run to reuse)."""
        return effective_config_text(str(self.source), self.overrides)


def flow(value) -> str:
    """A Python value as a one-line YAML value (JSON is YAML)."""
    return json.dumps(value)


def schedule_overrides(tree: dict, total_steps: int, seed_total: int | None, source: Path) -> list[str]:
    """``T_max`` of every scheduler set to ``total_steps``; ``milestones`` scaled to the same fraction of training."""
    overrides = []
    for name, entry in tree["task"]["optimizers"].items():
        params = (entry.get("scheduler") or {}).get("params") or {}
        prefix = f"task.optimizers.{name}.scheduler.params"
        if "T_max" in params:
            overrides.append(f"{prefix}.T_max={total_steps}")
        if "milestones" in params:
            if seed_total is None:
                raise SystemExit(f"error: {source}: milestones without a known schedule length")
            scaled = [max(1, round(v / seed_total * total_steps)) for v in params["milestones"]]
            overrides.append(f"{prefix}.milestones={flow(scaled)}")
    return overrides


def callbacks_without_images(source: Path) -> list[str]:
    """Drop ``!QuantImagesCallback``: TensorBoard pictures only, not part of the recipe, and seconds of
    matplotlib per layer that the small budgets cannot spare (``QuantVarsCallback`` stays: Task adds it)."""
    callbacks = load_config(source)["task"].callbacks
    kept = [index for index, callback in enumerate(callbacks) if type(callback).__name__ != "QuantImagesCallback"]
    if len(kept) == len(callbacks):
        return []
    items = ", ".join(config_value_text(source, f"task.callbacks.{index}") for index in kept)
    return [f"task.callbacks=[{items}]"]


def fashion_dataset(budget: Budget, root: str | None) -> str:
    arguments = {"batch_size": budget.batch_size}
    if budget.train_subset is not None:
        arguments["train_subset"] = budget.train_subset
    if budget.val_subset is not None:
        arguments["val_subset"] = budget.val_subset
    if root:
        arguments["root"] = str(root)
    return f"!FashionMNISTDataloader {flow(arguments)}"


def fashion_iterations(budget: Budget, root: str | None) -> int:
    """Training iterations per epoch (the loader keeps the last, smaller batch)."""
    size = budget.train_subset
    if size is None or size > 60000:
        size = 60000
    if root is not None and budget.train_subset is not None:
        size = min(size, count_fashion_images(root))
    return math.ceil(size / budget.batch_size)


def count_fashion_images(root: str) -> int:
    from rupq.dataloaders.fashion_mnist import FILES, _find, fashion_mnist_folder, read_idx

    folder = fashion_mnist_folder(root)
    return len(read_idx(_find(folder, FILES["train"][1])))


def classification_config(method: str, bits: int | None, budget: Budget, seed: int, root: str | None) -> DerivedRun:
    """The ResNet-18 ImageNet config of ``method`` (``fp`` or ``wXaX_method``) on Fashion-MNIST:
    the dataset, the epochs, the schedule length and the seed replaced (and the model, for FP)."""
    if method == "fp":
        source = EXAMPLES / "float" / "classification" / "resnet18" / "fp.yaml"
        epochs = budget.fp_epochs
    else:
        source = EXAMPLES / "quantized" / "classification" / "resnet18" / f"w{bits}a{bits}_{method}.yaml"
        epochs = budget.qat_epochs
    overrides = [f"task.training_loop.dataset={fashion_dataset(budget, root)}", f"task.epochs={epochs}",
                 f"task.seed={seed}"]
    overrides += schedule_overrides(config_tree(source), epochs * fashion_iterations(budget, root), None, source)
    overrides += callbacks_without_images(source)
    if method == "fp":
        overrides.append("task.model_arch=small_resnet")
        if budget.model_kwargs:
            overrides.append(f"task.model_kwargs={flow(budget.model_kwargs)}")
    return DerivedRun(source, tuple(overrides))


def edsr_exceptions(exceptions: dict, blocks: int) -> dict:
    """The per-layer exceptions of the 16-block EDSR for one with ``blocks`` residual blocks: those of
    the blocks it has are kept, and the last body conv ``body.16`` becomes ``body.<blocks>``."""
    kept = {}
    for layer, value in exceptions.items():
        match = re.fullmatch(r"body\.(\d+)(\..+)?", layer)
        if match and match.group(2) is None:  # body.16, the conv after the residual blocks
            kept[f"body.{blocks}"] = value
        elif not match or int(match.group(1)) < blocks:
            kept[layer] = value
    return kept


def sr_config(method: str, bits: int | None, budget: Budget, seed: int, data_root: Path) -> DerivedRun:
    """The EDSR ×2 config of ``method`` on the demo photos with a smaller EDSR."""
    if method == "fp":
        source = EXAMPLES / "float" / "superresolution" / "edsr" / "fp.yaml"
        epochs = budget.sr_fp_epochs
    else:
        source = EXAMPLES / "quantized" / "superresolution" / "edsr" / f"w{bits}a{bits}_{method}.yaml"
        epochs = budget.sr_qat_epochs
    tree = config_tree(source)
    # The original RUPQ code's EDSR schedule: 300 000 iterations (6000 epochs of 800 patches / 16).
    seed_total = 300000
    train_photos = len(list((data_root / "DIV2K" / "DIV2K_train_HR").glob("0[0-7]??.png")))
    iterations = math.ceil(train_photos * budget.sr_repeat / budget.sr_batch_size)
    dataset = "task.training_loop.dataset"
    overrides = [f"{dataset}.batch_size={budget.sr_batch_size}", f"{dataset}.patch_size={budget.sr_patch_size}",
                 f"{dataset}.repeat={budget.sr_repeat}", f"{dataset}.num_workers=0",
                 f"{dataset}.root={flow(str(data_root / 'DIV2K'))}",
                 f"task.epochs={epochs}", f"task.seed={seed}", "task.check_val_every_n_epochs=1"]
    overrides += schedule_overrides(tree, epochs * iterations, seed_total, source)
    overrides += callbacks_without_images(source)
    # The Set14 benchmark reads the demo set's Set14 copy (the validation photos): it also logs bicubic's PSNR.
    benchmark = next(i for i, c in enumerate(load_config(source, overrides)["task"].callbacks)
                     if type(c).__name__ == "BenchmarkSuperresolutionCallback")
    overrides.append(f"task.callbacks.{benchmark}.root={flow(str(data_root / 'Set14'))}")
    if method == "fp":
        overrides.append(f"task.model_kwargs={flow(budget.sr_model_kwargs)}")
        if budget.sr_fp_lr is not None:
            overrides += [f"task.optimizers.{name}.params.lr={budget.sr_fp_lr}" for name in tree["task"]["optimizers"]]
    else:
        blocks = budget.sr_model_kwargs["num_blocks"]
        for argument in ("input_bit_width", "weight_bit_width", "half_wave"):
            exceptions = (tree["task"]["model_parser"].get(argument) or {}).get("exceptions") or {}
            overrides.append(f"task.model_parser.{argument}.exceptions={flow(edsr_exceptions(exceptions, blocks))}")
    return DerivedRun(source, tuple(overrides))


# ---- running ------------------------------------------------------------------------------------
def finished_run(logdir: Path, config_text: str) -> Path | None:
    """The newest version folder of ``logdir`` that finished with exactly this config (to reuse).

    Newest first, so that after ``--fresh`` the retrained run is the one reused and reported.
    """
    versions = [v for v in logdir.glob("version_*") if v.name.removeprefix("version_").isdigit()]
    for version in sorted(versions, key=lambda v: int(v.name.removeprefix("version_")), reverse=True):
        if (version / "results.json").is_file() and (version / "config.yaml").read_text() == config_text:
            return version
    return None


def run_training(name: str, derived: DerivedRun, logdir: Path, configs_dir: Path, extra: list[str],
                 env: dict | None, fresh: bool, quiet: bool, report_only: bool = False) -> dict | None:
    """One ``rupq/main.py --config SOURCE --set …`` run; returns its results.json plus wall and CPU
    seconds (``None`` with ``report_only`` when the run has not finished yet)."""
    config_text = derived.effective_text()
    configs_dir.mkdir(parents=True, exist_ok=True)
    config_path = configs_dir / f"{name}.yaml"
    config_path.write_text(config_text)
    version = None if fresh else finished_run(logdir, config_text)
    if version is not None:
        print(f"[reproduce] {name}: reusing {version}", flush=True)
    elif report_only:
        print(f"[reproduce] {name}: not finished in {logdir}", flush=True)
        return None
    else:
        before = set(logdir.glob("version_*"))
        command = [sys.executable, str(MAIN), "--config", str(derived.source), "--logdir", str(logdir),
                   "--set", *derived.overrides, *extra]
        print(f"[reproduce] {name}: $ {shlex.join(command)}", flush=True)
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.time()
        full_env = dict(os.environ)
        full_env.pop("PYTHONPATH", None)
        full_env.update(env or {})
        result = subprocess.run(command, env=full_env, cwd=REPO,
                                stdout=subprocess.DEVNULL if quiet else None,
                                stderr=subprocess.PIPE if quiet else None, text=True)
        wall = time.time() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            detail = f": {result.stderr.strip().splitlines()[-1]}" if quiet and result.stderr.strip() else ""
            raise SystemExit(f"error: run {name} failed with exit status {result.returncode}{detail}")
        (version,) = set(logdir.glob("version_*")) - before
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        (version / "reproduce.json").write_text(json.dumps({"wall_s": wall, "cpu_s": cpu}) + "\n")
    results = json.loads((version / "results.json").read_text())
    # A run started by hand with the same config has no record of its wall-clock and CPU time:
    # count its training time for both.
    timing = version / "reproduce.json"
    results.update(json.loads(timing.read_text()) if timing.is_file() else {"wall_s": results["time_s"],
                                                                          "cpu_s": float("nan")})
    results["version_dir"] = str(version)
    return results


def load_sr_demo_module():
    spec = importlib.util.spec_from_file_location("make_sr_demo_data", SR_DEMO_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_from_fp(task: str, metric: str, seed: int, run_dir: Path, configs_dir: Path, args, fp_config: DerivedRun,
                  quantized_config, bit_widths, label) -> list[dict]:
    """The FP run of one seed, then every method at every bit width from its ``model.ckpt``.

    ``quantized_config(method, bits)`` gives a quantized run's derived config; ``label(value, fp_value)``
    the progress line's figures. Returns the report rows of the runs that finished.
    """
    common = dict(configs_dir=configs_dir, extra=args.device_args, env=None, fresh=args.fresh, quiet=args.quiet,
                  report_only=args.report_only)

    def row(method, bits, result):
        return dict(task=task, method=method, bits=bits, seed=seed, value=result[metric], time_s=result["time_s"],
                    wall_s=result["wall_s"], cpu_s=result["cpu_s"], run=result["version_dir"])

    fp = run_training("fp", fp_config, run_dir / "fp", **common)
    if fp is None:
        return []
    rows = [row("fp", 32, fp)]
    load = ["--load", str(Path(fp["version_dir"]) / "model.ckpt"), *args.device_args]
    for bits in bit_widths:
        for method in METHODS:
            name = f"w{bits}a{bits}_{method}"
            result = run_training(name, quantized_config(method, bits), run_dir / name, **dict(common, extra=load))
            if result is None:
                continue
            rows.append(row(method, bits, result))
            print(f"[reproduce] {task} seed {seed} {name}: {label(result[metric], fp[metric])}", flush=True)
    return rows


def run_classification(args, budget: Budget, logdir: Path) -> list[dict]:
    rows = []
    for seed in args.seeds:
        rows += train_from_fp(
            "classification", "best_val_accuracy", seed, logdir / "fashion_mnist" / f"seed_{seed}",
            logdir / "configs" / "fashion_mnist" / f"seed_{seed}", args,
            classification_config("fp", None, budget, seed, args.fashion_root),
            lambda method, bits: classification_config(method, bits, budget, seed, args.fashion_root),
            CLASSIFICATION_RUN_ORDER, lambda value, fp: f"top-1 {value:.2f} (FP {fp:.2f})",
        )
    return rows


def run_superresolution(args, budget: Budget, logdir: Path) -> list[dict]:
    demo = load_sr_demo_module()
    data_root = (logdir / "sr_demo").resolve()
    if not (data_root / "datasets_info.yaml").is_file():
        print(f"[reproduce] building the real-photo demo set in {data_root}", flush=True)
        demo.build(data_root, [SR_SCALE])
    bicubic = demo.bicubic_psnr(data_root, SR_SCALE)
    rows = []
    for seed in args.sr_seeds:
        rows.append(dict(task="superresolution", method="bicubic", bits=None, seed=seed, value=bicubic,
                         time_s=0.0, wall_s=0.0, cpu_s=0.0, run=str(data_root)))
        rows += train_from_fp(
            "superresolution", "best_val_PSNR", seed, logdir / "sr_demo_edsr" / f"seed_{seed}",
            logdir / "configs" / "sr_demo_edsr" / f"seed_{seed}", args,
            sr_config("fp", None, budget, seed, data_root),
            lambda method, bits: sr_config(method, bits, budget, seed, data_root),
            SR_BITS, lambda value, fp: f"PSNR {value:.2f} dB (FP {fp:.2f}, bicubic {bicubic:.2f})",
        )
    return rows


# ---- report -------------------------------------------------------------------------------------
def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    gpu = "none"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            gpu = ", ".join(out.stdout.strip().splitlines())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"cpu": model, "cores": usable, "logical_cpus": os.cpu_count(), "gpu": gpu,
            "torch": importlib.metadata.version("torch"), "python": platform.python_version(),
            "platform": platform.platform()}


def mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else math.nan


def summary(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    return mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0 if values else math.nan)


def signed(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.2f}"


def minutes(values) -> str:
    value = mean(values)
    return "–" if math.isnan(value) else f"{value / 60:.1f}"


def cell(values: list[float], digits: int = 2) -> str:
    if not values:
        return "not finished"
    mean_value, spread = summary(values)
    if len(values) == 1:
        return f"{mean_value:.{digits}f}"
    return f"{mean_value:.{digits}f} ± {spread:.{digits}f}"


def group(rows, task, method, bits=None):
    return [r for r in rows if r["task"] == task and r["method"] == method and (bits is None or r["bits"] == bits)]


def plot_classification(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    fp = [r["value"] for r in group(rows, "classification", "fp")]
    fp_mean, fp_spread = summary(fp)
    axes.axhline(fp_mean, color="black", linestyle="--", label=f"FP ({fp_mean:.2f})")
    if fp_spread:
        axes.axhspan(fp_mean - fp_spread, fp_mean + fp_spread, color="black", alpha=0.08)
    for offset, (method, color) in zip((-0.04, 0.04), (("lsqplus", "tab:orange"), ("rupq", "tab:blue"))):
        points = [(bits, *summary([r["value"] for r in group(rows, "classification", method, bits)]))
                  for bits in CLASSIFICATION_BITS]
        points = [point for point in points if not math.isnan(point[1])]
        if points:
            bits, means, spreads = zip(*points)
            axes.errorbar([b + offset for b in bits], means, yerr=spreads, marker="o", capsize=4,
                          color=color, label=METHOD_NAMES[method])
    seeds = sorted({r["seed"] for r in rows if r["task"] == "classification"})
    axes.set_xticks(CLASSIFICATION_BITS, [f"w{b}a{b}" for b in CLASSIFICATION_BITS])
    axes.set_xlabel("bit width (weights and activations)")
    axes.set_ylabel("Fashion-MNIST test top-1 (%)")
    bars = "mean ± std over seeds" if len(seeds) > 1 else "seed"
    axes.set_title(f"small_resnet, {bars} {', '.join(map(str, seeds))}", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def seed_commands() -> list[str]:
    """Commands for every config under rupq/examples/float and rupq/examples/quantized."""
    lines = []
    float_root, quant_root = EXAMPLES / "float", EXAMPLES / "quantized"
    models = sorted({p.parent.relative_to(float_root) for p in float_root.rglob("*.yaml")}
                    | {p.parent.relative_to(quant_root) for p in quant_root.rglob("*.yaml")})
    for model in models:
        task, arch = model.parts[0], model.parts[-1]
        lines += [f"#### {task} / {arch}", "", "```bash"]
        fp_configs = sorted((float_root / model).glob("*.yaml"))
        fp_checkpoint = "MODEL.ckpt"
        for config in fp_configs:
            logdir = f"runs/{arch}/{config.stem}"
            lines.append(f"python rupq/main.py --config {config.relative_to(REPO)} --logdir {logdir} --gpu=0,1")
            fp_checkpoint = f"{logdir}/version_0/model.ckpt"
        if not fp_configs:
            lines.append(f"# no full-precision config here: train or obtain a {arch} model.ckpt first")
        for config in sorted((quant_root / model).glob("*.yaml")):
            lines.append(f"python rupq/main.py --config {config.relative_to(REPO)} --logdir runs/{arch}/{config.stem} "
                         f"--load {fp_checkpoint} --gpu=0,1")
        lines += ["```", ""]
    return lines


def write_report(rows: list[dict], args, budget: Budget, started: float, load: list, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    wall_total = time.time() - started
    seeds = sorted({r["seed"] for r in rows if r["task"] == "classification"})
    lines = ["# Reproduction report: full precision vs LSQ+ vs RUPQ", ""]
    lines += [f"Generated by `{args.command_line}`. Every number below was measured by that command on the "
              "machine described here, except those in the last section, which are marked *published*.", ""]

    run_rows = [r for r in rows if r["method"] != "bicubic"]
    expected = (len(args.seeds) * (1 + len(METHODS) * len(CLASSIFICATION_BITS)) * ("classification" in args.tasks)
                + len(args.sr_seeds) * (1 + len(METHODS) * len(SR_BITS)) * ("superresolution" in args.tasks))
    if len(run_rows) < expected:
        lines += [f"**Incomplete: {len(run_rows)} of the {expected} training runs had finished when this report was "
                  "written (`--report-only`); the others are marked *not finished*. Rerun the command below "
                  "to train the rest (finished runs are reused) and regenerate the report.**", ""]
    wall_runs = sum(r["wall_s"] for r in run_rows)
    cpu_runs = sum(r["cpu_s"] for r in run_rows if not math.isnan(r["cpu_s"]))
    lines += ["## Machine and time", ""]
    lines += [f"- CPU: {info['cpu']}, {info['cores']} usable cores ({info['logical_cpus']} logical CPUs); GPU: {info['gpu']}",
              f"- torch {info['torch']}, Python {info['python']}, {info['platform']}",
              f"- budget `{args.budget}`: {budget.description}",
              f"- seeds: {', '.join(map(str, args.seeds))} (Task's `seed:`; the FP model is trained once per seed "
              "and every quantized run of that seed starts from it)",
              f"- wall-clock of this invocation: {wall_total / 60:.1f} min; wall-clock of the {len(run_rows)} training "
              f"runs: {wall_runs / 60:.1f} min (runs reused from an earlier invocation count with their own time)",
              f"- CPU time of the training runs: {cpu_runs / 60:.1f} min, i.e. {cpu_runs / max(wall_runs, 1e-9):.2f} "
              f"of {info['cores']} cores busy on average; 1-minute load average "
              f"{' → '.join(f'{x:.1f}' for x in load)} (start → end). A load above {info['cores']} means other "
              "work shared the cores and the wall-clock is inflated accordingly.", ""]

    if any(r["task"] == "classification" for r in rows):
        fp = [r["value"] for r in group(rows, "classification", "fp")]
        lines += ["## Classification: Fashion-MNIST, small_resnet", ""]
        lines += ["Best test top-1 (%) over the epochs of each run"
                  + (", mean ± sample standard deviation over the seeds" if len(seeds) > 1 else "") + ".", ""]
        lines += ["| method | bits (w/a) | top-1 (%) | Δ vs FP of the same seed | per seed | train time per run (min) |",
                  "|---|---|---:|---:|---|---:|"]
        lines.append(f"| FP | 32/32 | {cell(fp)} | – | {', '.join(f'{v:.2f}' for v in fp)} | "
                     f"{minutes(r['time_s'] for r in group(rows, 'classification', 'fp'))} |")
        for bits in CLASSIFICATION_BITS:
            for method in METHODS:
                found = group(rows, "classification", method, bits)
                values = [r["value"] for r in found]
                # Δ against the FP model of the same seed, so that unfinished seeds do not skew it.
                fp_of_seed = {r["seed"]: r["value"] for r in group(rows, "classification", "fp")}
                delta = mean(r["value"] - fp_of_seed[r["seed"]] for r in found)
                lines.append(f"| {METHOD_NAMES[method]} | {bits}/{bits} | {cell(values)} | "
                             f"{signed(delta)} | {', '.join(f'{v:.2f}' for v in values)} | "
                             f"{minutes(r['time_s'] for r in found)} |")
        lines.append("")
        plot = out / "reproduction_accuracy.png"
        plot_classification(rows, plot)
        lines += [f"![top-1 against bit width]({plot.name})", ""]
        lines += ["RUPQ − LSQ+ (points of top-1, per seed, then mean):", ""]
        for bits in CLASSIFICATION_BITS:
            differences = []
            for seed in seeds:
                rupq = [r["value"] for r in group(rows, "classification", "rupq", bits) if r["seed"] == seed]
                lsq = [r["value"] for r in group(rows, "classification", "lsqplus", bits) if r["seed"] == seed]
                if rupq and lsq:
                    differences.append(rupq[0] - lsq[0])
            lines.append(f"- w{bits}a{bits}: {', '.join(f'{d:+.2f}' for d in differences) or 'not finished'} → mean "
                         f"{signed(mean(differences))}")
        lines.append("")

    if any(r["task"] == "superresolution" for r in rows):
        sr_seeds = sorted({r["seed"] for r in rows if r["task"] == "superresolution"})
        lines += ["## Super-resolution: real-photo demo set, EDSR ×2", ""]
        lines += [f"EDSR {budget.sr_model_kwargs} trained on the training photos of `scripts/make_sr_demo_data.py` "
                  f"({budget.sr_repeat} random {budget.sr_patch_size}-pixel patches per photo and epoch), "
                  "PSNR (dB, Y channel, 2-pixel border cropped) on its validation photos, best epoch; "
                  f"seed(s) {', '.join(map(str, sr_seeds))}.", ""]
        lines += ["| method | bits (w/a) | PSNR (dB) | Δ vs FP | train time per run (min) |", "|---|---|---:|---:|---:|"]
        bicubic = [r["value"] for r in group(rows, "superresolution", "bicubic")]
        fp = [r["value"] for r in group(rows, "superresolution", "fp")]
        lines.append(f"| bicubic | – | {cell(bicubic)} | {signed(mean(bicubic) - mean(fp))} | – |")
        lines.append(f"| FP | 32/32 | {cell(fp)} | – | "
                     f"{minutes(r['time_s'] for r in group(rows, 'superresolution', 'fp'))} |")
        for bits in SR_BITS:
            for method in METHODS:
                found = group(rows, "superresolution", method, bits)
                values = [r["value"] for r in found]
                lines.append(f"| {METHOD_NAMES[method]} | {bits}/{bits} | {cell(values)} | "
                             f"{signed(mean(values) - mean(fp))} | "
                             f"{minutes(r['time_s'] for r in found)} |")
        lines.append("")

    lines += ["## How the runs were configured", ""]
    lines += ["Each run's config is derived from the paper's config of the same method and bit width "
              "(`rupq/examples/float/classification/resnet18/fp.yaml`, "
              "`rupq/examples/quantized/classification/resnet18/wXaX_{lsqplus,rupq}.yaml`, and the `edsr` ones "
              "for super-resolution). Kept verbatim: quantizers (`StepOffsetQuantizer` inputs, per-channel "
              "`StepQuantizer` weights), initializers (RUPQ: `MinErrorInitializer`; LSQ+: `MeanStdInitializer` / "
              "`MinErrorInitializer` as each seed file says), `Standardization` (RUPQ only), optimizers and learning "
              "rates (RUPQ: SGD 0.01 for weights, Adam 1e-5 for `quant_weight` and 1e-3 for `quant_input`; LSQ+: "
              "SGD 0.01 momentum 0.9 for all quantization parameters), the 8-bit first layer `conv1` and the "
              "half-wave rules. Replaced: the dataset, the model (`small_resnet` / a smaller EDSR), the epochs, "
              "the cosine `T_max` (= epochs × iterations per epoch, i.e. the same whole-schedule cosine as on "
              "ImageNet) and the step milestones (same fraction of training), and `seed:`; the TensorBoard "
              "picture callback `QuantImagesCallback` is left out (visualization only; `QuantVarsCallback` "
              "still logs the quantizer variables)."
              + (f" The FP EDSR's Adam learning rate is {budget.sr_fp_lr} instead of the paper config's 1e-4, which is "
                 "made for 300 000 iterations: a few hundred at 1e-4 leave the small EDSR below bicubic "
                 "(the quantized SR runs keep the paper's rates)." if budget.sr_fp_lr is not None else "")
              + f" The derived files are kept in `{args.logdir}/configs/`.", ""]
    lines += ["Regenerate:", "", "```bash", args.command_line, "```", ""]

    lines += ["## The paper's experiments on the real datasets", ""]
    lines += ["Run the full-precision config first, then each quantized config from its `model.ckpt` with "
              "`--load` (point the datasets-info file, `rupq/dataloaders/datasets_info.yaml` or "
              "`RUPQ_DATASETS_INFO`, at ImageNet / DIV2K / COCO). `--load torchvision:resnet18` (or "
              "`torchvision:mobilenet_v2`) starts from torchvision's published weights instead of an FP run. "
              "Use the next free `version_N` in `--load` if a logdir was used before.", ""]
    lines += seed_commands()
    lines += ["### Published reference numbers (ImageNet top-1, %) — published, not measured here", "",
              "| model | setting | top-1 (%) | source |", "|---|---|---:|---|"]
    for (arch, setting), (value, source) in PUBLISHED.items():
        lines.append(f"| {arch} | {'full precision' if setting == 'fp' else setting + ' (LSQ)'} | {value} | {source} |")
    lines.append("")

    report = out / "RESULTS.md"
    report.write_text("\n".join(lines))
    raw = {"command": args.command_line, "budget": asdict(budget), "machine": info, "wall_s": wall_total,
           "load_average": load, "rows": rows}
    (out / "reproduction_results.json").write_text(json.dumps(raw, indent=2) + "\n")
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="how much to train (see the docstring)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="classification seeds (mean ± std over them)")
    parser.add_argument("--sr-seeds", type=int, nargs="+", help="super-resolution seeds (default: the first of --seeds)")
    parser.add_argument("--tasks", nargs="+", choices=("classification", "superresolution"),
                        default=["classification", "superresolution"])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for RESULTS.md, the plot and the raw json")
    parser.add_argument("--logdir", type=Path, help="parent folder of the runs (default runs/reproduce/BUDGET)")
    parser.add_argument("--fashion-root", help="Fashion-MNIST folder (default: datasets-info / Debian package)")
    parser.add_argument("--gpu", help="passed on to rupq/main.py")
    parser.add_argument("--fresh", action="store_true", help="retrain even runs that finished with the same config")
    parser.add_argument("--quiet", action="store_true", help="hide the runs' progress output")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the report from the runs that have finished (others: 'not finished')")
    args = parser.parse_args(argv)
    args.command_line = "python bench/reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.sr_seeds = args.sr_seeds or args.seeds[:1]
    args.logdir = args.logdir or Path("runs") / "reproduce" / args.budget
    args.device_args = ["--gpu", args.gpu] if args.gpu else []
    if args.fashion_root:
        args.fashion_root = str(Path(args.fashion_root).resolve())
    budget = BUDGETS[args.budget]

    started, load_start = time.time(), os.getloadavg()[0]
    rows = []
    if "classification" in args.tasks:
        rows += run_classification(args, budget, args.logdir)
    if "superresolution" in args.tasks:
        rows += run_superresolution(args, budget, args.logdir)
    report = write_report(rows, args, budget, started, [load_start, os.getloadavg()[0]], args.out)
    print(f"[reproduce] wrote {report} in {(time.time() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
