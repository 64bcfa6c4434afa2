"""Reproduction report: full precision vs LSQ+ vs RUPQ at 2–4 bits, on data that is on disk.

    python bench/reproduce.py --budget cpu --out docs

Classification on Fashion-MNIST with ``small_resnet`` (the ResNet-18 recipes) and ``mobilenet_v2``
(its own recipes, BatchNorm re-estimation included), at w2a2, w3a3 and w4a4; super-resolution with
EDSR ×2 and SRResNet ×4 on the real-photo demo set of ``scripts/make_sr_demo_data.py``, at w2a2 and
w4a4, against bicubic upscaling. Each model's FP model is trained once; every quantized run starts
from its ``model.ckpt`` (``--load``), once per seed. Where RUPQ's mean is not above LSQ+'s, the
command reruns RUPQ with one ingredient changed (``bench/reproduction/derive.py: ABLATIONS``) and
reports what moved.

Every run is an ordinary ``rupq/main.py --config PAPER_CONFIG --set …`` run: the paper's config with
command-line overrides of the dataset, the model size, the epochs, the schedule length and the seed
(``bench/reproduction/derive.py``); the effective configs are written to ``LOGDIR/configs/``.

``--budget`` picks the size (``bench/reproduction/budgets.py``): ``tiny`` (a smoke test), ``cpu``
(the whole report in about an hour on 2 cores), ``gpu`` (full data, longer schedules, full-size
models). Runs go ``--jobs`` at a time. A finished run whose config is unchanged is reused, so an
interrupted report resumes where it stopped (``--fresh`` retrains everything), and
``--report-only`` writes the report from the runs finished so far without training.

``--ablation bound_gradient`` trains something else: LSQ+ and RUPQ with each rule for the gradient
on a clip bound (μ = 1, the default, and μ = ½; ``bench/reproduction/derive.py``) on small_resnet
(3 seeds) and EDSR (2 seeds) at every bit width of the report, from the same FP models (reused when
the main report trained them in the same ``--logdir``). It writes ``OUT/bound_gradient_results.json``
and its section of ``OUT/RESULTS.md``: the accuracy / PSNR difference against the seed spread per
cell, and the mean |offset| of the half-wave input quantizers after training.

The report ``OUT/RESULTS.md`` holds the tables, the machine, the times, a plot
``OUT/reproduction.png`` and the commands for the paper's full experiments; the raw numbers go to
``OUT/reproduction_results.json``.
"""

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

# `python bench/reproduce.py` puts bench/ first on the import path: `reproduction` is bench/reproduction/.
from reproduction.budgets import BUDGETS, METHODS, MODELS, REPO
from reproduction.derive import (
    ABLATIONS,
    BOUND_GRADIENT_MODELS,
    BOUND_GRADIENT_RULES,
    ablation_config,
    bound_gradient_config,
    run_config,
)
from reproduction.report import rupq_not_better, write_bound_gradient_report, write_report
from reproduction.runs import Job, Runner, half_wave_input_offsets, run_jobs

SR_DEMO_SCRIPT = REPO / "scripts" / "make_sr_demo_data.py"


def load_sr_demo_module():
    spec = importlib.util.spec_from_file_location("make_sr_demo_data", SR_DEMO_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Plan:
    """The jobs of one report and the ablations they call for."""

    def __init__(self, args, budget, sr_root: Path):
        self.args, self.budget, self.sr_root = args, budget, sr_root
        self.jobs: list[Job] = []

    def seeds(self, model: str) -> list[int]:
        return self.args.seeds if MODELS[model].task == "classification" else self.args.sr_seeds

    def job(self, model, method, bits, seed, derived, needs=None) -> Job:
        variant = method.replace(":", "_")
        name = "fp" if method == "fp" else f"w{bits}a{bits}_{variant}"
        folder = Path(model) if method == "fp" else Path(model) / f"seed_{seed}"
        return Job((model, method, bits, seed), derived, self.args.logdir / folder / name,
                   self.args.logdir / "configs" / folder / f"{name}.yaml", needs)

    def config(self, model, method, bits, seed):
        return run_config(model, method, bits, self.budget.models[model], seed, self.args.fashion_root, self.sr_root)

    def build(self) -> list[Job]:
        """Every model's FP job first (they run longest and everything waits for them), then the
        quantized jobs, seed by seed, so that a report cut short has whole seeds."""
        fps = {}
        for model in self.args.models:
            fp_seed = self.seeds(model)[0]
            fps[model] = self.job(model, "fp", None, fp_seed, self.config(model, "fp", None, fp_seed))
        self.jobs = list(fps.values())
        for index in range(max(len(self.args.seeds), len(self.args.sr_seeds))):
            for model in self.args.models:
                if index >= len(self.seeds(model)):
                    continue
                seed = self.seeds(model)[index]
                for bits in MODELS[model].bits:
                    for method in METHODS:
                        self.jobs += self.quantized_jobs(model, method, bits, seed, fps[model])
        return self.jobs

    def quantized_jobs(self, model, method, bits, seed, fp) -> list[Job]:
        return [self.job(model, method, bits, seed, self.config(model, method, bits, seed), fp)]

    def variants(self) -> int:
        """Quantized runs per (model, method, bit width, seed)."""
        return 1

    def expected_runs(self) -> int:
        return sum(1 + len(self.seeds(m)) * len(MODELS[m].bits) * len(METHODS) * self.variants()
                   for m in self.args.models)

    def ablations_after(self, finished: Job) -> list[Job]:
        """When the last run of a cell finishes and RUPQ's mean is not above LSQ+'s: the ablations of that cell."""
        model, method, bits, _ = finished.key
        if self.args.no_ablations or method not in METHODS:
            return []
        if not rupq_not_better(rows_of(self.jobs), model, bits, self.seeds(model)):
            return []
        rupq_jobs = {j.key[3]: j for j in self.jobs if j.key[:3] == (model, "rupq", bits)}
        new = [self.job(model, f"rupq:{name}", bits, seed, ablation_config(name, model, bits, rupq.derived), rupq.needs)
               for name in ABLATIONS for seed, rupq in sorted(rupq_jobs.items())]
        known = {j.key for j in self.jobs}
        new = [j for j in new if j.key not in known]
        self.jobs += new
        return new


class BoundGradientPlan(Plan):
    """``--ablation bound_gradient``: every quantized run of the report once per rule for the gradient
    on a clip bound, as method ``<method>:<rule>`` (``lsqplus:mu_half``); no RUPQ ablations."""

    def quantized_jobs(self, model, method, bits, seed, fp) -> list[Job]:
        base = self.config(model, method, bits, seed)
        return [self.job(model, f"{method}:{rule}", bits, seed, bound_gradient_config(value, base), fp)
                for value, rule in BOUND_GRADIENT_RULES.items()]

    def variants(self) -> int:
        return len(BOUND_GRADIENT_RULES)

    def ablations_after(self, finished: Job) -> list[Job]:
        return []


def metric_of(model: str) -> str:
    return "best_val_accuracy" if MODELS[model].task == "classification" else "best_val_PSNR"


def rows_of(jobs: list[Job]) -> list[dict]:
    rows = []
    for job in jobs:
        if job.result is None:
            continue
        model, method, bits, seed = job.key
        rows.append(dict(model=model, method=method, bits=32 if method == "fp" else bits, seed=seed,
                         value=job.result[metric_of(model)], time_s=job.result["time_s"],
                         wall_s=job.result["wall_s"], cpu_s=job.result["cpu_s"], run=job.result["version_dir"]))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="how much to train (see the docstring)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="classification seeds of the quantized runs (mean ± std over them)")
    parser.add_argument("--sr-seeds", type=int, nargs="+", help="super-resolution seeds (default: the first two of --seeds)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        help=f"default: all of them; with --ablation bound_gradient, {' and '.join(BOUND_GRADIENT_MODELS)}")
    parser.add_argument("--ablation", choices=["bound_gradient"],
                        help="train this ablation instead of the report (see the docstring); its own section of RESULTS.md")
    parser.add_argument("--no-ablations", action="store_true", help="skip the ablations of the cells RUPQ does not win")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (default 2)")
    parser.add_argument("--threads", type=int, help="threads per run (default: usable cores / --jobs)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for RESULTS.md, the plot and the raw json")
    parser.add_argument("--logdir", type=Path, help="parent folder of the runs (default runs/reproduce/BUDGET)")
    parser.add_argument("--fashion-root", help="Fashion-MNIST folder (default: datasets-info / Debian package)")
    parser.add_argument("--gpu", help="passed on to rupq/main.py")
    parser.add_argument("--fresh", action="store_true", help="retrain even runs that finished with the same config")
    parser.add_argument("--quiet", action="store_true", help="hide the runs' progress output")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the report from the runs that have finished (others: 'not finished')")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    args.command_line = "python bench/reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.sr_seeds = args.sr_seeds or args.seeds[:2]
    args.models = args.models or list(BOUND_GRADIENT_MODELS if args.ablation else MODELS)
    args.logdir = (args.logdir or Path("runs") / "reproduce" / args.budget).resolve()
    args.threads = args.threads or max(1, len(os.sched_getaffinity(0)) // args.jobs)
    if args.fashion_root:
        args.fashion_root = str(Path(args.fashion_root).resolve())
    budget = BUDGETS[args.budget]

    started, load_start = time.time(), os.getloadavg()[0]
    sr_root = args.logdir / "sr_demo"
    sr_models = [m for m in args.models if MODELS[m].task == "superresolution"]
    bicubic_rows = []
    if sr_models:
        demo = load_sr_demo_module()
        scales = sorted({MODELS[m].scale for m in sr_models})
        if not (sr_root / "datasets_info.yaml").is_file() or not all(
                (sr_root / "DIV2K" / "DIV2K_train_LR_bicubic" / f"X{s}").is_dir() for s in scales):
            print(f"[reproduce] building the real-photo demo set in {sr_root} (×{', ×'.join(map(str, scales))})",
                  flush=True)
            demo.build(sr_root, scales)
        for model in sr_models if not args.ablation else []:
            psnr = demo.bicubic_psnr(sr_root, MODELS[model].scale)
            bicubic_rows.append(dict(model=model, method="bicubic", bits=None, seed=args.sr_seeds[0], value=psnr,
                                     time_s=0.0, wall_s=0.0, cpu_s=0.0, run=str(sr_root)))

    plan = (BoundGradientPlan if args.ablation else Plan)(args, budget, sr_root)
    runner = Runner(["--gpu", args.gpu] if args.gpu else [], args.threads, args.fresh, args.quiet, args.report_only)
    jobs = run_jobs(plan.build(), runner, args.jobs, on_finish=plan.ablations_after)
    rows = bicubic_rows + rows_of(jobs)
    trained_by = {"command": args.command_line, "wall_s": time.time() - started,
                  "load_average": [load_start, os.getloadavg()[0]]}
    raw_name = "bound_gradient_results.json" if args.ablation else "reproduction_results.json"
    if args.report_only:
        trained_by = previous_training(args.out / raw_name, args.command_line) or trained_by
    if args.ablation:
        for row in rows:
            if row["method"] != "fp":
                row["offsets"] = half_wave_input_offsets(row["run"])
        report = write_bound_gradient_report(rows, args, budget, trained_by, args.out, plan.expected_runs())
    else:
        report = write_report(rows, args, budget, trained_by, args.out, plan.expected_runs())
    print(f"[reproduce] wrote {report} in {(time.time() - started) / 60:.1f} min", flush=True)


def previous_training(raw_path: Path, command: str) -> dict | None:
    """The ``{command, wall_s, load_average}`` of the invocation that trained the runs of the report at
    ``raw_path``, when it was the same command but for ``--report-only`` (and ``--fresh``, ``--quiet``):
    a rewritten report keeps saying how long training took."""
    if not raw_path.is_file():
        return None
    raw = json.loads(raw_path.read_text())
    previous = raw.get("trained_by") or {key: raw.get(key) for key in ("command", "wall_s", "load_average")}
    ignored = {"--report-only", "--fresh", "--quiet"}
    same = lambda text: [token for token in (text or "").split() if token not in ignored]  # noqa: E731
    if "--report-only" in (previous["command"] or "").split() or same(previous["command"]) != same(command):
        return None
    return previous


if __name__ == "__main__":
    main()
