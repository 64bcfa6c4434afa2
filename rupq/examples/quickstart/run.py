"""Quickstart: full-precision training on Fashion-MNIST, then 4-bit QAT with LSQ+ and with RUPQ.

    python rupq/examples/quickstart/run.py --logdir runs/quickstart

Each step is an ordinary ``rupq/main.py`` run (its output streams through); the QAT runs start
from the FP run's ``model.ckpt`` with ``--load``. The table at the end (also written to
``LOGDIR/summary.md``) gives the best test top-1 accuracy of each run.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAIN = HERE.parent.parent / "main.py"
STEPS = (
    ("FP", "fp.yaml", "full precision"),
    ("LSQ+ w4a4", "w4a4_lsqplus.yaml", "4-bit weights and inputs, LSQ+"),
    ("RUPQ w4a4", "w4a4_rupq.yaml", "4-bit weights and inputs, RUPQ"),
)


def run_step(config: Path, logdir: Path, extra: list[str]) -> Path:
    """Run one training and return its version folder."""
    before = set(logdir.glob("version_*"))
    command = [sys.executable, str(MAIN), "--config", str(config), "--logdir", str(logdir), *extra]
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        sys.exit(result.returncode)
    (version,) = set(logdir.glob("version_*")) - before
    return version


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/quickstart", help="parent folder of the three runs")
    parser.add_argument("--gpu", help="passed on to rupq/main.py")
    parser.add_argument("--fp-checkpoint", help="skip FP training and quantize this model.ckpt instead")
    args = parser.parse_args(argv)
    logdir = Path(args.logdir)
    device = ["--gpu", args.gpu] if args.gpu else []

    rows, fp_checkpoint = [], args.fp_checkpoint
    for label, config, description in STEPS:
        if label == "FP" and fp_checkpoint:
            continue
        started = time.time()
        load = ["--load", fp_checkpoint] if label != "FP" else []
        version = run_step(HERE / config, logdir / label.split()[0].lower().replace("+", "plus"), load + device)
        results = json.loads((version / "results.json").read_text())
        rows.append((label, description, results["best_val_accuracy"], time.time() - started, version))
        if label == "FP":
            fp_checkpoint = str(version / "model.ckpt")

    lines = [
        "| run | what | top-1 (%) | time (min) | folder |",
        "|---|---|---:|---:|---|",
        *(f"| {label} | {what} | {acc:.2f} | {secs / 60:.1f} | {folder} |" for label, what, acc, secs, folder in rows),
    ]
    table = "\n".join(lines)
    (logdir / "summary.md").write_text(table + "\n")
    print("\nFashion-MNIST test accuracy (best epoch of each run):\n" + table, flush=True)


if __name__ == "__main__":
    main()
