"""Export a trained model to ONNX with integer weights and Q/DQ activations, proved in onnxruntime.

``rupq export --checkpoint LOGDIR/version_N/model.ckpt --out model.onnx`` (also ``python rupq/export.py …``).

How the graph is made, and why this way:

1. The quantized model is copied and every ``QuantConv2d`` / ``QuantLinear`` is replaced by the plain
   ``Conv2d`` / ``Linear`` it wraps. ``torch.onnx.export`` (the torch.export-based exporter, the
   default since torch 2.9; ``optimize=False`` so that BatchNorm is not folded into the weights)
   then exports a model made of standard torch modules only — the path every torch release tests,
   whatever the architecture (residual adds, pixel shuffle, YOLO's decoding). The same file is
   the FP32 export the summary compares sizes with.
2. The float graph is rewritten with the ``onnx`` API. Each quantized layer's weight initializer
   (named after the parameter, ``layer.weight``) becomes integer codes (int4 for 2–4 bits, packed
   two per byte; int8 for 5–8) followed by ``DequantizeLinear`` with one scale per output
   channel, and the layer's input passes through ``Sub(offset) → QuantizeLinear → [Clip] →
   DequantizeLinear → Add(offset)`` with the quantizer's range enforced exactly.

Asking torch.onnx to trace the fake-quant formula itself (custom autograd functions, custom ops
and their translation tables) ties the export to exporter internals that changed between torch
releases; the rewrite above only relies on the exported graph consuming ``layer.weight`` as an
initializer, which the exporter checks for us (a missing name is an :class:`ExportError`).

Numbers come from the quantizers' state read through :mod:`rupq.quantizers.fake_quantize`: the
weight codes are ``round(clamp(w / c))`` with ``c = s'·σ`` computed by the formula itself and
checked to give PyTorch's quantized weight back bit for bit; an activation's scale is
``s'·σ_ema``. After writing, the file runs in onnxruntime on a batch (validation data when the
config's dataset is available) and must match the model in eval mode to within one quantization
step of the output, or the command fails.
"""

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# `import rupq` needs the package installed (`pip install -e .`, see the README), as for rupq/main.py.
from rupq.errors import CheckpointError, ConfigError, RupqError

INTEGER_FORMAT = "rupq-integer-v1"
OPSET = 21  # the first opset with int4/uint4 QuantizeLinear/DequantizeLinear


class ExportError(RupqError):
    """A model or layer the exporter cannot express, or an export that does not match PyTorch."""


def progress(message: str) -> None:
    print(message, flush=True)


# ---- the model ------------------------------------------------------------------------------

def load_model(checkpoint: Path, config_path: Path):
    """``(model in eval mode, task)``: the checkpoint's architecture, wrapped by the config's
    model parser when the checkpoint is quantized, with the checkpoint's state loaded."""
    from rupq.config import load_config
    from rupq.models import create_model
    from rupq.tools.training.task import Task, describe_arch, quantizer_settings, settings_difference
    from rupq.tools.utils.checkpoint import MODEL_FORMAT, load_checkpoint

    saved = load_checkpoint(checkpoint, MODEL_FORMAT)
    task = load_config(config_path).get("task")
    if not isinstance(task, Task):
        raise ConfigError(f"{config_path} has no top-level `task: !Task`")
    wanted = {"name": task.model_arch, "kwargs": task.model_kwargs}
    if task.model_arch and saved["arch"] != wanted:
        raise CheckpointError(
            f"{checkpoint} holds {describe_arch(saved['arch'])} but {config_path} builds {describe_arch(wanted)}"
        )
    model = create_model(saved["arch"]["name"], **saved["arch"]["kwargs"])
    if saved["quantized"] != (task.model_parser is not None):
        kinds = ("a quantized", "a full-precision") if saved["quantized"] else ("a full-precision", "a quantized")
        raise CheckpointError(f"{checkpoint} holds {kinds[0]} model but {config_path} describes {kinds[1]} one")
    if task.model_parser is not None:
        model = task.model_parser.parse(model)
        difference = settings_difference(saved.get("quantizers") or quantizer_settings(model), quantizer_settings(model))
        if difference:
            raise CheckpointError(f"{checkpoint} does not fit the model_parser of {config_path}: {difference}")
    Task._load_state(model, saved["state_dict"], checkpoint)
    return model.eval(), task


def quantized_layers(model) -> dict:
    """``{name: QuantConv2d/QuantLinear}`` in module order."""
    from rupq.quantizers.modules import QuantModule

    return {name: module for name, module in model.named_modules() if isinstance(module, QuantModule)}


def float_twin(model):
    """A copy of ``model`` with each quantized layer replaced by the plain layer it wraps."""
    twin = copy.deepcopy(model)
    for name, layer in quantized_layers(twin).items():
        parent_name, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent_name) if parent_name else twin, child, layer.module)
    return twin


# ---- what each quantizer becomes ------------------------------------------------------------

@dataclass
class WeightCodes:
    codes: "torch.Tensor"   # integers in [n, p], the weight's shape
    scale: "torch.Tensor"   # c = s'·σ, one per output channel (or one), float32
    bit_width: int


@dataclass
class ActivationGrid:
    scale: float            # s'·σ_ema
    offset: float | None    # LSQ+ offset (None: no offset)
    zero_point: int         # 0, or -round(o / scale) with --integer-zero-points (then offset is None)
    low: int                # n
    high: int               # p
    bit_width: int
    half_wave: bool


def weight_codes(layer, name: str) -> WeightCodes:
    """The layer's weight as integer codes and per-channel scales, equal to PyTorch's eval weight.

    The formula (:func:`fake_quantize`) computes the quantized weight and σ; ``c`` is its
    ``s'·σ``, so ``codes = out / c`` are the integers it rounded, and ``codes · c`` must give
    ``out`` back exactly (checked: DequantizeLinear computes that same product).
    """
    import torch

    from rupq.quantizers.fake_quantize import fake_quantize, learnable_step, step_gradient_scale

    quantizer = layer.quantizer.weight_quantizer
    if quantizer.bit_width > 8:
        raise ExportError(f"layer '{name}': a {quantizer.bit_width}-bit weight; the exporter writes 2-8-bit weights (int4, int8)")
    weight = layer.module.weight.detach().float()
    # LSQ's gradient scale changes s' = (|s| - |s|g) + |s|g by an ulp: use the weight's own g.
    grad_scale = step_gradient_scale(weight.numel(), quantizer.step.numel(), quantizer.positive_clip)
    transformation = quantizer.transformation
    sigma_arguments = {} if transformation is None else transformation.formula_arguments(weight, None)
    with torch.no_grad():
        out, sigma = fake_quantize(
            weight, quantizer.step.detach(), quantizer.negative_clip, quantizer.positive_clip, grad_scale,
            **sigma_arguments,
        )
        step = learnable_step(quantizer.step.detach(), grad_scale)
        scale = step if sigma is None else step * sigma
        scale = scale.expand(weight.shape[0], *([1] * (weight.dim() - 1))).contiguous()
        codes = (out / scale).round()
    if not torch.equal(codes * scale, out):
        raise ExportError(f"layer '{name}': the weight codes do not reproduce the quantized weight")
    return WeightCodes(codes.to(torch.int64), scale.flatten(), quantizer.bit_width)


def activation_grid(layer, name: str, integer_zero_point: bool) -> ActivationGrid:
    """The layer's input quantizer in eval mode: scale ``s'·σ_ema``, offset and integer range."""
    quantizer = layer.quantizer.input_quantizer
    transformation = quantizer.transformation
    # s' = max(|s|, ε); its gradient scale g only shapes the backward pass (with g = 1 the
    # formula's (|s| - |s|g) + |s|g is |s| itself, without the ulp that another g may add).
    from rupq.quantizers.fake_quantize import learnable_step

    scale = learnable_step(quantizer.step.detach(), 1.0)
    if transformation is not None:
        if transformation.momentum == 0.0:
            raise ExportError(
                f"layer '{name}': its input σ is the std of each batch (Standardization momentum 0), "
                "which no constant Q/DQ scale can express"
            )
        scale = scale * transformation.ema_std.detach()
    scale = float(scale)
    offset = getattr(quantizer, "offset", None)
    offset = None if offset is None else float(offset.detach())
    zero_point = 0
    if offset is not None and integer_zero_point:
        zero_point, offset = -round(offset / scale), None
    return ActivationGrid(scale, offset, zero_point, quantizer.negative_clip, quantizer.positive_clip,
                          quantizer.bit_width, quantizer.half_wave)


def round_offsets_to_zero_points(model) -> None:
    """Set each LSQ+ offset ``o`` to ``round(o / scale) · scale`` in place: the model that the
    ``--integer-zero-points`` export computes, to check it against and to measure the change."""
    import torch

    for name, layer in quantized_layers(model).items():
        grid = activation_grid(layer, name, integer_zero_point=True)
        offset = getattr(layer.quantizer.input_quantizer, "offset", None)
        if offset is not None:
            with torch.no_grad():
                offset.fill_(-grid.zero_point * grid.scale)


# ---- the ONNX graph -------------------------------------------------------------------------

def _integer_types() -> list:
    """``(numpy dtype, lowest, highest)`` of the ONNX integer types the graph uses, smallest first
    (``ml_dtypes`` gives numpy the 4-bit ones; onnx packs them two per byte)."""
    import ml_dtypes
    import numpy as np

    return [(ml_dtypes.uint4, 0, 15), (ml_dtypes.int4, -8, 7), (np.uint8, 0, 255), (np.int8, -128, 127)]


def weight_dtype(bit_width: int):
    """int4 for 2-4-bit codes (2- and 3-bit codes are clamped already: int4 holds them exactly), int8 for 5-8."""
    return _integer_types()[1 if bit_width <= 4 else 3][0]


def activation_carrier(low: int, high: int, zero_point: int = 0):
    """The smallest integer type holding ``[low, high]`` and the zero point: ``(numpy dtype, lowest, highest)``.

    A 4-bit type only when the range fills it exactly: onnxruntime has no Clip for 4-bit tensors,
    so a 2- or 3-bit activation rides in 8 bits and a Clip enforces its range.
    """
    for dtype, lowest, highest in _integer_types():
        holds = lowest <= min(low, zero_point) and max(high, zero_point) <= highest
        if holds and ((lowest, highest) == (low, high) or highest > 15):
            return dtype, lowest, highest
    return None


class GraphRewriter:
    """Turns a float ONNX model (from the float twin) into the Q/DQ model, layer by layer."""

    def __init__(self, model_proto):
        import onnx

        self.model = model_proto
        self.graph = model_proto.graph
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.prepend, self.insert_before = [], {}  # new nodes: at the start, or before a given node
        self.onnx = onnx

    def _constant(self, name: str, array) -> str:
        from onnx import numpy_helper

        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def _consumers(self, tensor: str) -> list:
        """``[(position in the graph, node)]`` of the nodes that read ``tensor``."""
        return [(index, node) for index, node in enumerate(self.graph.node) if tensor in node.input]

    def quantize_weight(self, layer_name: str, weight: WeightCodes) -> None:
        """``layer.weight`` becomes ``DequantizeLinear(codes, scale, 0, axis=0)`` under the same name."""
        import numpy as np
        from onnx import helper

        tensor = f"{layer_name}.weight"
        if tensor not in self.initializers:
            raise ExportError(f"layer '{layer_name}': the exported graph has no initializer '{tensor}' to quantize")
        dtype = weight_dtype(weight.bit_width)
        self.graph.initializer.remove(self.initializers.pop(tensor))
        channels = weight.scale.numel()
        codes = self._constant(f"{tensor}_codes", weight.codes.numpy().astype(np.int64).astype(dtype))
        scale = self._constant(f"{tensor}_scale", weight.scale.numpy().astype(np.float32).reshape(channels))
        zero = self._constant(f"{tensor}_zero_point", np.zeros(channels, dtype=dtype))
        self.prepend.append(helper.make_node("DequantizeLinear", [codes, scale, zero], [tensor], axis=0,
                                             name=f"{tensor}_dequantize"))

    def _layer_node(self, layer_name: str):
        """``(position, node)`` of the Conv/Gemm/MatMul that uses ``layer.weight`` (directly, or after a Transpose)."""
        tensor = f"{layer_name}.weight"
        users = self._consumers(tensor)  # the layer, and maybe Shape nodes of its zero bias
        users += [user for _, transpose in users if transpose.op_type == "Transpose"
                  for user in self._consumers(transpose.output[0])]
        layers = [(index, node) for index, node in users if node.op_type in ("Conv", "Gemm", "MatMul")]
        if len(layers) != 1:
            found = ", ".join(node.op_type for _, node in users) or "nothing"
            raise ExportError(f"layer '{layer_name}': expected one Conv/Gemm/MatMul using '{tensor}', found {found}")
        return layers[0]

    def quantize_input(self, layer_name: str, grid: ActivationGrid) -> None:
        """The data input of the layer's node goes through ``Sub → QuantizeLinear → [Clip] → DequantizeLinear → Add``."""
        import numpy as np
        from onnx import helper

        position, node = self._layer_node(layer_name)
        found = activation_carrier(grid.low, grid.high, grid.zero_point)
        if found is None:
            raise ExportError(
                f"layer '{layer_name}': a {grid.bit_width}-bit input (range {grid.low}..{grid.high}, zero point "
                f"{grid.zero_point}); the exporter writes 2-8-bit inputs"
            )
        dtype, lowest, highest = found
        prefix = f"{layer_name}.input"
        data_index = 0  # Conv(x, w), Gemm(x, w, b), MatMul(x, Transpose(w))
        value, new_nodes = node.input[data_index], []
        scale = self._constant(f"{prefix}_scale", np.array(grid.scale, dtype=np.float32))
        zero = self._constant(f"{prefix}_zero_point", np.array(grid.zero_point, dtype=dtype))
        if grid.offset is not None:
            offset = self._constant(f"{prefix}_offset", np.array(grid.offset, dtype=np.float32))
            new_nodes.append(helper.make_node("Sub", [value, offset], [f"{prefix}_shifted"], name=f"{prefix}_subtract_offset"))
            value = f"{prefix}_shifted"
        new_nodes.append(helper.make_node("QuantizeLinear", [value, scale, zero], [f"{prefix}_codes"], name=f"{prefix}_quantize"))
        value = f"{prefix}_codes"
        if (lowest, highest) != (grid.low, grid.high):  # the carrier is wider than the quantizer's range
            low = self._constant(f"{prefix}_low", np.array(grid.low, dtype=dtype))
            high = self._constant(f"{prefix}_high", np.array(grid.high, dtype=dtype))
            new_nodes.append(helper.make_node("Clip", [value, low, high], [f"{prefix}_clipped"], name=f"{prefix}_clip"))
            value = f"{prefix}_clipped"
        new_nodes.append(helper.make_node("DequantizeLinear", [value, scale, zero], [f"{prefix}_dequantized"],
                                          name=f"{prefix}_dequantize"))
        value = f"{prefix}_dequantized"
        if grid.offset is not None:
            new_nodes.append(helper.make_node("Add", [value, offset], [f"{prefix}_quantized"], name=f"{prefix}_add_offset"))
            value = f"{prefix}_quantized"
        node.input[data_index] = value
        self.insert_before.setdefault(position, []).extend(new_nodes)

    def finish(self):
        """The rewritten model: new nodes in topological order, opset 21, checked by onnx."""
        nodes = list(self.prepend)
        for position, node in enumerate(self.graph.node):
            nodes.extend(self.insert_before.get(position, []))
            nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        for opset in self.model.opset_import:
            if opset.domain in ("", "ai.onnx") and opset.version < OPSET:
                raise ExportError(f"the exporter wrote opset {opset.version}; int4 Q/DQ needs opset {OPSET}")
        self.onnx.checker.check_model(self.model)
        return self.model


def export_float_graph(model, input_size, name: str):
    """``torch.onnx.export`` of a model of standard modules, batch dimension dynamic."""
    import torch

    example = torch.zeros(2, *input_size)
    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=OPSET, optimize=False, verbose=False,
            input_names=["input"], dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    except Exception as error:  # the exporter's many failure types all mean "cannot express this model"
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ExportError(f"torch.onnx cannot export {name} at input size {list(input_size)}: {first[:300]}") from None
    proto = program.model_proto
    for node in proto.graph.node:
        # The exporter's debugging notes (Python stack traces, fx names; over half of a small
        # model's file): not part of the model, and they hold the paths of this machine.
        del node.metadata_props[:]
    return proto


def quantized_model_proto(model, input_size, arch_name: str, integer_zero_points: bool):
    """``(Q/DQ ONNX model, FP32 ONNX model, {layer: (weight bits, input bits)})``."""
    layers = quantized_layers(model)
    float_proto = export_float_graph(float_twin(model), input_size, arch_name)
    if not layers:
        return float_proto, float_proto, {}
    proto = copy.deepcopy(float_proto)
    rewriter = GraphRewriter(proto)
    bits = {}
    for name, layer in layers.items():
        rewriter.quantize_weight(name, weight_codes(layer, name))
        grid = activation_grid(layer, name, integer_zero_points)
        rewriter.quantize_input(name, grid)
        bits[name] = (layer.quantizer.weight_quantizer.bit_width, grid.bit_width)
    return rewriter.finish(), float_proto, bits


def layers_whose_file_codes_differ(model, proto) -> list[str]:
    """The quantized layers whose weight in the ONNX file, ``codes × scale`` read back from its
    initializers (int4 unpacked), is not PyTorch's eval-mode quantized weight bit for bit."""
    import numpy as np
    import torch
    from onnx import numpy_helper

    from rupq.quantizers.compiled import quantize

    stored = {init.name: init for init in proto.graph.initializer}
    differing = []
    for name, layer in quantized_layers(model).items():
        codes = numpy_helper.to_array(stored[f"{name}.weight_codes"]).astype(np.float32)
        scale = numpy_helper.to_array(stored[f"{name}.weight_scale"]).reshape([-1] + [1] * (codes.ndim - 1))
        with torch.no_grad(), quantize.eagerly():
            expected = layer.quantized_weight().numpy()
        if not np.array_equal(codes * scale, expected):
            differing.append(name)
    return differing


# ---- the integer checkpoint -----------------------------------------------------------------

def integer_checkpoint(model, arch: dict, input_size, integer_zero_points: bool) -> dict:
    """The ``--format torch`` file (layout in the README, section Export)."""
    import torch

    layers = quantized_layers(model)
    quantized_tensors = set()
    entries = {}
    for name, layer in layers.items():
        weight, grid = weight_codes(layer, name), activation_grid(layer, name, integer_zero_points)
        module = layer.module
        entry = {
            "type": type(module).__name__,
            "weight_codes": weight.codes.to(torch.int8),
            "weight_scale": weight.scale.clone(),
            "weight_bit_width": weight.bit_width,
            "bias": None if module.bias is None else module.bias.detach().clone(),
            "input_scale": grid.scale,
            "input_offset": 0.0 if grid.offset is None else grid.offset,
            "input_zero_point": grid.zero_point,
            "input_range": [grid.low, grid.high],
            "input_bit_width": grid.bit_width,
            "input_half_wave": grid.half_wave,
        }
        if isinstance(module, torch.nn.Conv2d):
            entry.update(stride=list(module.stride), padding=list(module.padding), dilation=list(module.dilation),
                         groups=module.groups, padding_mode=module.padding_mode)
        entries[name] = entry
        quantized_tensors.add(f"{name}.")
    rest = {key: value for key, value in model.state_dict().items()
            if not any(key.startswith(prefix) for prefix in quantized_tensors)}
    return {"format": INTEGER_FORMAT, "arch": arch, "input_size": list(input_size), "layers": entries,
            "state_dict": rest}


# ---- the check in onnxruntime ---------------------------------------------------------------

def _flat_outputs(output) -> list:
    import torch

    if isinstance(output, torch.Tensor):
        return [output]
    return [tensor for item in output for tensor in _flat_outputs(item)]


def torch_outputs(model, inputs, hooks=()) -> list:
    """The model in eval mode, the quantizer formula run eagerly (as :func:`weight_codes` does);
    ``hooks``: ``(module, forward hook)`` pairs installed for this pass only."""
    import torch

    from rupq.quantizers.compiled import quantize

    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad(), quantize.eagerly():
            return [tensor.float().numpy() for tensor in _flat_outputs(model(inputs))]
    finally:
        for handle in handles:
            handle.remove()


def output_step(model, inputs, reference: list) -> float:
    """One quantization step of the output: how far the outputs move when the input of the last
    quantized layer to run moves up by one of its steps (0 for a float model)."""
    import numpy as np

    layers, order = quantized_layers(model), []
    torch_outputs(model, inputs, [(layer, lambda module, args, out, name=name: order.append(name))
                                  for name, layer in layers.items()])
    if not order:
        return 0.0
    last = layers[order[-1]]
    step = activation_grid(last, order[-1], False).scale
    moved = torch_outputs(model, inputs, [(last.quantizer.input_quantizer, lambda module, args, out: out + step)])
    return max(float(np.abs(a - b).max()) for a, b in zip(moved, reference))


def activation_codes_torch(model, inputs) -> dict:
    """``{layer: integer codes of its input}`` in PyTorch: ``(x̂ - o) / a`` of each input quantizer's
    output ``x̂ = q·a + o``, rounded (exact: the float error is far below ½)."""
    codes = {}

    def keep_codes(name, layer):
        scale = activation_grid(layer, name, False).scale
        offset = getattr(layer.quantizer.input_quantizer, "offset", None)

        def hook(module, args, out):
            shifted = out.float() if offset is None else out.float() - offset.detach()
            codes[name] = (shifted / scale).round().numpy()
        return hook

    torch_outputs(model, inputs, [(layer.quantizer.input_quantizer, keep_codes(name, layer))
                                  for name, layer in quantized_layers(model).items()])
    return codes


def activation_codes_onnxruntime(proto, inputs, grids: dict) -> dict:
    """``{layer: integer codes of its input}`` in onnxruntime: each layer's DequantizeLinear output
    ``(y - z)·a`` made a graph output (of a copy of the model), then ``y = dq / a + z``."""
    import numpy as np
    from onnx import TensorProto, helper

    probe = copy.deepcopy(proto)
    names = [f"{name}.input_dequantized" for name in grids]
    for tensor in names:
        probe.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    session = onnxruntime_session(probe.SerializeToString())
    dequantized = session.run(names, {session.get_inputs()[0].name: inputs.numpy()})
    return {name: np.rint(values / grid.scale) + grid.zero_point
            for (name, grid), values in zip(grids.items(), dequantized)}


@dataclass
class CodeAgreement:
    compared: int
    differing: int
    max_difference: float

    @property
    def ok(self) -> bool:
        # A code one off is an activation on a rounding midpoint that the two runtimes' float
        # sums put on different sides; a systematic error (scale, offset, range) changes many.
        return self.max_difference <= 1 and self.differing <= 1e-3 * self.compared


def compare_codes(reference: dict, candidate: dict) -> CodeAgreement:
    import numpy as np

    compared = differing = 0
    largest = 0.0
    for name, codes in reference.items():
        difference = np.abs(codes - candidate[name].reshape(codes.shape))
        compared += difference.size
        differing += int((difference > 0).sum())
        largest = max(largest, float(difference.max(initial=0)))
    return CodeAgreement(compared, differing, largest)


def onnxruntime_session(model_bytes: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def onnxruntime_outputs(model_bytes, inputs) -> list:
    """The model (its bytes, or a session of them) run by onnxruntime's CPU kernels on ``inputs``."""
    session = onnxruntime_session(model_bytes) if isinstance(model_bytes, bytes) else model_bytes
    return session.run(None, {session.get_inputs()[0].name: inputs.numpy()})


@dataclass
class Agreement:
    max_difference: float
    tolerance: float
    top1_agreement: float | None  # for [batch, classes] outputs

    @property
    def ok(self) -> bool:
        return self.max_difference <= self.tolerance


def compare(reference: list, candidate: list, tolerance: float) -> Agreement:
    import numpy as np

    if len(reference) != len(candidate) or any(a.shape != b.shape for a, b in zip(reference, candidate)):
        raise ExportError(
            f"onnxruntime returned outputs of shapes {[b.shape for b in candidate]}, PyTorch {[a.shape for a in reference]}"
        )
    difference = max(float(np.abs(a - b).max()) for a, b in zip(reference, candidate))
    top1 = None
    if len(reference) == 1 and reference[0].ndim == 2:
        top1 = float((reference[0].argmax(1) == candidate[0].argmax(1)).mean())
    return Agreement(difference, tolerance, top1)


def float_tolerance(reference: list) -> float:
    """Float32 noise between two runtimes: 1e-4 of the largest output (at least 1e-5)."""
    return max(1e-5, 1e-4 * max(float(abs(a).max()) for a in reference))


# ---- inputs ---------------------------------------------------------------------------------

def default_input_size(dataset) -> tuple[int, int, int] | None:
    """``(C, H, W)`` a dataloader of the framework feeds the model (validation/LR side)."""
    name = type(dataset).__name__
    if name == "FashionMNISTDataloader":
        return (1, 28, 28)
    if name == "ImageNet2012Dataloader":
        return (3, 224, 224)
    if name == "COCODataloader":
        return (3, dataset.image_size, dataset.image_size)
    if hasattr(dataset, "patch_size") and hasattr(dataset, "scale"):  # super-resolution: LR patches
        return (3, dataset.patch_size // dataset.scale, dataset.patch_size // dataset.scale)
    return None


def check_batch(task, input_size, count: int, seed: int = 0):
    """``(inputs, where from)``: the first ``count`` validation samples of ``input_size`` when the
    config's dataset is available, else standard normal noise."""
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
    except Exception as error:  # a dataset that is not on this machine, or not readable
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, *input_size, generator=generator), f"{count} random inputs ({reason})"


def parse_input_size(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ConfigError(f"--input-size {text!r}: expected three positive integers C,H,W (e.g. 3,224,224)")
    return tuple(int(part) for part in parts)


# ---- writing --------------------------------------------------------------------------------

def write_atomic(data: bytes, out: Path) -> None:
    """Write to a temporary file in ``out``'s folder, then rename it: nothing half-written at ``out``."""
    folder = out.parent
    if not folder.is_dir():
        raise ConfigError(f"--out {out}: folder {folder} does not exist")
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, out)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def describe_bits(bits: dict) -> str:
    """``w4a4 ×20, w8a8 ×1`` for the summary."""
    from collections import Counter

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
    import torch

    from rupq.models import architecture_of
    from rupq.tools.training.task import describe_arch

    model, task = load_model(checkpoint, config_path)
    arch = architecture_of(model)
    input_size = parse_input_size(args.input_size) if args.input_size else default_input_size(task.training_loop.dataset)
    if input_size is None:
        raise ConfigError(f"cannot tell the input size of {type(task.training_loop.dataset).__name__}; give --input-size C,H,W")
    layers = quantized_layers(model)
    progress(f"      {describe_arch(arch)}, {len(layers)} quantized layers, input {list(input_size)}")

    progress("[2/5] integer weight codes and activation grids from the quantizers")
    if args.format == "torch":
        content = integer_checkpoint(model, arch, input_size, args.integer_zero_points)
        bits = {name: (entry["weight_bit_width"], entry["input_bit_width"]) for name, entry in content["layers"].items()}
        progress("[3/5] checking the codes: codes × scale equals PyTorch's quantized weight in every layer")
        from rupq.quantizers.compiled import quantize

        for name, layer in layers.items():
            entry = content["layers"][name]
            with torch.no_grad(), quantize.eagerly():
                expected = layer.quantized_weight()
            shape = [-1] + [1] * (expected.dim() - 1)
            if not torch.equal(entry["weight_codes"].float() * entry["weight_scale"].view(shape), expected):
                raise ExportError(f"layer '{name}': integer codes × scales differ from PyTorch's quantized weight")
        import io

        buffer = io.BytesIO()
        torch.save(content, buffer)
        progress(f"[4/5] writing {out}")
        write_atomic(buffer.getvalue(), out)
        progress("[5/5] onnxruntime check: not applicable to --format torch")
        size = out.stat().st_size
        progress(f"done in {time.monotonic() - started:.1f} s: {len(layers)} layers ({describe_bits(bits) or 'none'}), "
                 f"{size / 1e6:.3f} MB")
        return {"layers": len(layers), "bits": bits, "size": size}

    progress("[3/5] exporting the float graph with torch.onnx, then writing integer weights and Q/DQ")
    proto, float_proto, bits = quantized_model_proto(model, input_size, describe_arch(arch), args.integer_zero_points)
    data = proto.SerializeToString()
    float_size = float_proto.ByteSize()

    count = args.check_batch
    inputs, origin = check_batch(task, input_size, count)
    progress(f"[4/5] running the file in onnxruntime on {origin}")
    reference_model = model
    if args.integer_zero_points and layers:
        reference_model = copy.deepcopy(model)
        round_offsets_to_zero_points(reference_model)
    reference = torch_outputs(reference_model, inputs)
    step = output_step(reference_model, inputs, reference)
    tolerance = max(step, float_tolerance(reference))
    agreement = compare(reference, onnxruntime_outputs(data, inputs), tolerance)
    summary = {"layers": len(layers), "bits": bits, "size": len(data), "float_size": float_size,
               "max_difference": agreement.max_difference, "tolerance": tolerance,
               "top1_agreement": agreement.top1_agreement}
    top1 = "" if agreement.top1_agreement is None else f", top-1 agreement {100 * agreement.top1_agreement:.1f} %"
    if not agreement.ok:
        raise ExportError(
            f"onnxruntime and PyTorch disagree: max |difference| {agreement.max_difference:.3g} > one output "
            f"step {tolerance:.3g}{top1}; nothing written to {out}"
        )
    if layers:
        grids = {name: activation_grid(layer, name, args.integer_zero_points) for name, layer in layers.items()}
        codes = compare_codes(activation_codes_torch(reference_model, inputs), activation_codes_onnxruntime(proto, inputs, grids))
        summary.update(codes_compared=codes.compared, codes_differing=codes.differing)
        if not codes.ok:
            raise ExportError(
                f"onnxruntime and PyTorch disagree: {codes.differing} of {codes.compared} activation codes differ "
                f"(by up to {codes.max_difference:.0f}); nothing written to {out}"
            )
        progress(f"      activation codes of the {len(layers)} quantized inputs: {codes.compared - codes.differing} of "
                 f"{codes.compared} equal to PyTorch's (the others one step off)" if codes.differing else
                 f"      activation codes of the {len(layers)} quantized inputs: all {codes.compared} equal to PyTorch's")
    progress(f"      max |onnxruntime - PyTorch| = {agreement.max_difference:.3g} "
             f"(one output quantization step: {tolerance:.3g}){top1}")
    if args.integer_zero_points and layers:
        moved = compare(torch_outputs(model, inputs), reference, math.inf)
        moved_top1 = "" if moved.top1_agreement is None else f", top-1 agreement with it {100 * moved.top1_agreement:.1f} %"
        progress(f"      integer zero points move the outputs from the exact-offset model by up to "
                 f"{moved.max_difference:.3g}{moved_top1}")
        summary["zero_point_move"] = moved.max_difference

    progress(f"[5/5] writing {out}")
    write_atomic(data, out)
    ratio = float_size / len(data)
    progress(
        f"done in {time.monotonic() - started:.1f} s: {len(layers)} quantized layers ({describe_bits(bits) or 'float model'}), "
        f"{len(data) / 1e6:.3f} MB against {float_size / 1e6:.3f} MB for the FP32 export (1/{ratio:.1f}), "
        f"onnxruntime matches PyTorch within one output step"
    )
    return summary


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
