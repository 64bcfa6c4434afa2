"""The report: ``RESULTS.md`` (tables, the RUPQ − LSQ+ differences against the seed spread, the
ablations), a plot, and the raw numbers as JSON.

A row is one finished run: ``dict(model, method, bits, seed, value, time_s, wall_s, cpu_s, run)``,
``method`` one of ``fp``, ``bicubic``, ``lsqplus``, ``rupq`` or ``rupq:<ablation>``.
"""

import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
from dataclasses import asdict
from pathlib import Path

from .budgets import EXAMPLES, METHOD_NAMES, METHODS, MODELS, PUBLISHED, REPO
from .derive import ABLATIONS, BOUND_GRADIENT_RULES

METRICS = {"classification": ("top-1 (%)", "Fashion-MNIST test top-1 (%)"),
           "superresolution": ("PSNR (dB)", "PSNR (dB, Y channel)")}


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
    mean_value, deviation = summary(values)
    if len(values) == 1:
        return f"{mean_value:.{digits}f}"
    return f"{mean_value:.{digits}f} ± {deviation:.{digits}f}"


def difference_cell(differences: list[float]) -> str:
    """Mean ± sample standard deviation of per-seed differences, signed."""
    if not differences:
        return "not finished"
    mean_value, deviation = summary(differences)
    return signed(mean_value) if len(differences) == 1 else f"{signed(mean_value)} ± {deviation:.2f}"


def count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def seed_values(rows, model, method, bits=None) -> dict:
    """seed -> value of the finished runs of one cell."""
    return {r["seed"]: r["value"] for r in rows
            if r["model"] == model and r["method"] == method and (bits is None or r["bits"] == bits)}


def paired(first: dict, second: dict) -> list[float]:
    """Per-seed differences first − second over the seeds both have."""
    return [first[seed] - second[seed] for seed in sorted(first) if seed in second]


def largest(numbers: list[float]) -> float:
    """The largest of ``numbers`` that is not NaN (NaN if none is)."""
    return max((number for number in numbers if not math.isnan(number)), default=math.nan)


def spread(*cells: dict) -> float:
    """The seed-to-seed spread of a comparison: the larger sample standard deviation of its cells."""
    deviations = [statistics.stdev(cell.values()) for cell in cells if len(cell) > 1]
    return max(deviations) if deviations else math.nan


def verdict(difference: list[float], noise: float, better: str = "RUPQ better", worse: str = "LSQ+ better") -> str:
    """Whether a mean difference is larger than the seed-to-seed spread (and which way)."""
    if not difference:
        return "not finished"
    if math.isnan(noise):
        return "one seed: no spread"
    value = mean(difference)
    if value > noise:
        return better
    if value < -noise:
        return worse
    return "within the spread"


def rupq_not_better(rows, model, bits, seeds) -> bool:
    """A cell whose ablations run: every seed of both methods finished and RUPQ's mean is not above LSQ+'s."""
    rupq, lsq = seed_values(rows, model, "rupq", bits), seed_values(rows, model, "lsqplus", bits)
    if set(rupq) != set(seeds) or set(lsq) != set(seeds):
        return False
    return mean(paired(rupq, lsq)) <= 0


def listing(numbers, digits: int = 2, sign: bool = False) -> str:
    form = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"
    return ", ".join(form.format(n) for n in numbers)


def model_section(rows, model: str, size, seeds, digits: int = 2) -> list[str]:
    info = MODELS[model]
    metric = METRICS[info.task][0]
    fp = seed_values(rows, model, "fp")
    fp_mean = mean(fp.values())
    if info.task == "classification":
        lines = [f"## {info.heading}: Fashion-MNIST classification", ""]
        lines += [f"`{model}` {size.model_kwargs or '(default size)'}. FP: trained once ({count(size.fp_epochs, 'epoch')} on "
                  f"{size.fp_train_subset or 60000} training images, seed {next(iter(fp), '–')}); every quantized run "
                  f"starts from it and trains {count(size.qat_epochs, 'epoch')} on a fixed subset of "
                  f"{size.qat_train_subset or 60000} training images. Best test top-1 over the epochs, on "
                  f"{size.val_subset or 10000} test images; mean ± sample standard deviation over seeds "
                  f"{', '.join(map(str, seeds))}.", ""]
    else:
        lines = [f"## {info.heading}: super-resolution ×{info.scale}", ""]
        lines += [f"`{model}` {size.model_kwargs} on the training photos of `scripts/make_sr_demo_data.py` "
                  f"({size.repeat} random {size.patch_size}-pixel patches per photo and epoch); FP {count(size.fp_epochs, 'epoch')}, "
                  f"each quantized run {count(size.qat_epochs, 'epoch')} from it. PSNR (Y channel, {info.scale}-pixel "
                  f"border cropped) on the validation photos, best epoch; seeds {', '.join(map(str, seeds))}.", ""]
    lines += [f"| method | bits (w/a) | {metric} | Δ vs FP | per seed | train time per run (min) |",
              "|---|---|---:|---:|---|---:|"]
    times = lambda method, bits=None: minutes(r["time_s"] for r in rows if r["model"] == model and  # noqa: E731
                                              r["method"] == method and (bits is None or r["bits"] == bits))
    if info.task == "superresolution":
        bicubic = seed_values(rows, model, "bicubic")
        lines.append(f"| bicubic | – | {cell(list(bicubic.values()), digits)} | "
                     f"{signed(mean(bicubic.values()) - fp_mean)} | – | – |")
    lines.append(f"| FP | 32/32 | {cell(list(fp.values()), digits)} | – | {listing(fp.values(), digits)} | "
                 f"{times('fp')} |")
    for bits in sorted(info.bits):
        for method in METHODS:
            found = seed_values(rows, model, method, bits)
            lines.append(f"| {METHOD_NAMES[method]} | {bits}/{bits} | {cell(list(found.values()), digits)} | "
                         f"{signed(mean(found.values()) - fp_mean)} | {listing(found.values(), digits)} | "
                         f"{times(method, bits)} |")
    lines += ["", "RUPQ − LSQ+ per seed (same FP model and seed for both), against the seed-to-seed spread "
              "(the larger standard deviation of the two cells):", ""]
    lines += ["| method | bits (w/a) | RUPQ − LSQ+ | per seed | spread | verdict |", "|---|---|---:|---|---:|---|"]
    for bits in sorted(info.bits):
        rupq, lsq = seed_values(rows, model, "rupq", bits), seed_values(rows, model, "lsqplus", bits)
        difference, noise = paired(rupq, lsq), spread(rupq, lsq)
        lines.append(f"| RUPQ − LSQ+ | {bits}/{bits} | {difference_cell(difference)} | "
                     f"{listing(difference, digits, sign=True)} | "
                     f"{'–' if math.isnan(noise) else f'{noise:.{digits}f}'} | {verdict(difference, noise)} |")
    lines.append("")
    return lines


def ablation_finding(name: str, moved: list[float], noise: float, gap: float, after: float) -> tuple[str, str]:
    """``(kind, sentence)`` on what changing one ingredient did to RUPQ in a cell it does not win;
    kind: closes, part, helps, none or unknown."""
    what = ABLATIONS[name][0].removeprefix("RUPQ ")
    if not moved:
        return "unknown", f"{what}: not finished."
    change = mean(moved)
    amount = f"{change:+.2f} (spread {noise:.2f})"
    if math.isnan(noise):
        return "unknown", f"{what}: {amount} with one seed, no spread to judge it by."
    if change > noise and after >= 0:
        return "closes", (f"{what}: RUPQ gains {amount} and reaches LSQ+ ({after:+.2f}): this ingredient of RUPQ's "
                          "recipe is what costs it this cell.")
    if change > noise:
        return "part", f"{what}: RUPQ gains {amount}, but stays {after:+.2f} against LSQ+: it explains part of the gap of {gap:+.2f}."
    if change < -noise:
        return "helps", f"{what}: RUPQ loses {amount}: this ingredient helps RUPQ here, the gap comes from elsewhere."
    return "none", f"{what}: no change beyond the spread ({amount})."


def ablation_reason(findings: list[tuple[str, str, str]], gap: float, noise: float, ablation_noise: float) -> str:
    """The cell's conclusion from its findings ``(ablation label, kind, sentence)``; ``noise`` is the
    seed spread of the RUPQ and LSQ+ cells, ``ablation_noise`` the largest of the ablated runs'."""
    closing = [label for label, kind, _ in findings if kind == "closes"]
    partial = [label for label, kind, _ in findings if kind == "part"]
    if closing:
        return f"**Reason:** {' and '.join(closing)} reaches LSQ+: that ingredient costs RUPQ this cell."
    if partial:
        return f"**Reason, in part:** {' and '.join(partial)} narrows the gap; the rest is not explained by these ablations."
    if any(kind == "unknown" for _, kind, _ in findings) or math.isnan(noise):
        return "**Reason:** not established (unfinished runs or a single seed)."
    if abs(gap) <= noise:
        return (f"**Reason:** no single ingredient moves RUPQ beyond the seed spread, and the gap itself ({gap:+.2f}) "
                f"is within the spread ({noise:.2f}): at this budget the two methods are tied in this cell.")
    if abs(gap) <= ablation_noise:
        return (f"**Reason:** too small to attribute. The gap ({gap:+.2f}) is consistent over the seeds (spread "
                f"{noise:.2f}) but smaller than the seed spread of the ablated runs ({ablation_noise:.2f}): no single "
                "ingredient of the recipe accounts for it at this number of seeds, and RUPQ and LSQ+ are within "
                f"{abs(gap):.2f} of each other here.")
    return (f"**Reason not found:** the gap ({gap:+.2f}) exceeds the spread ({noise:.2f}), but neither change closes "
            "it; what remains different between the recipes is the weight standardization and the initializers.")


def ablation_section(rows) -> list[str]:
    lines = ["## Ablations", ""]
    lines += ["For every cell where RUPQ's mean is not above LSQ+'s, the same command reran RUPQ with one "
              "ingredient of its recipe changed towards LSQ+'s, with the same seeds and FP model: "
              + "; ".join(f"*{label}*" for label, _ in ABLATIONS.values()) + ". The original authors' README "
              "notes that input standardization needs tuning; the optimizer is the other half of RUPQ's "
              "recipe (Adam with per-kind learning rates instead of SGD).", ""]
    cells = sorted({(r["model"], r["bits"]) for r in rows if r["method"].startswith("rupq:")},
                   key=lambda cell: (list(MODELS).index(cell[0]), cell[1]))
    if not cells:
        return lines + ["No cell needed one: RUPQ's mean was above LSQ+'s everywhere.", ""]
    for model, bits in cells:
        digits = 2
        metric = METRICS[MODELS[model].task][0]
        rupq, lsq = seed_values(rows, model, "rupq", bits), seed_values(rows, model, "lsqplus", bits)
        gap = mean(paired(rupq, lsq))
        lines += [f"### {MODELS[model].heading} {bits}/{bits}", ""]
        lines += [f"| method | bits (w/a) | {metric} | per seed | Δ vs RUPQ | Δ vs LSQ+ |", "|---|---|---:|---|---:|---:|"]
        lines.append(f"| LSQ+ | {bits}/{bits} | {cell(list(lsq.values()), digits)} | {listing(lsq.values(), digits)} | "
                     f"{signed(-gap)} | – |")
        lines.append(f"| RUPQ | {bits}/{bits} | {cell(list(rupq.values()), digits)} | {listing(rupq.values(), digits)} | "
                     f"– | {signed(gap)} |")
        findings, ablation_spreads = [], []
        for name, (label, _) in ABLATIONS.items():
            variant = seed_values(rows, model, f"rupq:{name}", bits)
            ablation_spreads.append(spread(variant))
            moved, after = paired(variant, rupq), mean(paired(variant, lsq))
            lines.append(f"| {label} | {bits}/{bits} | {cell(list(variant.values()), digits)} | "
                         f"{listing(variant.values(), digits)} | {signed(mean(moved))} | {signed(after)} |")
            findings.append((label, *ablation_finding(name, moved, spread(variant, rupq), gap, after)))
        lines += ["", *(f"- {sentence}" for _, _, sentence in findings), "",
                  ablation_reason(findings, gap, spread(rupq, lsq), largest(ablation_spreads)), ""]
    return lines


BOUND_GRADIENT_RAW = "bound_gradient_results.json"
BOUND_GRADIENT_BEGIN = "<!-- bound_gradient ablation (bench/reproduce.py --ablation bound_gradient) -->"
BOUND_GRADIENT_END = "<!-- end of the bound_gradient ablation -->"
RULE_NAMES = {1.0: "μ = 1", 0.5: "μ = ½"}


def offsets_cell(runs: list[list[float]]) -> str:
    """Mean |offset| over the runs (each run: the mean over its half-wave input offsets), and how
    many of all those offsets are exactly 0."""
    runs = [offsets for offsets in runs if offsets]
    if not runs:
        return "–"
    everything = [value for offsets in runs for value in offsets]
    zeros = sum(value == 0.0 for value in everything)
    return f"{mean(mean(abs(v) for v in offsets) for offsets in runs):.3g} ({zeros}/{len(everything)} at 0)"


def bound_gradient_section(raw: dict) -> list[str]:
    """The ``--ablation bound_gradient`` section of RESULTS.md from its raw results."""
    rows, trained_by = raw["rows"], raw["trained_by"]
    (one, one_rule), (half, half_rule) = BOUND_GRADIENT_RULES.items()
    lines = [BOUND_GRADIENT_BEGIN, "## Ablation: the gradient on a clip bound (`bound_gradient`)", ""]
    lines += [f"Generated by `{trained_by['command']}` (wall-clock {trained_by['wall_s'] / 60:.1f} min on "
              f"{raw['machine']['cores']} cores, torch {raw['machine']['torch']}). Every quantized run of the models "
              "below trained twice from the same FP model and seed, once per rule for the gradient an element "
              f"exactly on a clip bound passes to the input: {RULE_NAMES[one]} (`bound_gradient: {one}`, the default: "
              f"what the paper's runs computed, torch ≤ 2.13's clamp) and {RULE_NAMES[half]} (`bound_gradient: "
              f"{half}`: the original code on torch ≥ 2.14, pytorch/pytorch#191142). ½ − 1: the per-seed "
              "difference, against the seed-to-seed spread (the larger sample standard deviation of the two "
              "cells). Offsets: the learned offset of each half-wave input quantizer (inputs after a ReLU, whose "
              "zeros sit on the lower bound while the offset is 0) in the run's `model.ckpt`, as mean |o| over "
              "the runs of the cell and how many of them are exactly 0.", ""]
    finished = len([r for r in rows if r["method"] != "fp"])
    expected = raw["expected_runs"] - len(raw["models"])
    if finished < expected:
        lines += [f"**Incomplete: {finished} of the {expected} quantized runs had finished.**", ""]
    lines += ["| model | method | bits (w/a) | μ = 1 | μ = ½ | ½ − 1 | per seed | spread | verdict | "
              "offsets, μ = 1 | offsets, μ = ½ |", "|---|---|---|---:|---:|---:|---|---:|---|---:|---:|"]
    beyond, offsets = [], {one: [], half: []}
    for model in raw["models"]:
        digits = 2
        for bits in sorted(MODELS[model].bits):
            for method in METHODS:
                cells = {value: seed_values(rows, model, f"{method}:{rule}", bits)
                         for value, rule in BOUND_GRADIENT_RULES.items()}
                difference, noise = paired(cells[half], cells[one]), spread(cells[one], cells[half])
                judged = verdict(difference, noise, better="μ = ½ better", worse="μ = 1 better")
                runs = {value: [r.get("offsets") or [] for r in rows if r["model"] == model and r["bits"] == bits
                                and r["method"] == f"{method}:{rule}"] for value, rule in BOUND_GRADIENT_RULES.items()}
                for value in offsets:
                    offsets[value] += runs[value]
                if judged.endswith("better"):
                    beyond.append(f"{MODELS[model].heading} {METHOD_NAMES[method]} {bits}/{bits} ({judged})")
                lines.append(f"| {MODELS[model].heading} | {METHOD_NAMES[method]} | {bits}/{bits} | "
                             f"{cell(list(cells[one].values()), digits)} | {cell(list(cells[half].values()), digits)} | "
                             f"{difference_cell(difference)} | {listing(difference, digits, sign=True)} | "
                             f"{'–' if math.isnan(noise) else f'{noise:.{digits}f}'} | {judged} | "
                             f"{offsets_cell(runs[one])} | {offsets_cell(runs[half])} |")
    lines += ["", "Metric: top-1 (%) on Fashion-MNIST for small_resnet, PSNR (dB) for EDSR, best epoch, as in the "
              "main tables.", ""]
    lines.append("- Accuracy / PSNR: " + ("cells beyond the seed spread: " + "; ".join(beyond) + "."
                                          if beyond else "no cell moves beyond the seed spread."))
    lines.append(f"- Offsets: {RULE_NAMES[one]} {offsets_cell(offsets[one])}, {RULE_NAMES[half]} "
                 f"{offsets_cell(offsets[half])} (mean |o| over all runs, offsets exactly 0 of all).")
    return lines + ["", BOUND_GRADIENT_END, ""]


def splice_section(text: str, section: list[str]) -> str:
    """``text`` (a RESULTS.md) with ``section`` in place of an earlier copy of it, or before the
    configuration notes, or at the end."""
    block = "\n".join(section)
    if BOUND_GRADIENT_BEGIN in text and BOUND_GRADIENT_END in text:
        before, rest = text.split(BOUND_GRADIENT_BEGIN, 1)
        after = rest.split(BOUND_GRADIENT_END, 1)[1].lstrip("\n")
        return before + block + after
    anchor = "## How the runs were configured"
    if anchor in text:
        before, after = text.split(anchor, 1)
        return before + block + "\n" + anchor + after
    return text.rstrip("\n") + "\n\n" + block


def write_bound_gradient_report(rows: list[dict], args, budget, trained_by: dict, out: Path, expected: int) -> Path:
    """``OUT/bound_gradient_results.json`` and the ablation's section of ``OUT/RESULTS.md`` (which a
    later main report keeps: it reads the json)."""
    out.mkdir(parents=True, exist_ok=True)
    raw = {"command": args.command_line, "trained_by": trained_by, "budget": asdict(budget), "machine": machine(),
           "models": list(args.models), "seeds": args.seeds, "sr_seeds": args.sr_seeds, "expected_runs": expected,
           "rows": rows}
    (out / BOUND_GRADIENT_RAW).write_text(json.dumps(raw, indent=2) + "\n")
    report = out / "RESULTS.md"
    text = report.read_text() if report.is_file() else "# Reproduction report: full precision vs LSQ+ vs RUPQ\n"
    report.write_text(splice_section(text, bound_gradient_section(raw)))
    return report


def plot(rows: list[dict], models: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(2, len(models))
    rows_of_panels = math.ceil(len(models) / columns)
    figure, axes = plt.subplots(rows_of_panels, columns, figsize=(5.5 * columns, 3.8 * rows_of_panels), dpi=110,
                                squeeze=False)
    for axis, model in zip(axes.flat, models):
        info = MODELS[model]
        for method, style in (("fp", "--"), ("bicubic", ":")):
            found = list(seed_values(rows, model, method).values())
            if found:
                axis.axhline(mean(found), color="black", linestyle=style,
                             label=f"{METHOD_NAMES[method]} ({mean(found):.2f})")
        bit_widths = sorted(info.bits)
        for offset, (method, color) in zip((-0.04, 0.04), (("lsqplus", "tab:orange"), ("rupq", "tab:blue"))):
            points = [(bits, *summary(list(seed_values(rows, model, method, bits).values()))) for bits in bit_widths]
            points = [point for point in points if not math.isnan(point[1])]
            if points:
                bits, means, spreads = zip(*points)
                axis.errorbar([b + offset for b in bits], means, yerr=spreads, marker="o", capsize=4, color=color,
                              label=METHOD_NAMES[method])
        axis.set_xticks(bit_widths, [f"w{b}a{b}" for b in bit_widths])
        axis.set_ylabel(METRICS[info.task][1])
        axis.set_title(f"{info.heading} (mean ± std over seeds)", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(models):]:
        axis.set_visible(False)
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


def shown(path: Path) -> str:
    """A path as the reader can use it: relative to the working folder when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def configuration_notes(budget, logdir) -> list[str]:
    sr_lr = {model: size.fp_lr for model, size in budget.models.items()
             if MODELS[model].task == "superresolution" and size.fp_lr is not None}
    return [
        "## How the runs were configured", "",
        "Each run's config is derived from the paper's config of the same method and bit width "
        "(`rupq/examples/{float,quantized}/classification/resnet18/` for small_resnet, `.../mobilenet_v2/`, "
        "`.../superresolution/edsr/` and `.../srresnet/`). Kept verbatim: quantizers (`StepOffsetQuantizer` "
        "inputs, per-channel `StepQuantizer` weights), initializers, `Standardization` (RUPQ only), optimizers and "
        "learning rates (RUPQ: Adam for `quant_weight` and `quant_input` at the paper's rates; LSQ+: SGD with "
        "momentum for all quantization parameters), the 8-bit first (and, in SR, last) layers, the half-wave rules "
        "and MobileNet-v2's `BatchNormReestimationCallback`. Replaced: the dataset, the model size (MobileNet-v2 "
        "keeps torchvision's blocks and layer names, with a one-channel stem and less downsampling for 28×28 "
        "images), the epochs, the cosine `T_max` (= epochs × iterations per epoch, the same whole-schedule "
        "cosine as on ImageNet) and the step milestones (same fraction of training), and `seed:`. The FP model "
        "of each model is trained once; the seeds vary the quantized runs (initialization batches, data order, "
        "augmentation), which is what the RUPQ − LSQ+ comparison needs: both methods start from the same FP "
        "weights. The TensorBoard picture callback `QuantImagesCallback` is left out (visualization only)."
        + "".join(f" The FP {MODELS[m].heading}'s Adam learning rate is {lr} instead of the paper config's, which "
                  "is made for hundreds of thousands of iterations (the quantized runs keep the paper's rates)."
                  for m, lr in sr_lr.items())
        + f" The derived files are kept in `{shown(logdir)}/configs/`.", ""]


def write_report(rows: list[dict], args, budget, trained_by: dict, out: Path, expected: int) -> Path:
    """``OUT/RESULTS.md``, ``OUT/reproduction.png`` and ``OUT/reproduction_results.json``.

    ``trained_by``: ``{"command", "wall_s", "load_average"}`` of the invocation that trained the runs
    (with ``--report-only``, the one recorded by the report this one replaces).
    """
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    wall_total, load = trained_by["wall_s"], trained_by["load_average"]
    run_rows = [r for r in rows if r["method"] != "bicubic"]
    lines = ["# Reproduction report: full precision vs LSQ+ vs RUPQ", ""]
    lines += [f"Generated by `{trained_by['command']}`. Every number below was measured by that command on the "
              "machine described here, except those in the last section, which are marked *published*.", ""]
    if trained_by["command"] != args.command_line:
        lines += [f"This copy of the report was rewritten from the same runs by `{args.command_line}`.", ""]
    planned = len([r for r in run_rows if not r["method"].startswith("rupq:")])
    if planned < expected:
        lines += [f"**Incomplete: {planned} of the {expected} training runs had finished when this report was "
                  "written (`--report-only`); the others are marked *not finished*. Rerun the command below "
                  "to train the rest (finished runs are reused) and regenerate the report.**", ""]
    wall_runs = sum(r["wall_s"] for r in run_rows)
    cpu_runs = sum(r["cpu_s"] for r in run_rows if not math.isnan(r["cpu_s"]))
    lines += ["## Machine and time", ""]
    lines += [f"- CPU: {info['cpu']}, {info['cores']} usable cores ({info['logical_cpus']} logical CPUs); GPU: {info['gpu']}",
              f"- torch {info['torch']}, Python {info['python']}, {info['platform']}",
              f"- budget `{args.budget}`: {budget.description}",
              f"- classification seeds {', '.join(map(str, args.seeds))}; super-resolution seeds "
              f"{', '.join(map(str, args.sr_seeds))}",
              f"- **wall-clock of that command: {wall_total / 60:.1f} min**, {args.jobs} runs at a time with "
              f"{args.threads} thread(s) each; {len(run_rows)} training runs, {wall_runs / 60:.1f} min of run "
              "wall-clock in all (runs reused from an earlier invocation count with their own time)",
              f"- CPU time of the training runs: {cpu_runs / 60:.1f} min, i.e. {cpu_runs / max(wall_total, 1e-9):.2f} "
              f"of {info['cores']} cores busy on average over the invocation; 1-minute load average "
              f"{' → '.join(f'{x:.1f}' for x in load)} (start → end). A load above {info['cores']} means other "
              "work shared the cores and the wall-clock is inflated accordingly.", ""]

    lines += ["## Summary", ""]
    lines += ["| model | bits (w/a) | RUPQ − LSQ+ | verdict |", "|---|---|---:|---|"]
    for model in args.models:
        for bits in sorted(MODELS[model].bits):
            rupq, lsq = seed_values(rows, model, "rupq", bits), seed_values(rows, model, "lsqplus", bits)
            difference = paired(rupq, lsq)
            lines.append(f"| {MODELS[model].heading} | {bits}/{bits} | "
                         f"{difference_cell(difference)} | "
                         f"{verdict(difference, spread(rupq, lsq))} |")
    lines += ["", "Verdict: the mean difference against the seed-to-seed spread of the two cells (section per "
              "model below); cells whose mean is not above LSQ+'s have an ablation (section *Ablations*).", ""]
    picture = out / "reproduction.png"
    plot(rows, list(args.models), picture)
    lines += [f"![LSQ+ and RUPQ against bit width, per model]({picture.name})", ""]

    for model in args.models:
        seeds = args.seeds if MODELS[model].task == "classification" else args.sr_seeds
        lines += model_section(rows, model, budget.models[model], seeds)
    lines += ablation_section(rows)
    if (out / BOUND_GRADIENT_RAW).is_file():
        lines += bound_gradient_section(json.loads((out / BOUND_GRADIENT_RAW).read_text()))
    lines += configuration_notes(budget, args.logdir)
    lines += ["Regenerate:", "", "```bash", trained_by["command"], "```", ""]

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
    raw = {"command": args.command_line, "trained_by": trained_by, "budget": asdict(budget), "machine": info,
           "rows": rows}
    (out / "reproduction_results.json").write_text(json.dumps(raw, indent=2) + "\n")
    return report
