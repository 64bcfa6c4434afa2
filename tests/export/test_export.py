"""``rupq export``: every architecture to ONNX, run in onnxruntime (an independent implementation)
and compared with the PyTorch model in eval mode; integer codes read back from the file."""

import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, numpy_helper

from rupq.config import load_config
from rupq.deploy.integers import quantized_layers
from rupq.deploy.verify import output_step
from rupq.models import create_model
from rupq.models.yolo import cfg_path
from rupq.quantizers import initialize_quantizers
from rupq.tools.training.task import model_checkpoint
from rupq.tools.utils.checkpoint import save_atomic
from conftest import REPO, run_export

# Quantizer recipes as in the shipped configs (fewer MinErrorInitializer candidates, for speed).
INPUT_QUANTIZERS = {
    "lsq": "!StepQuantizer {initializer: !MeanStdInitializer {}}",
    "lsqplus": "!StepOffsetQuantizer {initializer: !MeanStdInitializer {}}",
    "rupq": "!StepOffsetQuantizer {initializer: !MinErrorInitializer {n_iters: 20}, "
            "transformation: !Standardization {momentum: 0.9999, std_init: 1.0}}",
    # σ of each batch, also in eval mode: no constant scale can express it
    "batch_sigma": "!StepQuantizer {initializer: !MeanStdInitializer {}, transformation: !Standardization {momentum: 0.0}}",
}
WEIGHT_QUANTIZERS = {
    "lsq": "!StepQuantizer {initializer: !MeanStdInitializer {}, per_channel: true}",
    "lsqplus": "!StepQuantizer {initializer: !MeanStdInitializer {}, per_channel: true}",
    "batch_sigma": "!StepQuantizer {initializer: !MeanStdInitializer {}, per_channel: true}",
    "rupq": "!StepQuantizer {initializer: !MinErrorInitializer {n_iters: 20}, per_channel: true, "
            "transformation: !Standardization {dim: DIMS}}",
}

CONFIG = """
model_parser: &model_parser !ModelParser
  wrappers:
{wrappers}
  input_bit_width: {{default: {bits}, exceptions: {input_exceptions}}}
  weight_bit_width: {{default: {bits}, exceptions: {weight_exceptions}}}
  half_wave: {{default: true, exceptions: {{{first}: false}}}}
dataset: &dataset !FashionMNISTDataloader {{batch_size: 4}}
task: !Task
  training_loop: !TrainingLoop {{dataset: *dataset, loss: !CrossEntropyLoss {{}}}}
  epochs: 1
  model_parser: *model_parser
"""
FP_CONFIG = """
dataset: &dataset !FashionMNISTDataloader {batch_size: 4}
task: !Task
  training_loop: !TrainingLoop {dataset: *dataset, loss: !CrossEntropyLoss {}}
  epochs: 1
"""


def wrapper(kind: str, recipe: str) -> str:
    layer = "QuantConv2d" if kind == "Conv2d" else "QuantLinear"
    dims = "[1, 2, 3]" if kind == "Conv2d" else "[1]"
    return (f"    {kind}: !{layer}\n      quantizer: !ModuleQuantizer\n"
            f"        input_quantizer: {INPUT_QUANTIZERS[recipe]}\n"
            f"        weight_quantizer: {WEIGHT_QUANTIZERS[recipe].replace('DIMS', dims)}\n")


def make_run(folder, arch, kwargs, input_size, recipe="rupq", bits=4, first="conv1", exceptions=None, seed=0):
    """A run folder as training leaves it: ``config.yaml`` and ``model.ckpt`` of ``arch`` quantized
    with ``recipe``, quantizers initialised on random data, LSQ+ offsets and σ EMAs moved away from
    their initial values (so that the export has something to get wrong)."""
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    model = create_model(arch, **kwargs)
    kinds = [kind for kind in ("Conv2d", "Linear") if any(type(m).__name__ == kind for m in model.modules())]
    exceptions = exceptions or {}
    if recipe == "fp":
        (folder / "config.yaml").write_text(FP_CONFIG)
    else:
        (folder / "config.yaml").write_text(CONFIG.format(
            wrappers="".join(wrapper(kind, recipe) for kind in kinds), bits=bits, first=first,
            input_exceptions=exceptions.get("input", {}), weight_exceptions=exceptions.get("weight", {}),
        ))
        model = load_config(folder / "config.yaml")["task"].model_parser.parse(model)
        initialize_quantizers(model, torch.randn(4, *input_size))
        with torch.no_grad():
            for index, layer in enumerate(quantized_layers(model).values()):
                quantizer = layer.quantizer.input_quantizer
                if hasattr(quantizer, "offset"):
                    quantizer.offset.fill_(0.05 * (-1) ** index * quantizer.step.abs().item())
                if quantizer.transformation is not None:
                    quantizer.transformation.ema_std.fill_(1.0 + 0.1 * (index % 3))
    save_atomic(model_checkpoint(model), folder / "model.ckpt")
    return model.eval(), folder / "model.ckpt"


def initializers(path) -> dict:
    return {init.name: init for init in onnx.load(path).graph.initializer}


def check_against_pytorch(model, path, input_size, batch=3):
    """onnxruntime on a batch size the export never saw (the batch dimension is dynamic) against
    the model in eval mode: within one output quantization step (float noise for an FP model)."""
    inputs = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    with torch.no_grad():
        output = model(inputs)
    expected = [t.numpy() for t in (output if isinstance(output, (list, tuple)) else [output])]
    assert [g.shape for g in got] == [e.shape for e in expected]
    difference = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    tolerance = max(output_step(model, inputs, expected), 1e-4 * max(float(np.abs(e).max()) for e in expected), 1e-5)
    assert difference <= tolerance, (difference, tolerance)
    return difference, tolerance


def check_weight_codes(model, path):
    """The file's integer codes times its scales are PyTorch's quantized weights, bit for bit;
    codes within the quantizer's range, in int4 for 2-4 bits (packed two per byte), int8 above."""
    stored = initializers(path)
    for name, layer in quantized_layers(model).items():
        quantizer = layer.quantizer.weight_quantizer
        codes_proto = stored[f"{name}.weight_codes"]
        expected_type = TensorProto.INT4 if quantizer.bit_width <= 4 else TensorProto.INT8
        assert codes_proto.data_type == expected_type, name
        codes = numpy_helper.to_array(codes_proto).astype(np.int64)
        if expected_type == TensorProto.INT4:
            assert len(codes_proto.raw_data) == (codes.size + 1) // 2, name
        scale = numpy_helper.to_array(stored[f"{name}.weight_scale"])
        assert codes.min() >= quantizer.negative_clip and codes.max() <= quantizer.positive_clip, name
        with torch.no_grad():
            pytorch_weight = layer.quantized_weight()
        shape = [-1] + [1] * (codes.ndim - 1)
        from_file = torch.from_numpy(codes).float() * torch.from_numpy(scale.copy()).view(shape)
        assert torch.equal(from_file, pytorch_weight), name
        assert f"{name}.weight" not in stored, f"{name}: the float weight is still in the file"


def narrow_yolo_v3_cfg(folder) -> str:
    """The shipped YOLO-v3 cfg with every convolution 16 times narrower, written in ``folder``: the
    same 75 convolutions, 3 scales, shortcuts, routes and upsampling in 1/256 of the parameters."""
    text = cfg_path("yolov3").read_text()
    narrow = re.sub(r"^filters\s*=\s*(\d+)", lambda m: f"filters={max(2, int(m.group(1)) // 16)}", text, flags=re.M)
    path = folder / "yolov3-narrow.cfg"
    path.write_text(narrow)
    return str(path)


ARCHITECTURES = {
    # arch: (model kwargs, input size, recipe, first layer)
    "small_resnet": ({"widths": [4, 8], "blocks": [1, 1]}, (1, 28, 28), "rupq", "conv1"),
    "resnet18": ({"num_classes": 10}, (3, 32, 32), "lsq", "conv1"),
    "mobilenet_v2": ({"num_classes": 10}, (3, 32, 32), "lsqplus", "features.0.0"),
    "srresnet": ({"scale": 2, "num_blocks": 1, "num_features": 8}, (3, 8, 8), "rupq", "conv1.0"),
    "edsr": ({"num_blocks": 1, "num_features": 8}, (3, 8, 8), "lsqplus", "head.0"),
    "yolo_v3": ({"num_classes": 2, "cfg": narrow_yolo_v3_cfg}, (3, 64, 64), "lsq", "module_list.0.conv_0"),
    "yolo_v3_tiny_demo": ({"num_classes": 2}, (3, 64, 64), "rupq", "module_list.0.conv_0"),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_at_w4a4_runs_in_onnxruntime_like_pytorch(tmp_path, arch):
    kwargs, input_size, recipe, first = ARCHITECTURES[arch]
    kwargs = {key: value(tmp_path) if callable(value) else value for key, value in kwargs.items()}
    model, checkpoint = make_run(tmp_path / "run", arch, kwargs, input_size, recipe, first=first)
    out = tmp_path / "model.onnx"
    result = run_export("--checkpoint", checkpoint, "--out", out, "--input-size", ",".join(map(str, input_size)),
                        "--check-batch", 2)
    assert result.returncode == 0, result.stderr
    assert "onnxruntime matches PyTorch layer by layer" in result.stdout
    assert re.search(r"each layer's input codes from the same float input: (\d+) of \1 equal to PyTorch's formula",
                     result.stdout) or not quantized_layers(model), result.stdout
    check_weight_codes(model, out)
    check_against_pytorch(model, out, input_size)
    opset = {entry.domain: entry.version for entry in onnx.load(out).opset_import}
    assert opset.get("", opset.get("ai.onnx")) >= 21


def test_resnet18_w4a4_file_is_at_most_a_sixth_of_its_fp32_export(tmp_path):
    from rupq.deploy.integers import float_twin
    from rupq.deploy.onnx_graph import export_float_graph, quantized_model_proto

    kwargs, input_size, _, first = ARCHITECTURES["resnet18"]
    model, _ = make_run(tmp_path / "run", "resnet18", kwargs, input_size, "lsq", first=first)
    proto, float_proto, bits = quantized_model_proto(model, input_size, "resnet18", False)
    assert set(bits.values()) == {(4, 4)}
    size, float_size = len(proto.SerializeToString()), len(float_proto.SerializeToString())
    assert float_size == len(export_float_graph(float_twin(model), input_size, "resnet18").SerializeToString())
    assert size * 6 <= float_size, (size, float_size)


@pytest.mark.parametrize("bits", [2, 8])
def test_two_and_eight_bit_models(tmp_path, bits):
    kwargs, input_size, _, first = ARCHITECTURES["small_resnet"]
    model, checkpoint = make_run(tmp_path / "run", "small_resnet", kwargs, input_size, "lsqplus", bits=bits)
    out = tmp_path / "model.onnx"
    result = run_export("--checkpoint", checkpoint, "--out", out)  # input size from the config's dataset
    assert result.returncode == 0, result.stderr
    assert f"w{bits}a{bits} ×7" in result.stdout  # every layer of the tiny model
    check_weight_codes(model, out)
    check_against_pytorch(model, out, input_size)
    nodes = onnx.load(out).graph.node
    clips = [node for node in nodes if node.op_type == "Clip" and node.name.endswith(".input_clip")]
    # 2-bit inputs ride in 8-bit carriers and a Clip enforces 0..3 (-2..1 for conv1); 8 bits fill them.
    assert len(clips) == (7 if bits == 2 else 0)


def test_per_layer_bit_width_exception(tmp_path):
    kwargs, input_size, _, _ = ARCHITECTURES["small_resnet"]
    exceptions = {"input": {"conv1": 8, "fc": 3}, "weight": {"conv1": 8, "layer2.0.conv2": 2}}
    model, checkpoint = make_run(tmp_path / "run", "small_resnet", kwargs, input_size, "rupq", exceptions=exceptions)
    out = tmp_path / "model.onnx"
    result = run_export("--checkpoint", checkpoint, "--out", out)
    assert result.returncode == 0, result.stderr
    check_weight_codes(model, out)
    check_against_pytorch(model, out, input_size)
    stored = initializers(out)
    assert stored["conv1.weight_codes"].data_type == TensorProto.INT8
    assert stored["layer2.0.conv2.weight_codes"].data_type == TensorProto.INT4
    assert numpy_helper.to_array(stored["layer2.0.conv2.weight_codes"]).astype(int).min() >= -2
    assert numpy_helper.to_array(stored["fc.input_high"]) == 7  # a 3-bit half-wave input: 0..7
    assert numpy_helper.to_array(stored["conv1.input_zero_point"]).dtype == np.int8


def test_lsqplus_offset_is_kept_exactly_and_integer_zero_points_are_reported(tmp_path):
    kwargs, input_size, _, _ = ARCHITECTURES["small_resnet"]
    model, checkpoint = make_run(tmp_path / "run", "small_resnet", kwargs, input_size, "lsqplus")
    out = tmp_path / "model.onnx"
    assert run_export("--checkpoint", checkpoint, "--out", out).returncode == 0
    stored = initializers(out)
    offset = float(numpy_helper.to_array(stored["layer1.0.conv1.input_offset"]))
    assert offset == model.layer1[0].conv1.quantizer.input_quantizer.offset.item() != 0.0
    check_against_pytorch(model, out, input_size)

    rounded = tmp_path / "rounded.onnx"
    result = run_export("--checkpoint", checkpoint, "--out", rounded, "--integer-zero-points")
    assert result.returncode == 0, result.stderr
    assert "integer zero points move the outputs" in result.stdout
    stored = initializers(rounded)
    assert not any(name.endswith("input_offset") for name in stored)
    zero_point = int(numpy_helper.to_array(stored["layer1.0.conv1.input_zero_point"]))
    quantizer = model.layer1[0].conv1.quantizer.input_quantizer
    assert zero_point == -round(quantizer.offset.item() / quantizer.step.abs().item())


def test_full_precision_checkpoint_exports_a_float_model(tmp_path):
    kwargs, input_size, _, _ = ARCHITECTURES["small_resnet"]
    model, checkpoint = make_run(tmp_path / "run", "small_resnet", kwargs, input_size, "fp")
    out = tmp_path / "model.onnx"
    result = run_export("--checkpoint", checkpoint, "--out", out)
    assert result.returncode == 0, result.stderr
    types = {node.op_type for node in onnx.load(out).graph.node}
    assert not types & {"QuantizeLinear", "DequantizeLinear"}
    difference, _ = check_against_pytorch(model, out, input_size)
    assert difference < 1e-4


def test_integer_checkpoint_is_weights_only_loadable_with_pytorchs_codes(tmp_path):
    kwargs, input_size, _, _ = ARCHITECTURES["small_resnet"]
    model, checkpoint = make_run(tmp_path / "run", "small_resnet", kwargs, input_size, "rupq")
    out = tmp_path / "model.pt"
    result = run_export("--checkpoint", checkpoint, "--out", out, "--format", "torch")
    assert result.returncode == 0, result.stderr
    saved = torch.load(out, weights_only=True)
    assert saved["format"] == "rupq-integer-v1" and saved["input_size"] == list(input_size)
    layer = model.layer1[0].conv1
    entry = saved["layers"]["layer1.0.conv1"]
    assert entry["weight_codes"].dtype == torch.int8 and entry["input_range"] == [0, 15]
    with torch.no_grad():
        assert torch.equal(entry["weight_codes"].float() * entry["weight_scale"].view(-1, 1, 1, 1), layer.quantized_weight())
    quantizer = layer.quantizer.input_quantizer
    assert entry["input_scale"] == pytest.approx(quantizer.step.abs().item() * quantizer.transformation.ema_std.item())
    assert "bn1.running_mean" in saved["state_dict"] and "conv1.module.weight" not in saved["state_dict"]


def test_disagreement_with_pytorch_fails_and_writes_nothing(tmp_path, monkeypatch):
    import rupq.deploy.verify

    kwargs, input_size, _, _ = ARCHITECTURES["small_resnet"]
    _, checkpoint = make_run(tmp_path / "run", "small_resnet", kwargs, input_size, "rupq")
    real = rupq.deploy.verify.onnxruntime_layer_tensors

    def outputs_moved(*args):
        outputs, tensors = real(*args)
        return [output + 5.0 for output in outputs], tensors

    monkeypatch.setattr(rupq.deploy.verify, "onnxruntime_layer_tensors", outputs_moved)
    out = tmp_path / "model.onnx"
    result = run_export("--checkpoint", checkpoint, "--out", out)
    assert result.returncode == 2
    assert result.stderr.startswith("error: onnxruntime and PyTorch disagree") and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "run"]


def test_bad_inputs_are_one_line_errors_with_status_2(tmp_path):
    kwargs, input_size, _, _ = ARCHITECTURES["small_resnet"]
    _, quantized = make_run(tmp_path / "q", "small_resnet", kwargs, input_size, "rupq")
    _, full_precision = make_run(tmp_path / "fp", "small_resnet", kwargs, input_size, "fp")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    _, wide = make_run(tmp_path / "wide", "small_resnet", kwargs, input_size, "lsq", exceptions={"weight": {"fc": 12}})
    _, batch_sigma = make_run(tmp_path / "batch_sigma", "small_resnet", kwargs, input_size, "batch_sigma")
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    cases = [
        (["--checkpoint", tmp_path / "missing.ckpt"], "missing.ckpt does not exist"),
        (["--checkpoint", foreign, "--config", tmp_path / "q" / "config.yaml"], "is not a rupq-model-v1 checkpoint"),
        (["--checkpoint", quantized, "--config", tmp_path / "fp" / "config.yaml"], "holds a quantized model"),
        (["--checkpoint", full_precision, "--config", tmp_path / "q" / "config.yaml"], "holds a full-precision model"),
        (["--checkpoint", quantized, "--input-size", "1,28"], "expected three positive integers C,H,W"),
        (["--checkpoint", wide], "layer 'fc': a 12-bit weight"),
        (["--checkpoint", batch_sigma], "layer 'conv1': its input σ is the std of each batch"),
        (["--checkpoint", quantized, "--out", tmp_path / "nowhere" / "model.onnx"], "folder"),
    ]
    for arguments, message in cases:
        result = run_export("--out", out, *arguments)  # a later --out wins
        assert result.returncode == 2, (arguments, result.stderr)
        assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert list(out.parent.iterdir()) == []


def test_command_line_entry_points(tmp_path):
    """``python rupq/export.py`` and ``rupq export`` reach the same command (no traceback on bad input)."""
    for command in ([sys.executable, str(REPO / "rupq" / "export.py")], [sys.executable, "-m", "rupq", "export"]):
        result = subprocess.run([*command, "--checkpoint", tmp_path / "none.ckpt", "--out", tmp_path / "x.onnx"],
                                capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert result.returncode == 2 and result.stderr == f"error: checkpoint {tmp_path / 'none.ckpt'} does not exist\n"
