#!/usr/bin/env bash
# The checks that need a GPU, in one script:
#   1. the compiled quantizer formula on CUDA against the CPU oracle (tests/quantizers/test_cuda.py);
#   2. bench/bench_qat.py --device cuda: QAT vs FP step time, batch 256, 224×224 (docs/performance.md);
#   3. training speed of a quantized model on all visible GPUs, in both multi-GPU modes:
#      one process, DataParallel:   python rupq/main.py --gpu 0,1,… …
#      one process per GPU, DDP:    torchrun --standalone --nproc_per_node N rupq/main.py …
#      and the steps per second of each: the quickstart's RUPQ w4a4 small ResNet on synthetic
#      28×28 images, global batch = per-GPU batch × N, one epoch of --steps iterations and one
#      validation batch (steps / time_s of results.json: warm-up step and validation included).
#
# Usage: scripts/gpu_check.sh [--only tests,bench,parallel] [--steps 50] [--batch_per_gpu 256]
#                            [--workdir DIR] [--dry-run [--gpus N]]
#   --only     run these of the three parts (1: tests, 2: bench, 3: parallel; default all), e.g.
#              one per call where a machine's command time is limited;
#   --dry-run  write the data and config, print the commands, run nothing (needs no GPU);
#              --gpus N pretends N GPUs are visible.
set -euo pipefail
cd "$(dirname "$0")/.."
# A GPU machine starts bare: the checkout itself is the `rupq` package (nothing pip-installed).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # lines reach a log as they are printed, also from a run stopped by a time limit

steps=50
batch_per_gpu=256
workdir=""
dry_run=0
gpus=""
parts="tests,bench,parallel"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --only) parts="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --batch_per_gpu) batch_per_gpu="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --gpus) gpus="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for value in "$steps" "$batch_per_gpu" ${gpus:+"$gpus"}; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: '$value' is not a positive integer" >&2; exit 2; }
done
[[ -z "$gpus" || $dry_run == 1 ]] || { echo "gpu_check: --gpus only goes with --dry-run" >&2; exit 2; }
IFS=, read -ra selected <<< "$parts"
for part in "${selected[@]}"; do
  [[ "$part" =~ ^(tests|bench|parallel)$ ]] || { echo "gpu_check: --only '$part': expected tests, bench or parallel" >&2; exit 2; }
done
wanted() { [[ ",$parts," == *",$1,"* ]]; }

python=${PYTHON:-python3}
if [[ -z "$gpus" ]]; then
  gpus=$("$python" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
fi
if [[ "$gpus" == 0 ]]; then
  echo "gpu_check: no CUDA GPU is visible (torch.cuda.device_count() is 0): nothing to measure; run it on a machine with GPUs" >&2
  exit 1
fi

# The GPUs as main.py's --gpu wants them: physical ids, so keep an existing CUDA_VISIBLE_DEVICES.
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  gpu_list="$CUDA_VISIBLE_DEVICES"
else
  gpu_list=$(seq -s, 0 $((gpus - 1)))
fi
batch=$((batch_per_gpu * gpus))
workdir=${workdir:-$(mktemp -d -t rupq_gpu_check.XXXXXX)}
mkdir -p "$workdir"

# Synthetic Fashion-MNIST files (idx format) and the config.
"$python" - "$workdir" "$batch" "$steps" <<'PYTHON'
import gzip
import sys
from pathlib import Path

import numpy as np

workdir, batch, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
data = workdir / "data"
data.mkdir(exist_ok=True)
rng = np.random.default_rng(0)
for split, count in (("train", batch * steps), ("t10k", batch)):
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = rng.integers(0, 256, (count, 28, 28)).astype(np.uint8)
    for name, array in (("images-idx3", images), ("labels-idx1", labels)):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(data / f"{split}-{name}-ubyte.gz", "wb") as handle:
            handle.write(header + array.tobytes())
recipe = Path("rupq/examples/quickstart/w4a4_rupq.yaml").read_text()
recipe = recipe.replace("dataset: &dataset !FashionMNISTDataloader\n  batch_size: 128\n",
                        f"dataset: &dataset !FashionMNISTDataloader\n  batch_size: {batch}\n  num_workers: 2\n  root: {data}\n")
recipe = recipe.replace("  epochs: 1\n", "  epochs: 1\n  model_arch: small_resnet\n")
if f"batch_size: {batch}" not in recipe or "model_arch: small_resnet" not in recipe:
    sys.exit("gpu_check: rupq/examples/quickstart/w4a4_rupq.yaml changed; update scripts/gpu_check.sh")
(workdir / "config.yaml").write_text(recipe)
PYTHON

data_parallel=("$python" rupq/main.py --config "$workdir/config.yaml" --logdir "$workdir/data_parallel" --gpu "$gpu_list")
distributed=("$python" -m torch.distributed.run --standalone --nproc_per_node "$gpus"
             rupq/main.py --config "$workdir/config.yaml" --logdir "$workdir/distributed" --gpu "$gpu_list")
cuda_tests=("$python" -m pytest -q -p no:cacheprovider tests/quantizers/test_cuda.py)
benchmark=("$python" -m bench.bench_qat --device cuda --steps 20)

echo "gpu_check: $gpus GPU(s) ($gpu_list), global batch $batch, $steps steps, work folder $workdir, parts $parts"
if [[ $dry_run == 1 ]]; then
  wanted tests && echo "CUDA formula: ${cuda_tests[*]}"
  wanted bench && echo "benchmark: ${benchmark[*]}"
  wanted parallel && echo "DataParallel: ${data_parallel[*]}" && echo "DDP: ${distributed[*]}"
  exit 0
fi

if wanted tests; then RUPQ_COMPILE=1 "${cuda_tests[@]}"; fi
if wanted bench; then "${benchmark[@]}"; fi

steps_per_second() {  # the newest run under $1
  local results
  results=$(ls -d "$1"/version_* | sort -t_ -k2 -n | tail -1)/results.json
  "$python" -c "import json, sys; print(f'{$steps / json.load(open(sys.argv[1]))[\"time_s\"]:.2f}')" "$results"
}
if wanted parallel; then
  "${data_parallel[@]}"
  dp_speed=$(steps_per_second "$workdir/data_parallel")
  "${distributed[@]}"
  ddp_speed=$(steps_per_second "$workdir/distributed")
  echo "gpu_check: DataParallel over $gpus GPU(s): $dp_speed steps/s"
  echo "gpu_check: DDP (torchrun, $gpus processes): $ddp_speed steps/s"
fi
