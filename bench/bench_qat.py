"""Cost of quantization-aware training against full precision, measured side by side.

    python bench/bench_qat.py [--device cpu|cuda] [--steps N]

Prints, for torchvision resnet18 (CPU: batch 8, 112x112; CUDA: batch 256, 224x224, fp32):
training step time of RUPQ w4a4, LSQ+ w4a4, RUPQ w4a4 on the torch-ops path
(``RUPQ_NO_CPP_KERNELS=1``: what CUDA and builds without the C++ kernels run) and the
chain-of-ops reference formulation (the tests' oracle) relative to full precision, quantized eval relative to FP eval, the time to
initialise every quantizer, and peak memory of QAT relative to FP (each in its own
subprocess: max RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA). Timings are medians;
the models take turns step by step so that background load hits them alike. As in a real run,
where ``train()`` / ``eval()`` are called once per epoch or validation, the modes are set before
the timed steps, not inside them.
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torchvision  # noqa: E402

from bench._recipes import quantizer_reference, recipe_parser  # noqa: E402
from rupq.quantizers import MinErrorInitializer, initialize_quantizers  # noqa: E402
from rupq.quantizers.cpu_kernels import DISABLE_VARIABLE, kernels  # noqa: E402

TARGETS = {"train": 1.25, "train_minimum": 1.6, "eval": 1.10, "memory": 1.30, "init_s": 3.0}


def _shape(device: str) -> tuple[int, int]:
    return (256, 224) if device == "cuda" else (8, 112)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _batch(device: str):
    batch, size = _shape(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    return images, labels


@contextlib.contextmanager
def torch_ops_path(enabled: bool):
    """Within it, quantizers skip the C++ kernels (``RUPQ_NO_CPP_KERNELS=1``) when ``enabled``."""
    previous = os.environ.get(DISABLE_VARIABLE)
    if enabled:
        os.environ[DISABLE_VARIABLE] = "1"
    try:
        yield
    finally:
        if enabled:
            if previous is None:
                del os.environ[DISABLE_VARIABLE]
            else:
                os.environ[DISABLE_VARIABLE] = previous


def build(kind: str, device: str, images) -> torch.nn.Module:
    """``fp``, ``rupq`` (w4a4_rupq), ``rupq_torch`` (w4a4_rupq on the torch-ops path), ``lsqplus``
    (w4a4_lsqplus) or ``reference`` (RUPQ on the oracle)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().to(device)
    if kind != "fp":
        recipe = "w4a4_lsqplus" if kind == "lsqplus" else "w4a4_rupq"
        recipe_parser("resnet18", recipe).parse(model)
        initialize_quantizers(model, images)
        if kind == "reference":
            quantizer_reference().install_reference(model)
    return model


class _Trainer:
    def __init__(self, model, images, labels, torch_ops=False):
        self.model, self.images, self.labels = model, images, labels
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        self.torch_ops = torch_ops

    def step(self) -> None:
        with torch_ops_path(self.torch_ops):
            self._step()

    def _step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(self.model(self.images), self.labels)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def evaluate(self) -> None:
        with torch_ops_path(self.torch_ops):
            self.model(self.images)


def _timed(function, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    function()
    _sync(device)
    return time.perf_counter() - start


def interleaved_medians(functions: dict, device: str, steps: int, warmup: int) -> dict:
    times = {name: [] for name in functions}
    for iteration in range(warmup + steps):
        for name, function in functions.items():
            elapsed = _timed(function, device)
            if iteration >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def initialization_seconds(device: str, images) -> tuple[float, float]:
    """(initialize_quantizers wall time, of which inside MinErrorInitializer) for RUPQ w4a4 resnet18."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().to(device)
    recipe_parser("resnet18", "w4a4_rupq").parse(model)
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
    return total, spent[0]


def memory_child(kind: str, device: str, steps: int) -> None:
    """Runs in a subprocess: a few training steps, then prints the peak memory in bytes."""
    images, labels = _batch(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = _Trainer(build(kind, device, images), images, labels)
    trainer.model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        trainer.step()
    _sync(device)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _peak_rss_bytes()
    print(json.dumps({"peak_bytes": peak}))


def _peak_rss_bytes() -> int:
    """This process's peak resident set size.

    ``ru_maxrss`` survives ``execve``, so a child started from this (large) benchmark process
    would report the parent's peak; Linux's ``VmHWM`` belongs to the new image only.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(kind: str, device: str) -> int:
    command = [sys.executable, __file__, "--device", device, "--memory-child", kind]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def _verdict(value: float, target: float) -> str:
    return "met" if value <= target else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per model (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory-child", choices=["fp", "rupq"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.device, steps=3)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")

    images, labels = _batch(args.device)
    batch, size = _shape(args.device)
    print(f"resnet18, batch {batch}, {size}x{size}, fp32, {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {args.steps} steps after {args.warmup} warm-up")

    kernels_built = args.device == "cpu" and kernels() is not None  # builds them on first use
    print(f"C++ CPU kernels: {'in use' if kernels_built else 'not in use'}")
    init_total, init_min_error = initialization_seconds(args.device, images)

    kinds = ("fp", "rupq", "rupq_torch", "lsqplus", "reference") if kernels_built else ("fp", "rupq", "lsqplus", "reference")
    trainers = {
        kind: _Trainer(build(kind, args.device, images), images, labels, torch_ops=kind == "rupq_torch") for kind in kinds
    }
    for trainer in trainers.values():
        trainer.model.train()
    train = interleaved_medians({kind: trainer.step for kind, trainer in trainers.items()}, args.device, args.steps, args.warmup)
    eval_kinds = [kind for kind in ("fp", "rupq", "rupq_torch", "lsqplus") if kind in trainers]
    for kind in eval_kinds:
        trainers[kind].model.eval()
    evaluation = interleaved_medians({kind: trainers[kind].evaluate for kind in eval_kinds}, args.device, args.steps, args.warmup)
    memory = {kind: peak_memory(kind, args.device) for kind in ("fp", "rupq")}

    fp = train["fp"]
    print(f"\ntraining step   FP {fp * 1e3:8.1f} ms")
    names = {
        "rupq": "RUPQ w4a4",
        "rupq_torch": "RUPQ w4a4, torch ops (no C++ kernels)",
        "lsqplus": "LSQ+ w4a4",
        "reference": "chain-of-ops reference (RUPQ w4a4)",
    }
    for kind, label in names.items():
        if kind not in train:
            continue
        ratio = train[kind] / fp
        note = f"  target <= {TARGETS['train']} ({_verdict(ratio, TARGETS['train'])})" if kind in ("rupq", "lsqplus") else ""
        print(f"  {label:40s} {train[kind] * 1e3:8.1f} ms  ratio {ratio:5.2f}{note}")
    print(f"\neval            FP {evaluation['fp'] * 1e3:8.1f} ms")
    for kind in eval_kinds[1:]:
        ratio = evaluation[kind] / evaluation["fp"]
        note = f"  target <= {TARGETS['eval']} ({_verdict(ratio, TARGETS['eval'])})" if kind in ("rupq", "lsqplus") else ""
        print(f"  {names[kind]:40s} {evaluation[kind] * 1e3:8.1f} ms  ratio {ratio:5.2f}{note}")
    print(f"\ninitialize_quantizers (RUPQ w4a4, all 42 quantizers): {init_total:.2f} s, "
          f"of which MinErrorInitializer {init_min_error:.2f} s  target <= {TARGETS['init_s']} s ({_verdict(init_min_error, TARGETS['init_s'])})")
    unit = "max RSS" if args.device == "cpu" else "max allocated"
    ratio = memory["rupq"] / memory["fp"]
    print(f"peak memory ({unit}): FP {memory['fp'] / 2**20:.0f} MiB, RUPQ w4a4 {memory['rupq'] / 2**20:.0f} MiB, "
          f"ratio {ratio:.2f}  target <= {TARGETS['memory']} ({_verdict(ratio, TARGETS['memory'])})")


if __name__ == "__main__":
    main()
