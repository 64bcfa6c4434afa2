"""Whole-validation-set agreement of exported ONNX models with PyTorch (issue 15's acceptance figures).

    python scripts/check_export_agreement.py runs/quickstart/lsqplus/version_0/model.ckpt \\
        runs/quickstart/rupq/version_0/model.ckpt [--out-dir runs/export_check] [--markdown FILE]

For each classification checkpoint: ``rupq export`` writes ``OUT_DIR/<run>.onnx`` (with its own
one-batch check), then the whole validation set of the run's config (Fashion-MNIST's 10 000 test
images for the quickstart) goes through onnxruntime and through the PyTorch model in eval mode.
Printed per model: both top-1 accuracies, the share of images where both predict the same
class, the largest logit difference, whether every layer's integer weight codes in the file
equal PyTorch's exactly, and the file sizes. Exit status 1 when a model misses the issue's
targets (top-1 within 0.05 points, ≥ 99.9 % same predictions, identical codes).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from rupq import export
from rupq.errors import RupqError
from rupq.deploy.onnx_graph import layers_whose_file_codes_differ
from rupq.deploy.verify import onnxruntime_outputs, onnxruntime_session, torch_outputs


def evaluate(checkpoint: Path, out_dir: Path) -> dict:
    out = out_dir / f"{checkpoint.parent.parent.name}_{checkpoint.parent.name}.onnx"
    summary = export.run(export.parse_args(["--checkpoint", str(checkpoint), "--out", str(out)]))
    model, task = export.load_model(checkpoint, checkpoint.parent / "config.yaml")
    proto = onnx.load(out)
    session = onnxruntime_session(proto.SerializeToString())
    correct_torch = correct_onnx = same = total = 0
    max_difference = 0.0
    started = time.monotonic()
    for batch in task.training_loop.dataset.val_dataloader():
        inputs, labels = task.training_loop.unpack_batch(batch)
        logits_torch = torch_outputs(model, inputs)[0]
        logits_onnx = onnxruntime_outputs(session, inputs)[0]
        predicted_torch, predicted_onnx = logits_torch.argmax(1), logits_onnx.argmax(1)
        labels = labels.numpy()
        correct_torch += int((predicted_torch == labels).sum())
        correct_onnx += int((predicted_onnx == labels).sum())
        same += int((predicted_torch == predicted_onnx).sum())
        total += len(labels)
        max_difference = max(max_difference, float(np.abs(logits_torch - logits_onnx).max()))
    return {
        "run": str(checkpoint.parent),
        "bits": export.describe_bits(summary["bits"]),
        "images": total,
        "top1_torch": 100.0 * correct_torch / total,
        "top1_onnx": 100.0 * correct_onnx / total,
        "same_prediction": 100.0 * same / total,
        "max_logit_difference": max_difference,
        "codes_differ": layers_whose_file_codes_differ(model, proto),
        "size_mb": summary["size"] / 1e6,
        "fp32_size_mb": summary["float_size"] / 1e6,
        "seconds": time.monotonic() - started,
    }


def meets_targets(row: dict) -> bool:
    return abs(row["top1_torch"] - row["top1_onnx"]) <= 0.05 and row["same_prediction"] >= 99.9 and not row["codes_differ"]


def table(rows: list[dict]) -> str:
    lines = [
        "| run | bit widths | images | top-1 PyTorch | top-1 onnxruntime | same prediction | max logit diff | "
        "weight codes | ONNX size (FP32 export) |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        codes = "identical" if not row["codes_differ"] else f"differ in {', '.join(row['codes_differ'])}"
        lines.append(
            f"| {row['run']} | {row['bits']} | {row['images']} | {row['top1_torch']:.2f} | {row['top1_onnx']:.2f} | "
            f"{row['same_prediction']:.2f} % | {row['max_logit_difference']:.2g} | {codes} | "
            f"{row['size_mb']:.3f} MB ({row['fp32_size_mb']:.3f} MB) |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="model.ckpt files of classification runs")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/export_check"), help="where the ONNX files go")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    rows = []
    for checkpoint in args.checkpoints:
        try:
            rows.append(evaluate(checkpoint, args.out_dir))
        except RupqError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
    text = table(rows)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    missed = [row["run"] for row in rows if not meets_targets(row)]
    if missed:
        print(f"targets missed by: {', '.join(missed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
