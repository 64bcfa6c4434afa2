"""The ONNX graph: the float model exported by ``torch.onnx``, rewritten into integer weights and Q/DQ inputs.

The quantized model's float twin (each quantized layer replaced by the plain layer it wraps) is
exported by the torch.export-based exporter (the default since torch 2.9; ``optimize=False`` so
that BatchNorm is not folded into the weights): a model of standard torch modules only, the path
every torch release tests, whatever the architecture. Then, with the ``onnx`` API, each quantized
layer's weight initializer (named after the parameter, ``layer.weight``) becomes integer codes
(int4 for 2–4 bits, packed two per byte; int8 for 5–8) followed by ``DequantizeLinear`` with one
scale per output channel, and the layer's input passes through
``Sub(offset) → QuantizeLinear → [Clip] → DequantizeLinear → Add(offset)`` with the quantizer's
range enforced exactly.

Asking torch.onnx to trace the fake-quant formula itself (custom autograd functions, custom ops
and their translation tables) ties the export to exporter internals that changed between torch
releases; this rewrite only relies on the exported graph consuming ``layer.weight`` as an
initializer, which is checked (a missing name is an :class:`ExportError`).
"""

import copy

from rupq.deploy.integers import (
    ActivationGrid,
    WeightCodes,
    activation_grid,
    codes_give_quantized_weight,
    float_twin,
    quantized_layers,
    weight_codes,
)
from rupq.errors import ExportError

OPSET = 21  # the first opset with int4/uint4 QuantizeLinear/DequantizeLinear

# Node names of an input quantizer's chain, "<layer>.input_<step>": the check finds them again (input_chain).
SUBTRACT, QUANTIZE, CLIP, DEQUANTIZE = CHAIN_STEPS = ("subtract_offset", "quantize", "clip", "dequantize")


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

    def quantize_input(self, layer_name: str, grid: ActivationGrid, pads_quantized_input: bool = False) -> None:
        """The data input of the layer's node goes through ``Sub → QuantizeLinear → [Clip] → DequantizeLinear → Add``;
        with ``pads_quantized_input`` (a layer whose own forward pads, as timm's Conv2dSame does, runs
        on the quantized input), the input of the ``Pad`` in front of it does."""
        import numpy as np
        from onnx import helper

        position, node = self._layer_node(layer_name)
        if pads_quantized_input:
            padding = [(index, pad) for index, pad in enumerate(self.graph.node)
                       if pad.op_type == "Pad" and pad.output[0] == node.input[0]]
            if padding:
                position, node = padding[0]
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
            new_nodes.append(helper.make_node("Sub", [value, offset], [f"{prefix}_shifted"], name=f"{prefix}_{SUBTRACT}"))
            value = f"{prefix}_shifted"
        new_nodes.append(helper.make_node("QuantizeLinear", [value, scale, zero], [f"{prefix}_codes"], name=f"{prefix}_{QUANTIZE}"))
        value = f"{prefix}_codes"
        if (lowest, highest) != (grid.low, grid.high):  # the carrier is wider than the quantizer's range
            low = self._constant(f"{prefix}_low", np.array(grid.low, dtype=dtype))
            high = self._constant(f"{prefix}_high", np.array(grid.high, dtype=dtype))
            new_nodes.append(helper.make_node("Clip", [value, low, high], [f"{prefix}_clipped"], name=f"{prefix}_{CLIP}"))
            value = f"{prefix}_clipped"
        new_nodes.append(helper.make_node("DequantizeLinear", [value, scale, zero], [f"{prefix}_dequantized"],
                                          name=f"{prefix}_{DEQUANTIZE}"))
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
        raise ExportError(f"torch.onnx cannot export {name} at input size {list(input_size)}: {first[:300]}") from error
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
        rewriter.quantize_input(name, grid, layer.runs_own_forward)
        bits[name] = (layer.quantizer.weight_quantizer.bit_width, grid.bit_width)
    return rewriter.finish(), float_proto, bits


def input_chain(proto, layer_name: str) -> tuple[str, list, str]:
    """``(tensor read, nodes, dequantized tensor)`` of a layer's input quantizer in a file written here:
    the float tensor its first node reads, its ``Sub → QuantizeLinear → [Clip] → DequantizeLinear``
    nodes in graph order, and the DequantizeLinear output (before the offset is added back)."""
    names = {f"{layer_name}.input_{step}" for step in CHAIN_STEPS}
    nodes = [node for node in proto.graph.node if node.name in names]
    if not nodes or nodes[-1].op_type != "DequantizeLinear":
        raise ExportError(f"layer '{layer_name}': no QuantizeLinear/DequantizeLinear on its input in the file")
    return nodes[0].input[0], nodes, nodes[-1].output[0]


def layers_whose_file_codes_differ(model, proto) -> list[str]:
    """The quantized layers whose weight in the ONNX file, ``codes × scale`` read back from its
    initializers (int4 unpacked), is not PyTorch's eval-mode quantized weight bit for bit."""
    import numpy as np
    import torch
    from onnx import numpy_helper

    stored = {init.name: torch.from_numpy(numpy_helper.to_array(init).astype(np.float32))
              for init in proto.graph.initializer if init.name.endswith((".weight_codes", ".weight_scale"))}
    return [name for name, layer in quantized_layers(model).items()
            if not codes_give_quantized_weight(layer, stored[f"{name}.weight_codes"], stored[f"{name}.weight_scale"])]
