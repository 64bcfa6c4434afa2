"""Each run's config: the paper's config of the same method and bit width, adapted by ``--set`` overrides.

The quantizers, initializers, optimizers, learning rates, bit-width exceptions and half-wave rules
are kept; only the dataset, the model size, the epochs, the schedule lengths (``T_max`` /
milestones, scaled to the same fraction of training) and ``seed`` are replaced. An ablation
changes one ingredient of the RUPQ recipe on top of that (``ABLATIONS``).
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .budgets import EXAMPLES, MODELS, ModelBudget
from rupq.config import load_config
from rupq.config_text import config_tree, config_value_text, effective_config_text
from rupq.tools.callbacks import BenchmarkSuperresolutionCallback, QuantImagesCallback


@dataclass(frozen=True)
class DerivedRun:
    """A paper config and the ``--set`` overrides that adapt it; ``rupq/main.py`` applies them."""

    source: Path
    overrides: tuple[str, ...]

    def effective_text(self) -> str:
        """What the run writes to ``version_N/config.yaml`` (compared to find a finished run to reuse)."""
        return effective_config_text(str(self.source), self.overrides)

    def tree(self) -> dict:
        """The effective config as plain data (``config_tree`` with the overrides applied)."""
        return config_tree(self.source, self.overrides)


def flow(value) -> str:
    """A Python value as a one-line YAML value (JSON is YAML)."""
    return json.dumps(value)


def paper_config(model: str, method: str, bits: int | None) -> Path:
    folder = MODELS[model].recipes
    if method == "fp":
        return EXAMPLES / "float" / folder / "fp.yaml"
    return EXAMPLES / "quantized" / folder / f"w{bits}a{bits}_{method}.yaml"


def scaled_schedules(optimizers: dict, total_steps: int, paper_iterations: int | None, source: Path) -> list[str]:
    """``T_max`` of every scheduler set to ``total_steps``; ``milestones`` scaled to the same fraction of training."""
    overrides = []
    for name, entry in optimizers.items():
        params = (entry.get("scheduler") or {}).get("params") or {}
        prefix = f"task.optimizers.{name}.scheduler.params"
        if "T_max" in params:
            overrides.append(f"{prefix}.T_max={total_steps}")
        if "milestones" in params:
            if paper_iterations is None:
                raise SystemExit(f"error: {source}: milestones without a known schedule length")
            scaled = [max(1, round(v / paper_iterations * total_steps)) for v in params["milestones"]]
            overrides.append(f"{prefix}.milestones={flow(scaled)}")
    return overrides


def callbacks_without_images(source: Path) -> list[str]:
    """Drop ``!QuantImagesCallback``: TensorBoard pictures only, not part of the recipe, and seconds of
    matplotlib per layer that the small budgets cannot spare (``QuantVarsCallback`` stays: Task adds it)."""
    callbacks = load_config(source)["task"].callbacks
    kept = [index for index, callback in enumerate(callbacks) if not isinstance(callback, QuantImagesCallback)]
    if len(kept) == len(callbacks):
        return []
    items = ", ".join(config_value_text(source, f"task.callbacks.{index}") for index in kept)
    return [f"task.callbacks=[{items}]"]


# ---- classification: Fashion-MNIST ----------------------------------------------------------------
def fashion_dataset(size: ModelBudget, train_subset: int | None, root: str | None) -> str:
    arguments = {"batch_size": size.batch_size}
    if train_subset is not None:
        arguments["train_subset"] = train_subset
    if size.val_subset is not None:
        arguments["val_subset"] = size.val_subset
    if root:
        arguments["root"] = str(root)
    return f"!FashionMNISTDataloader {flow(arguments)}"


def fashion_iterations(size: ModelBudget, train_subset: int | None, root: str | None) -> int:
    """Training iterations per epoch (the loader keeps the last, smaller batch)."""
    images = 60000 if train_subset is None else min(train_subset, 60000)
    if root is not None and train_subset is not None:
        images = min(images, count_fashion_images(root))
    return math.ceil(images / size.batch_size)


def count_fashion_images(root: str) -> int:
    from rupq.dataloaders.fashion_mnist import FILES, fashion_mnist_folder, find_file, read_idx

    return len(read_idx(find_file(fashion_mnist_folder(root), FILES["train"][1])))


def classification_config(model: str, method: str, bits: int | None, size: ModelBudget, seed: int,
                          root: str | None) -> DerivedRun:
    """The paper's ImageNet config of ``model``'s recipes on Fashion-MNIST: the dataset, the epochs,
    the schedule length and the seed replaced (and, for FP, the model and its size)."""
    source = paper_config(model, method, bits)
    fp = method == "fp"
    epochs = size.fp_epochs if fp else size.qat_epochs
    subset = size.fp_train_subset if fp else size.qat_train_subset
    overrides = [f"task.training_loop.dataset={fashion_dataset(size, subset, root)}", f"task.epochs={epochs}",
                 f"task.seed={seed}"]
    tree = config_tree(source)
    overrides += scaled_schedules(tree["task"]["optimizers"], epochs * fashion_iterations(size, subset, root),
                                  None, source)
    overrides += callbacks_without_images(source)
    if fp:
        overrides.append(f"task.model_arch={model}")
        if size.model_kwargs:
            overrides.append(f"task.model_kwargs={flow(size.model_kwargs)}")
        if size.fp_lr is not None:
            overrides += [f"task.optimizers.{name}.params.lr={size.fp_lr}" for name in tree["task"]["optimizers"]]
    return DerivedRun(source, tuple(overrides))


# ---- super-resolution: the real-photo demo set ---------------------------------------------------
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


def training_photos(data_root: Path) -> int:
    return len(list((data_root / "DIV2K" / "DIV2K_train_HR").glob("0[0-7]??.png")))


def sr_config(model: str, method: str, bits: int | None, size: ModelBudget, seed: int, data_root: Path) -> DerivedRun:
    """The paper's DIV2K config of ``model`` on the demo photos, with a smaller model."""
    source = paper_config(model, method, bits)
    fp = method == "fp"
    epochs = size.fp_epochs if fp else size.qat_epochs
    tree = config_tree(source)
    iterations = math.ceil(training_photos(data_root) * size.repeat / size.batch_size)
    dataset = "task.training_loop.dataset"
    overrides = [f"{dataset}.batch_size={size.batch_size}", f"{dataset}.patch_size={size.patch_size}",
                 f"{dataset}.repeat={size.repeat}", f"{dataset}.num_workers=0",
                 f"{dataset}.root={flow(str(data_root / 'DIV2K'))}",
                 f"task.epochs={epochs}", f"task.seed={seed}", "task.check_val_every_n_epochs=1"]
    overrides += scaled_schedules(tree["task"]["optimizers"], epochs * iterations, MODELS[model].paper_iterations,
                                  source)
    overrides += callbacks_without_images(source)
    # The Set14 benchmark reads the demo set's Set14 copy (the validation photos): it also logs bicubic's PSNR.
    benchmark = next(i for i, c in enumerate(load_config(source, overrides)["task"].callbacks)
                     if isinstance(c, BenchmarkSuperresolutionCallback))
    overrides.append(f"task.callbacks.{benchmark}.root={flow(str(data_root / 'Set14'))}")
    if fp:
        overrides.append(f"task.model_kwargs={flow(size.model_kwargs)}")
        if size.fp_lr is not None:
            overrides += [f"task.optimizers.{name}.params.lr={size.fp_lr}" for name in tree["task"]["optimizers"]]
    elif model == "edsr":
        blocks = size.model_kwargs["num_blocks"]
        for argument in ("input_bit_width", "weight_bit_width", "half_wave"):
            exceptions = (tree["task"]["model_parser"].get(argument) or {}).get("exceptions") or {}
            overrides.append(f"task.model_parser.{argument}.exceptions={flow(edsr_exceptions(exceptions, blocks))}")
    return DerivedRun(source, tuple(overrides))


def run_config(model: str, method: str, bits: int | None, size: ModelBudget, seed: int, fashion_root: str | None,
               sr_root: Path) -> DerivedRun:
    if MODELS[model].task == "classification":
        return classification_config(model, method, bits, size, seed, fashion_root)
    return sr_config(model, method, bits, size, seed, sr_root)


# ---- ablations: one ingredient of RUPQ's recipe changed ------------------------------------------
def without_input_standardization(model: str, bits: int, rupq: DerivedRun) -> list[str]:
    """The input quantizers without ``Standardization`` (the weights keep theirs)."""
    wrappers = config_tree(rupq.source)["task"]["model_parser"]["wrappers"]
    return [f"task.model_parser.wrappers.{name}.quantizer.input_quantizer.transformation=" for name in wrappers]


def with_lsqplus_optimizers(model: str, bits: int, rupq: DerivedRun) -> list[str]:
    """The optimizers of the paper's LSQ+ config of the cell (SGD with momentum for the quantization
    parameters in classification, one Adam for everything in super-resolution) instead of RUPQ's,
    with the run's schedule length."""
    lsq = paper_config(model, "lsqplus", bits)
    optimizers = config_tree(lsq)["task"]["optimizers"]
    schedule = rupq.tree()["task"]["optimizers"]
    steps = next(entry["scheduler"]["params"]["T_max"] for entry in schedule.values()
                 if "T_max" in ((entry.get("scheduler") or {}).get("params") or {}))
    return [f"task.optimizers={flow(optimizers)}", *scaled_schedules(optimizers, steps, MODELS[model].paper_iterations, lsq)]


# name -> (what the report calls it, overrides added to the RUPQ run's)
ABLATIONS = {
    "no_input_std": ("RUPQ without input standardization", without_input_standardization),
    "lsqplus_optimizers": ("RUPQ with LSQ+'s optimizers", with_lsqplus_optimizers),
}


def ablation_config(ablation: str, model: str, bits: int, rupq: DerivedRun) -> DerivedRun:
    return DerivedRun(rupq.source, rupq.overrides + tuple(ABLATIONS[ablation][1](model, bits, rupq)))


# ---- the bound_gradient ablation: μ on a clip bound, both methods ------------------------------------
#: The models and, per rule, the suffix of the method name (``lsqplus:mu_half``): μ = 1, the paper's
#: runs and the default; μ = ½, the original code on torch ≥ 2.14 (rupq/quantizers/fake_quantize.py).
BOUND_GRADIENT_MODELS = ("small_resnet", "edsr")
BOUND_GRADIENT_RULES = {1.0: "mu_1", 0.5: "mu_half"}


def bound_gradient_config(value: float, derived: DerivedRun) -> DerivedRun:
    """``derived`` (an LSQ+ or RUPQ run) with ``bound_gradient: value`` on every input and weight quantizer.

    Written out for μ = 1 too, although it is the default: the config text then differs from the
    main report's runs, so that a run trained before the default changed (when the formula passed
    half on a bound whatever the config said) is never reused as a μ = 1 run.
    """
    wrappers = config_tree(derived.source)["task"]["model_parser"]["wrappers"]
    overrides = [f"task.model_parser.wrappers.{name}.quantizer.{quantizer}.bound_gradient={value}"
                 for name in wrappers for quantizer in ("input_quantizer", "weight_quantizer")]
    return DerivedRun(derived.source, derived.overrides + tuple(overrides))
