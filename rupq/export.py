"""``rupq export``: a trained model.ckpt as an ONNX integer model, proved in onnxruntime.

    rupq export --checkpoint LOGDIR/version_N/model.ckpt --out model.onnx   # or python rupq/export.py …

Stages: load the checkpoint with its run's config; read each quantized layer's integer weight
codes and activation grid (:mod:`rupq.deploy.integers`); export the float graph with torch.onnx
and rewrite it into integer weights and Q/DQ inputs (:mod:`rupq.deploy.onnx_graph`); run the file
in onnxruntime on a batch (validation data when the config's dataset is available) and check it
against the model in eval mode layer by layer (:mod:`rupq.deploy.verify`: weights, each input
quantizer alone and on the batch, the outputs within one quantization step), failing with the
name of the first layer that differs; then write the file atomically. ``--format torch`` writes the
same integers as a ``weights_only``-loadable file instead (layout in docs/export.md, section Integer checkpoint).
"""

import argparse
import copy
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

# `import rupq` needs the package installed (`pip install -e .`, see the README), as for rupq/main.py.
from rupq.deploy.integers import (
    codes_give_quantized_weight,
    integer_checkpoint,
    quantized_layers,
    round_offsets_to_zero_points,
)
from rupq.deploy.onnx_graph import quantized_model_proto
from rupq.deploy.verify import check_file, compare, torch_outputs
from rupq.errors import CheckpointError, ConfigError, DataError, ExportError, RupqError


def progress(message: str) -> None:
    print(message, flush=True)


# ---- the model ------------------------------------------------------------------------------

def load_model(checkpoint: Path, config_path: Path):
    """``(model in eval mode, task)``: the checkpoint rebuilt by its run's config, by the rules
    ``--checkpoint_path`` follows (:meth:`Task.load_trained_model`)."""
    from rupq.config import load_config
    from rupq.tools.training.task import Task

    task = load_config(config_path).get("task")
    if not isinstance(task, Task):
        raise ConfigError(f"{config_path} has no top-level `task: !Task`")
    return task.load_trained_model(checkpoint).eval(), task


# ---- inputs ---------------------------------------------------------------------------------

def check_inputs(task, input_size, count: int, seed: int = 0):
    """``(inputs, where from)``: the first ``count`` validation samples of ``input_size`` when the
    config's dataset is on this machine, else standard normal noise. Only a missing or unreadable
    dataset falls back to noise: any other error in a data module is a bug, and surfaces."""
    import torch
    from torch.utils.data import default_collate

    dataset = task.training_loop.dataset
    try:
        samples = []
        val = dataset.val_dataset
        for index in range(min(len(val), 4 * count)):
            sample = val[index]
            if tuple(sample[0].shape) == tuple(input_size) or (
                # detection samples are (path, image, …)
                len(sample) > 1 and hasattr(sample[1], "shape") and tuple(sample[1].shape) == tuple(input_size)):
                samples.append(sample)
            if len(samples) == count:
                break
        if samples:
            batch = (dataset.collate_fn or default_collate)(samples)
            inputs, _ = task.training_loop.unpack_batch(batch)
            return inputs.float(), f"{len(samples)} validation samples of {type(dataset).__name__}"
        reason = f"no validation sample of size {list(input_size)}"
    except (DataError, OSError) as error:  # the dataset is not on this machine, or not readable
        reason = str(error)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, *input_size, generator=generator), f"{count} random inputs ({reason})"


def parse_input_size(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ConfigError(f"--input-size {text!r}: expected three positive integers C,H,W (e.g. 3,224,224)")
    return tuple(int(part) for part in parts)


# ---- summary --------------------------------------------------------------------------------

def describe_bits(bits: dict) -> str:
    """``w4a4 ×20, w8a8 ×1`` for the summary."""
    counts = Counter(f"w{weight}a{activation}" for weight, activation in bits.values())
    return ", ".join(f"{kind} ×{count}" for kind, count in counts.most_common())


# ---- command line ---------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rupq export",
        description="Export a model.ckpt to ONNX (integer weights, Q/DQ activations) and check it in onnxruntime.",
    )
    parser.add_argument("--checkpoint", required=True, help="model.ckpt of a run (LOGDIR/version_N/model.ckpt)")
    parser.add_argument("--out", required=True, help="the file to write (model.onnx, or a .pt file with --format torch)")
    parser.add_argument("--config", help="the run's config (default: config.yaml beside the checkpoint)")
    parser.add_argument("--input-size", help="C,H,W of the input (default: from the config's dataset)")
    parser.add_argument("--format", choices=["onnx", "torch"], default="onnx",
                        help="onnx (default), or torch: integer codes, scales and zero points for torch.load(weights_only=True)")
    parser.add_argument("--integer-zero-points", action="store_true",
                        help="round LSQ+ offsets to integer zero points (reports how much the outputs move)")
    parser.add_argument("--check-batch", type=int, default=16, help="samples in the onnxruntime check (default 16)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return parser.parse_args(argv)


def write_integer_checkpoint(model, arch: dict, input_size, args, out: Path, started: float) -> dict:
    """``--format torch``: the integer codes, scales and zero points, checked against PyTorch's quantized weights."""
    from rupq.tools.utils.checkpoint import save_atomic

    layers = quantized_layers(model)
    content = integer_checkpoint(model, arch, input_size, args.integer_zero_points)
    bits = {name: (entry["weight_bit_width"], entry["input_bit_width"]) for name, entry in content["layers"].items()}
    progress("[3/5] checking the codes: codes × scale equals PyTorch's quantized weight in every layer")
    for name, layer in layers.items():
        entry = content["layers"][name]
        if not codes_give_quantized_weight(layer, entry["weight_codes"], entry["weight_scale"]):
            raise ExportError(f"layer '{name}': integer codes × scales differ from PyTorch's quantized weight")
    progress(f"[4/5] writing {out}")
    save_atomic(content, out)  # temporary file, fsync, rename: nothing half-written at --out
    progress("[5/5] onnxruntime check: not applicable to --format torch")
    size = out.stat().st_size
    progress(f"done in {time.monotonic() - started:.1f} s: {len(layers)} layers ({describe_bits(bits) or 'none'}), "
             f"{size / 1e6:.3f} MB")
    return {"layers": len(layers), "bits": bits, "size": size}


def write_onnx(model, name: str, inputs, origin: str, out: Path, integer_zero_points: bool, started: float) -> dict:
    """The ONNX file of ``model`` (eval mode, on the CPU), written only once onnxruntime has matched
    PyTorch layer by layer on ``inputs`` (a batch; ``origin`` says where it comes from)."""
    from rupq.tools.utils.checkpoint import save_atomic

    layers = quantized_layers(model)
    progress("[3/5] exporting the float graph with torch.onnx, then writing integer weights and Q/DQ")
    proto, float_proto, bits = quantized_model_proto(model, tuple(inputs.shape[1:]), name, integer_zero_points)
    data = proto.SerializeToString()

    progress(f"[4/5] checking the file in onnxruntime on {origin}")
    reference_model = model
    if integer_zero_points and layers:
        reference_model = copy.deepcopy(model)
        round_offsets_to_zero_points(reference_model)
    try:
        proof = check_file(reference_model, proto, inputs, integer_zero_points)
    except ExportError as error:
        raise ExportError(f"{error}; nothing written to {out}") from error
    outputs, chain = proof.outputs, proof.chain
    top1 = "" if chain.top1_agreement is None else f", top-1 agreement {100 * chain.top1_agreement:.1f} %"
    if layers:
        report_layers(proof)
        progress(f"      float parts, every layer fed onnxruntime's codes: each layer's float input within float noise, "
                 f"outputs within {outputs.max_difference:.3g} (one output quantization step: {outputs.tolerance:.3g})")
    progress(f"      outputs of the PyTorch model on its own: max |onnxruntime - PyTorch| = {chain.max_difference:.3g}"
             f"{' (information)' if layers else f' (one output quantization step: {outputs.tolerance:.3g})'}{top1}")
    optimized = proof.optimized
    if not optimized.ok:
        optimized_top1 = "" if optimized.top1_agreement is None else f", top-1 agreement {100 * optimized.top1_agreement:.1f} %"
        progress(f"      warning: onnxruntime's default graph optimizations (int32 biases, Q/DQ fused into integer kernels) "
                 f"move this file's outputs by up to {optimized.max_difference:.3g}{optimized_top1}; run it with "
                 f"SessionOptions.graph_optimization_level = ORT_DISABLE_ALL to get the outputs checked here")
    summary = {"layers": len(layers), "bits": bits, "size": len(data), "float_size": float_proto.ByteSize(),
               "optimizations_difference": optimized.max_difference,
               "inputs": origin, "max_difference": outputs.max_difference, "tolerance": outputs.tolerance,
               "chain_max_difference": chain.max_difference, "top1_agreement": chain.top1_agreement,
               "codes_compared": proof.codes_compared, "codes_at_ties": proof.codes_at_ties,
               "propagated": proof.propagated}
    if integer_zero_points and layers:
        moved = compare(torch_outputs(model, inputs), torch_outputs(reference_model, inputs), math.inf)
        moved_top1 = "" if moved.top1_agreement is None else f", top-1 agreement with it {100 * moved.top1_agreement:.1f} %"
        progress(f"      integer zero points move the outputs from the exact-offset model by up to "
                 f"{moved.max_difference:.3g}{moved_top1}")
        summary["zero_point_move"] = moved.max_difference

    progress(f"[5/5] writing {out}")
    save_atomic(data, out)
    ratio = summary["float_size"] / len(data)
    progress(
        f"done in {time.monotonic() - started:.1f} s: {len(layers)} quantized layers ({describe_bits(bits) or 'float model'}), "
        f"{len(data) / 1e6:.3f} MB against {summary['float_size'] / 1e6:.3f} MB for the FP32 export (1/{ratio:.1f}), "
        f"onnxruntime matches PyTorch layer by layer"
    )
    return summary


def report_layers(proof) -> None:
    """The per-layer lines of the check: what was proved, then the propagation (information only)."""
    count, compared = len(proof.layers), proof.codes_compared
    ties = f"; {proof.codes_at_ties} one step off at exact rounding midpoints" if proof.codes_at_ties else ""
    progress(f"      weights: integer codes × scales equal PyTorch's quantized weights in all {count} layers")
    progress(f"      input quantizers alone, on a sweep over each grid: PyTorch's codes in all {count} layers")
    progress(f"      each layer's input codes from the same float input: {compared - proof.codes_at_ties} of {compared} "
             f"equal to PyTorch's formula{ties}")
    flipped = sum(proof.propagated.values())
    if not flipped:
        progress("      along the whole chain: every layer's input codes equal the PyTorch model's")
        return
    flips, sizes = list(proof.propagated.values()), [layer.compared for layer in proof.layers]
    parts = min(4, len(flips))
    bounds = [round(part * len(flips) / parts) for part in range(parts + 1)]
    by_depth = ", ".join(f"layers {start + 1}-{stop}: {100 * sum(flips[start:stop]) / sum(sizes[start:stop]):.2g} %"
                         for start, stop in zip(bounds, bounds[1:]))
    progress(f"      along the whole chain (information, not an error): {flipped} of {compared} codes differ from the "
             f"PyTorch model's, as rounding ties flipped early reach later layers; by depth: {by_depth}")


def run(args: argparse.Namespace) -> dict:
    """The export; returns the summary's numbers."""
    checkpoint = Path(args.checkpoint)
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; expected a file name")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")
    config_path = Path(args.config) if args.config else checkpoint.parent / "config.yaml"
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint {checkpoint} does not exist")
    if not config_path.is_file():
        raise ConfigError(f"config {config_path} does not exist (a run's config.yaml sits beside model.ckpt; give --config)")
    if args.check_batch < 1:
        raise ConfigError(f"--check-batch {args.check_batch}: expected at least 1")

    started = time.monotonic()
    progress(f"[1/5] loading {checkpoint} with {config_path}")
    from rupq.models import architecture_of
    from rupq.tools.training.task import describe_arch

    model, task = load_model(checkpoint, config_path)
    arch = architecture_of(model)
    input_size = parse_input_size(args.input_size) if args.input_size else task.training_loop.dataset.input_size
    if input_size is None:
        raise ConfigError(f"cannot tell the input size of {type(task.training_loop.dataset).__name__}; give --input-size C,H,W")
    layers = quantized_layers(model)
    progress(f"      {describe_arch(arch)}, {len(layers)} quantized layers, input {list(input_size)}")

    progress("[2/5] integer weight codes and activation grids from the quantizers")
    if args.format == "torch":
        return write_integer_checkpoint(model, arch, input_size, args, out, started)

    inputs, origin = check_inputs(task, input_size, args.check_batch)
    return write_onnx(model, describe_arch(arch), inputs, origin, out, args.integer_zero_points, started)


def export(model, path, example_inputs, *, integer_zero_points: bool = False) -> dict:
    """``rupq.export``: write ``model`` (quantized by :func:`rupq.quantize`, or float) to the ONNX
    file ``path``, checked in onnxruntime exactly as ``rupq export`` checks it, on
    ``example_inputs`` (a batch of the model's inputs); nothing is written if the check fails.
    Returns the summary's numbers. The model itself is left as it was (a copy is exported on the CPU)."""
    from rupq.tools.training.task import describe_arch

    out = Path(path)
    if out.is_dir() or not out.parent.is_dir():
        raise ConfigError(f"rupq.export: {out} is not a file name in an existing folder")
    arch = getattr(model, "rupq_arch", None)
    name = describe_arch(arch) if arch else type(model).__name__
    model = copy.deepcopy(model).cpu().eval()
    inputs = example_inputs.detach().float().cpu()
    progress(f"[1/5] {name}, {len(quantized_layers(model))} quantized layers, input {list(inputs.shape[1:])}")
    progress("[2/5] integer weight codes and activation grids from the quantizers")
    return write_onnx(model, name, inputs, f"the {len(inputs)} example inputs", out, integer_zero_points, time.monotonic())


class _CallableModule(type(sys)):
    """``rupq.export`` is this module once anything imports it (``rupq export`` does), and
    ``rupq.export(model, path, example_inputs)`` is the Python API: calling the module calls :func:`export`."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def main(argv=None) -> None:
    args = parse_args(argv)
    # The exporter and its check run the formula eagerly: compiling graphs used for one batch is slower.
    os.environ.setdefault("RUPQ_COMPILE", "0")
    try:
        run(args)
        return
    except RupqError as error:
        if args.debug:
            raise
        message = f"error: {error}"
    print(message, file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
