"""Cost of quantization-aware training against full precision, measured side by side.

    python bench/bench_qat.py [--device cpu|cuda] [--steps N] [--model NAME] [--batch B] [--size S] [--variants KIND …]

torchvision resnet18 (CPU: batch 8, 112x112; CUDA: batch 256, 224x224; float32), SGD steps on
one fixed batch. ``--model`` takes any ``model_arch`` (``torchvision:efficientnet_b0``,
``timm:resnet18d``, …), quantized by the same recipes, whose 8-bit first layer (``conv1`` of
resnet18) becomes the model's first ``Conv2d``/``Linear``. Side by side in one process, the
models taking turns step by step so that background load hits them alike:

- ``FP eager``: the full-precision model;
- ``RUPQ w4a4`` / ``LSQ+ w4a4``: quantized by the paper's recipe, the quantizers compiled
  (the default: :mod:`rupq.quantizers.fake_quantize` under ``torch.compile``), the rest eager;
- ``RUPQ w4a4, eager formula``: the same formula uncompiled (``RUPQ_COMPILE=0``);
- ``chain-of-ops reference``: the formula of docs/quantization.md written literally (``bench/chain_reference.py``);
- ``first layer's input quantizer frozen``: RUPQ w4a4 without gradients for the first layer's
  input step and offset, so that autograd skips that layer's input gradient (the images need none): the
  difference to RUPQ w4a4 is what that gradient costs, the most a first-layer shortcut could save;
- ``weight quantizers only`` / ``input quantizers only``: RUPQ w4a4 with the other side's
  quantizers swapped for ``nn.Identity`` (training only): where the quantized step's extra time goes;
- ``quantizers return x`` / ``quantizers return x·s``: every quantizer of the RUPQ w4a4 model
  swapped for ``nn.Identity`` (the quantized layers' own cost) or for an eager multiplication by
  its step (the least autograd work that any quantizer with a learnable step adds: one pass over
  every weight and activation forward, the step's gradient backward, and conv1's input
  gradient); training only;
- ``FP compiled`` / ``RUPQ w4a4 compiled``: the whole model under ``torch.compile`` (the
  Task's ``compile: true``).

Also: the first step of each compiled variant (compilation included), eval (no autograd)
ratios, the time to initialise every quantizer, and peak memory of QAT against FP (each in its
own subprocess: max RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA). As in a real run,
``train()`` / ``eval()`` are set before the timed steps, not inside them.
"""

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.chain_reference import install_chain_reference
from rupq.config import load_config
from rupq.config_text import config_tree
from rupq.errors import RupqError
from rupq.models import create_model
from rupq.quantizers import MinErrorInitializer, initialize_quantizers
from rupq.quantizers.compiled import quantize
from rupq.quantizers.modules import QuantModule

RECIPES = Path(__file__).resolve().parents[1] / "rupq" / "examples" / "quantized" / "classification" / "resnet18"
DEFAULT_MODEL = "torchvision:resnet18"
RECIPE_FIRST_LAYER = "conv1"  # the recipes' per-layer exceptions name resnet18's first layer
TARGETS = {"train": 1.20, "train_compiled": 1.15, "eval": 1.10, "memory": 1.30, "init_s": 3.0}
NAMES = {
    "fp": "FP eager",
    "rupq": "RUPQ w4a4 (compiled quantizers)",
    "lsqplus": "LSQ+ w4a4 (compiled quantizers)",
    "rupq_eager": "RUPQ w4a4, eager formula",
    "rupq_no_input_grad": "RUPQ w4a4, {first} input quantizer frozen",
    "rupq_weights_only": "RUPQ w4a4, weight quantizers only",
    "rupq_inputs_only": "RUPQ w4a4, input quantizers only",
    "rupq_identity": "RUPQ w4a4 layers, quantizers return x",
    "rupq_times_step": "RUPQ w4a4 layers, quantizers return x*s",
    "reference": "chain-of-ops reference (RUPQ w4a4)",
    "fp_compiled": "FP compiled",
    "rupq_compiled": "RUPQ w4a4 compiled",
}


#: What is measured: the model (a ``model_arch``), batch and image size; ``main`` sets them.
SETUP = {"model": DEFAULT_MODEL, "batch": None, "size": None, "first": RECIPE_FIRST_LAYER}


def _shape(device: str) -> tuple[int, int]:
    batch, size = (256, 224) if device == "cuda" else (8, 112)
    return SETUP["batch"] or batch, SETUP["size"] or size


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _batch(device: str):
    batch, size = _shape(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    return images, labels


def first_layer(model: torch.nn.Module) -> str:
    """The name of the layer that reads the input: the model's first ``Conv2d``/``Linear``."""
    layers = (torch.nn.Conv2d, torch.nn.Linear)
    return next(name for name, module in model.named_modules() if isinstance(module, layers))


def recipe_parser(recipe: str, model: torch.nn.Module):
    """The ``ModelParser`` of ``rupq/examples/quantized/classification/resnet18/<recipe>.yaml``, its
    per-layer exceptions moved from resnet18's ``conv1`` to ``model``'s first layer."""
    path = RECIPES / f"{recipe}.yaml"
    first = first_layer(model)
    overrides = []
    if first != RECIPE_FIRST_LAYER:
        settings = config_tree(path)["model_parser"]
        for option in ("input_bit_width", "weight_bit_width", "half_wave"):
            exceptions = settings[option].get("exceptions") or {}
            moved = {first if name == RECIPE_FIRST_LAYER else name: value for name, value in exceptions.items()}
            overrides.append(f"model_parser.{option}.exceptions={json.dumps(moved)}")
    return load_config(path, overrides)["model_parser"]


def build_model(device: str) -> torch.nn.Module:
    return create_model(SETUP["model"]).to(device)


_initialized = {}


def initialized_model(recipe: str, device: str, images) -> torch.nn.Module:
    """A copy of the model quantized by ``recipe`` with its quantizers initialised on ``images``:
    initialised once per recipe (the variants start from the same state; on a large model each
    initialisation takes minutes on the CPU)."""
    if recipe not in _initialized:
        torch.manual_seed(0)
        model = build_model(device)
        recipe_parser(recipe, model).parse(model)
        initialize_quantizers(model, images)
        _initialized[recipe] = model
    return copy.deepcopy(_initialized[recipe])


class Variant:
    """One model of the comparison, with its optimizer; ``step()`` is one SGD training step."""

    def __init__(self, kind: str, device: str, images, labels):
        torch.manual_seed(0)
        self.kind, self.images, self.labels = kind, images, labels
        if kind != "fp" and kind != "fp_compiled":
            self.model = initialized_model("w4a4_lsqplus" if kind == "lsqplus" else "w4a4_rupq", device, images)
        else:
            self.model = build_model(device)
        if kind == "reference":
            install_chain_reference(self.model)
        if kind == "rupq_no_input_grad":
            first = next(layer for layer in self.model.modules() if isinstance(layer, QuantModule))
            first.quantizer.input_quantizer.requires_grad_(False)
        replaced = {
            "rupq_weights_only": ["input_quantizer"],
            "rupq_inputs_only": ["weight_quantizer"],
            "rupq_identity": ["input_quantizer", "weight_quantizer"],
            "rupq_times_step": ["input_quantizer", "weight_quantizer"],
        }.get(kind, [])
        for layer in self.model.modules():
            for role in replaced if isinstance(layer, QuantModule) else []:
                quantizer = getattr(layer.quantizer, role)
                setattr(layer.quantizer, role, MultiplyByStep(quantizer.step) if kind == "rupq_times_step" else torch.nn.Identity())
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        self.call = torch.compile(self.model, dynamic=True) if kind.endswith("_compiled") else self.model

    def _forward(self):
        if self.kind == "rupq_eager":
            with quantize.eagerly():
                return self.call(self.images)
        return self.call(self.images)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(self._forward(), self.labels).backward()
        self.optimizer.step()

    @torch.no_grad()
    def evaluate(self) -> None:
        self._forward()


class MultiplyByStep(torch.nn.Module):
    """``x · s`` with a quantizer's step ``s``: what every quantizer with a learnable step costs at least."""

    def __init__(self, step: torch.nn.Parameter):
        super().__init__()
        self.step = step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.step


def _timed(function, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    function()
    _sync(device)
    return time.perf_counter() - start


def interleaved_medians(functions: dict, device: str, steps: int, warmup: int) -> tuple[dict, dict, dict]:
    """``(medians, first-call times, failures)``: the first call of each is its compilation, if any.

    A whole model that ``torch.compile`` fails to compile (``*_compiled``: torch's compiler on a
    model it does not handle) is left out, its error in ``failures``; any other error stops the run.
    """
    times = {name: [] for name in functions}
    first, failures = {}, {}
    for iteration in range(warmup + steps):
        for name, function in functions.items():
            if name in failures:
                continue
            try:
                elapsed = _timed(function, device)
            except Exception as error:
                if iteration or not name.endswith("_compiled"):
                    raise
                failures[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"
                continue
            if iteration == 0:
                first[name] = elapsed
            elif iteration >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items() if values}, first, failures


def initialization_seconds(device: str, images) -> tuple[float, float, int]:
    """(initialize_quantizers wall time, of which inside MinErrorInitializer, number of quantizers)
    for the model at RUPQ w4a4."""
    torch.manual_seed(0)
    model = build_model(device)
    recipe_parser("w4a4_rupq", model).parse(model)
    spent = [0.0]
    original = MinErrorInitializer.__call__

    def timed(self, *args, **kwargs):
        _sync(device)
        start = time.perf_counter()
        result = original(self, *args, **kwargs)
        _sync(device)
        spent[0] += time.perf_counter() - start
        return result

    MinErrorInitializer.__call__ = timed
    try:
        total = _timed(lambda: initialize_quantizers(model, images), device)
    finally:
        MinErrorInitializer.__call__ = original
    return total, spent[0], 2 * sum(isinstance(layer, QuantModule) for layer in model.modules())


def memory_child(kind: str, device: str, steps: int) -> None:
    """Runs in a subprocess: a few training steps, then prints the peak memory in bytes."""
    images, labels = _batch(device)
    variant = Variant(kind, device, images, labels)
    variant.model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        variant.step()
    _sync(device)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss_bytes()
    print(json.dumps({"peak_bytes": peak}))


def _peak_rss_bytes() -> int:
    """This process's peak resident set size (``VmHWM``: ``ru_maxrss`` would survive ``execve``
    and report the large parent benchmark's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(kind: str, device: str) -> int:
    command = [sys.executable, "-m", "bench.bench_qat", "--device", device, "--memory-child", kind,
               "--model", SETUP["model"], "--batch", str(_shape(device)[0]), "--size", str(_shape(device)[1])]
    result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def _verdict(value: float, target: float) -> str:
    return f"target <= {target} ({'met' if value <= target else 'MISSED'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one compiles)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="any model_arch: torchvision:NAME, timm:NAME, …")
    parser.add_argument("--batch", type=int, help="batch size (default: 8 on the CPU, 256 on CUDA)")
    parser.add_argument("--size", type=int, help="image height and width (default: 112 on the CPU, 224 on CUDA)")
    parser.add_argument("--variants", nargs="+", choices=list(NAMES), default=list(NAMES), metavar="KIND",
                        help=f"the models to time (default: all; always with fp): {', '.join(NAMES)}")
    parser.add_argument("--memory-child", choices=["fp", "rupq"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    SETUP.update(model=args.model, batch=args.batch, size=args.size)
    try:
        SETUP["first"] = first_layer(create_model(args.model))
    except RupqError as error:
        parser.error(str(error))
    if args.memory_child:
        memory_child(args.memory_child, args.device, steps=3)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step compiles)")

    images, labels = _batch(args.device)
    batch, size = _shape(args.device)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"{args.model.removeprefix('torchvision:')}, batch {batch}, {size}x{size}, fp32, {device_name}, "
          f"torch {torch.__version__}; "
          f"medians of {args.steps} steps after {args.warmup} warm-up", flush=True)
    # Each part is printed as soon as it is measured: a run stopped by a time limit keeps what it had.
    init_total, init_min_error, quantizers = initialization_seconds(args.device, images)
    print(f"\ninitialize_quantizers (RUPQ w4a4, all {quantizers} quantizers): {init_total:.2f} s, "
          f"of which MinErrorInitializer {init_min_error:.2f} s  {_verdict(init_min_error, TARGETS['init_s'])}", flush=True)

    kinds = [kind for kind in NAMES if kind == "fp" or kind in args.variants]
    variants = {kind: Variant(kind, args.device, images, labels) for kind in kinds}
    for variant in variants.values():
        variant.model.train()
    train, first, failures = interleaved_medians({k: v.step for k, v in variants.items()}, args.device, args.steps,
                                                 args.warmup)
    print_training(train, first, failures)
    eval_kinds = [kind for kind in ("fp", "rupq", "lsqplus", "fp_compiled", "rupq_compiled")
                  if kind in variants and kind not in failures]
    for kind in eval_kinds:
        variants[kind].model.eval()
    evaluation, _, failures = interleaved_medians({k: variants[k].evaluate for k in eval_kinds}, args.device,
                                                  args.steps, args.warmup)
    print_eval(evaluation, eval_kinds, failures)

    if "rupq" not in variants:
        return
    memory = {kind: peak_memory(kind, args.device) for kind in ("fp", "rupq")}
    unit = "max RSS" if args.device == "cpu" else "max allocated"
    ratio = memory["rupq"] / memory["fp"]
    print(f"\npeak memory ({unit}): FP {memory['fp'] / 2**20:.0f} MiB, RUPQ w4a4 {memory['rupq'] / 2**20:.0f} MiB, "
          f"ratio {ratio:.2f}  {_verdict(ratio, TARGETS['memory'])}", flush=True)


def print_training(train: dict, first: dict, failures: dict) -> None:
    print(f"\ntraining step{'':31s}{'median':>10s}{'vs FP eager':>13s}{'vs FP compiled':>16s}   first step")
    for kind, label in NAMES.items():
        label = label.format(first=SETUP["first"])
        if kind not in train and kind not in failures:
            continue
        if kind in failures:
            print(f"  {label:42s}torch.compile failed: {failures[kind]}")
            continue
        against_fp = train[kind] / train["fp"]
        against_compiled = f"{train[kind] / train['fp_compiled']:16.2f}" if "fp_compiled" in train else f"{'-':>16s}"
        note = ""
        if kind == "rupq":
            note = _verdict(against_fp, TARGETS["train"])
        elif kind == "rupq_compiled" and "fp_compiled" in train:
            note = _verdict(train[kind] / train["fp_compiled"], TARGETS["train_compiled"])
        print(f"  {label:42s}{train[kind] * 1e3:8.1f} ms{against_fp:12.2f}{against_compiled}"
              f"{first[kind]:10.1f} s  {note}")
    if {"rupq", "rupq_no_input_grad"} <= train.keys():
        share = (train["rupq"] - train["rupq_no_input_grad"]) / train["rupq"]
        print(f"  {SETUP['first']}'s input gradient (only for its input quantizer's step and offset): {share:.1%} "
              "of the RUPQ step")
    if {"rupq", "rupq_weights_only", "rupq_inputs_only"} <= train.keys():
        extra = {side: train[f"rupq_{side}_only"] / train["fp"] - 1 for side in ("weights", "inputs")}
        print(f"  extra time over FP eager: weight quantizers {extra['weights']:+.0%}, input quantizers "
              f"{extra['inputs']:+.0%} (all of RUPQ: {train['rupq'] / train['fp'] - 1:+.0%})")
    if {"rupq_identity", "rupq_times_step"} <= train.keys():
        print(f"  quantizers returning x add {train['rupq_identity'] / train['fp'] - 1:+.0%}, returning x*s "
              f"{train['rupq_times_step'] / train['fp'] - 1:+.0%}: the least a learnable step costs at this size")


def print_eval(evaluation: dict, eval_kinds: list[str], failures: dict) -> None:
    print(f"\neval (no autograd){'':26s}{'median':>10s}{'vs FP eager':>13s}")
    for kind in eval_kinds:
        if kind in failures:
            print(f"  {NAMES[kind]:42s}torch.compile failed: {failures[kind]}")
            continue
        against = "fp" if not kind.endswith("_compiled") else "fp_compiled"
        reference = "FP compiled" if kind.endswith("_compiled") else "FP eager"
        if against not in evaluation:
            print(f"  {NAMES[kind]:42s}{evaluation[kind] * 1e3:8.1f} ms{'-':>12s} ({reference} failed)", flush=True)
            continue
        ratio = evaluation[kind] / evaluation[against]
        note = _verdict(ratio, TARGETS["eval"]) if kind == "rupq" else ""
        print(f"  {NAMES[kind]:42s}{evaluation[kind] * 1e3:8.1f} ms{ratio:12.2f} (vs {reference})  {note}", flush=True)


if __name__ == "__main__":
    main()
