"""How long the first training step of a quantized model takes, compilation included.

    python -m bench.bench_first_step [--device cpu|cuda] [--whole-model]

Runs the same child process twice on one fresh inductor cache folder: the first process
compiles every graph (a new machine), the second finds them in the on-disk cache (every later
run). Each child builds torchvision resnet18 with the RUPQ w4a4 recipe, initialises its
quantizers (eagerly, once) and times its first two training steps (CPU: batch 8, 112x112;
CUDA: batch 256, 224x224). ``--whole-model`` compiles the whole model (the Task's
``compile: true``) instead of the quantizers alone.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def child(device: str, whole_model: bool) -> None:
    import torch

    from bench.bench_qat import Variant, _batch, _sync

    images, labels = _batch(device)
    variant = Variant("rupq_compiled" if whole_model else "rupq", device, images, labels)
    variant.model.train()
    times = []
    for _ in range(2):
        _sync(device)
        start = time.perf_counter()
        variant.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    print(json.dumps({"first": times[0], "second": times[1], "graphs": graphs}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--whole-model", action="store_true", help="compile the whole model, not only the quantizers")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.device, args.whole_model)
        return
    what = "whole model compiled" if args.whole_model else "compiled quantizers"
    print(f"RUPQ w4a4 resnet18, {what}, {args.device}: first training steps in two processes sharing a fresh cache")
    with tempfile.TemporaryDirectory() as cache:
        environment = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, RUPQ_COMPILE="1")
        command = [sys.executable, "-m", "bench.bench_first_step", "--child", "--device", args.device]
        command += ["--whole-model"] if args.whole_model else []
        for label in ("new machine (empty cache)", "second process (cache)"):
            result = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                sys.exit(f"bench_first_step: the child process failed:\n{result.stderr[-2000:]}")
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"  {label:28s} first step {measured['first']:6.1f} s, second step {measured['second'] * 1e3:7.1f} ms, "
                  f"{measured['graphs']} graphs")


if __name__ == "__main__":
    main()
