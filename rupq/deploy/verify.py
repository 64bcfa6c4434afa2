"""The proof that an exported file computes what the PyTorch model computes, in onnxruntime.

Every quantized layer is judged on its own, so that a model of any depth can pass; the file is
refused, naming the layer, unless

1. **weights**: the file's integer codes × scales are PyTorch's quantized weight, bit for bit;
2. **the input quantizer's nodes**, taken out of the file and run alone in onnxruntime on a sweep
   over the layer's grid (64 values per code, from three codes below the range to three above),
   give the codes of PyTorch's formula on the same values: scale, offset, zero point, rounding
   and range, whatever the data reaches;
3. **on the check batch**, the codes onnxruntime produces for each layer's input equal the codes
   PyTorch's formula produces from the same float input (the tensor that reaches the layer's
   QuantizeLinear in onnxruntime, taken as an extra graph output), except one-step differences
   at an exact rounding midpoint (within 1e-6 of it, relative), where the two runtimes' divisions
   may round differently;
4. **the float parts of the graph** (BatchNorm, activations, adds, pooling, heads), judged on
   their own: with each quantized layer of the PyTorch model fed the value that layer received in
   onnxruntime, the float input of every quantized layer agrees with onnxruntime's within float
   noise (1e-4 of its largest value), and the outputs within one quantization step of the output
   (float noise for a float model).

Not judged, reported: what onnxruntime's default graph optimizations do to the file. The check
runs onnxruntime with them disabled, so that every operator computes what the ONNX specification
says; even the basic level rewrites the file: it quantizes a float Conv/Gemm bias to int32 at the
scale input step × weight step when both inputs come from DequantizeLinear (onnxruntime#22889, as
every integer kernel does; RegNet's squeeze-excitation convolutions, zero offset: 0.0049 off), and
the extended levels fuse Q/DQ pairs with their neighbours into integer kernels, which on some
models (MobileNet-v3 with random weights, for example) compute outputs far from the written
graph's. The summary compares the default level with the file as written; a difference beyond one
output step is printed as a warning naming ``ORT_DISABLE_ALL``.

Not judged, reported: *propagation*. The two runtimes sum a convolution's products in different
orders, so an activation on a rounding midpoint may land on the other side, and every later layer
receives the difference. Comparing each layer's codes with those of the whole PyTorch chain
counts these flips, which grow with depth (a trained ResNet-18 at 224×224: none at the first
layer, a few per million after it, about 12 % at the last), and the PyTorch model's own outputs
against the file's show where they lead (max difference, top-1 agreement); they say nothing
about the export.
"""

import copy
import os
from dataclasses import dataclass, field

from rupq.deploy.integers import activation_grid, quantized_layers
from rupq.deploy.onnx_graph import input_chain, layers_whose_file_codes_differ
from rupq.errors import ExportError

#: A code one off counts as a rounding tie when ``(x - o) / a`` lies this close (relative) to a midpoint.
TIE_TOLERANCE = 1e-6
#: Sweep values per code: at (j + ½)/64 of the way, so that none sits on a rounding midpoint.
SWEEP_POINTS_PER_CODE = 64
SWEEP_CODES_BEYOND = 3
#: Two runtimes' float32 results of the same graph differ by less than this, relative to the largest value.
FLOAT_NOISE = 1e-4


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


# ---- codes --------------------------------------------------------------------------------------

def _input_codes(layer, name: str, quantized):
    """Integer codes of an input quantizer's output ``x̂ = q·a + o``: ``round((x̂ - o) / a)``
    (exact: the float error is far below ½)."""
    scale = activation_grid(layer, name, False).scale
    offset = getattr(layer.quantizer.input_quantizer, "offset", None)
    shifted = quantized.float() if offset is None else quantized.float() - offset.detach()
    return (shifted / scale).round().numpy()


def activation_codes_torch(model, inputs) -> dict:
    """``{layer: integer codes of its input}`` along the PyTorch model's own chain of layers."""
    codes = {}
    hooks = [(layer.quantizer.input_quantizer,
              lambda module, args, out, name=name, layer=layer: codes.__setitem__(name, _input_codes(layer, name, out)))
             for name, layer in quantized_layers(model).items()]
    torch_outputs(model, inputs, hooks)
    return codes


def formula_codes(layer, name: str, values):
    """``(codes, t)``: the codes PyTorch's formula (the layer's input quantizer, eval mode) gives
    ``values`` (a float32 array), and ``t = (x - o) / a`` in float64 to tell rounding ties."""
    import numpy as np
    import torch

    from rupq.quantizers.compiled import quantize

    quantizer = layer.quantizer.input_quantizer
    with torch.no_grad(), quantize.eagerly():
        codes = _input_codes(layer, name, quantizer(torch.from_numpy(values)))
    offset = getattr(quantizer, "offset", None)
    offset = 0.0 if offset is None else float(offset.detach())
    t = (values.astype(np.float64) - offset) / activation_grid(layer, name, False).scale
    return codes, t


def _decoded_codes(proto, layer_name: str, dequantized):
    """The integers onnxruntime's QuantizeLinear produced, from its DequantizeLinear output
    ``(y - z)·a`` with the file's own ``a`` and ``z``: ``y = dq / a + z``."""
    import numpy as np
    from onnx import numpy_helper

    _, nodes, _ = input_chain(proto, layer_name)
    scale_name, zero_name = nodes[-1].input[1:3]
    constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer
                 if init.name in (scale_name, zero_name)}
    return np.rint(dequantized / constants[scale_name]) + constants[zero_name].astype(np.float64)


@dataclass
class LayerCodes:
    """One layer's codes from onnxruntime against PyTorch's formula on the same float values."""

    name: str
    compared: int
    at_ties: int          # one step off at an exact rounding midpoint: accepted
    wrong: int            # any other difference
    example: str = ""     # the first wrong code, for the message

    @property
    def ok(self) -> bool:
        return self.wrong == 0


def compare_layer_codes(name: str, candidate, reference, t) -> LayerCodes:
    """``candidate`` codes (onnxruntime's) against ``reference`` codes and ``t`` from :func:`formula_codes`."""
    import numpy as np

    candidate = candidate.reshape(reference.shape)
    difference = np.abs(candidate - reference)
    distance_to_midpoint = np.abs(np.abs(t - np.floor(t)) - 0.5)
    at_tie = (difference == 1) & (distance_to_midpoint <= TIE_TOLERANCE * np.maximum(1.0, np.abs(t)))
    wrong = (difference > 0) & ~at_tie
    example = ""
    if wrong.any():
        first = np.flatnonzero(wrong)[0]
        example = (f"at (x - o) / a = {t.flat[first]:.4f}, onnxruntime gives {candidate.flat[first]:.0f}, "
                   f"PyTorch {reference.flat[first]:.0f}")
    return LayerCodes(name, int(difference.size), int(at_tie.sum()), int(wrong.sum()), example)


# ---- onnxruntime --------------------------------------------------------------------------------

def onnxruntime_session(model_bytes: bytes, optimized: bool = False):
    """An onnxruntime CPU session of the file. The check runs it with graph optimizations disabled,
    which computes the ONNX operators as written; ``optimized`` gives onnxruntime's default level,
    which rewrites biases and Q/DQ pairs (see the module docstring)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    if not optimized:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def onnxruntime_outputs(model_bytes, inputs) -> list:
    """The model (its bytes, or a session of them) run by onnxruntime's CPU kernels on ``inputs``."""
    session = onnxruntime_session(model_bytes) if isinstance(model_bytes, bytes) else model_bytes
    return session.run(None, {session.get_inputs()[0].name: inputs.numpy()})


def onnxruntime_layer_tensors(proto, inputs, names) -> tuple[list, dict]:
    """``(the model's outputs, {layer: (float tensor its QuantizeLinear chain reads, the codes it
    produced, their DequantizeLinear value)})`` in one run of a copy of the file with those tensors
    made graph outputs."""
    import numpy as np
    from onnx import TensorProto, helper

    probe = copy.deepcopy(proto)
    graph_inputs = {tensor.name for tensor in probe.graph.input}
    chains = {name: input_chain(probe, name) for name in names}
    tensors = {tensor for read, _, dequantized in chains.values() for tensor in (read, dequantized)} - graph_inputs
    for tensor in sorted(tensors):
        probe.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    session = onnxruntime_session(probe.SerializeToString())
    feed = {session.get_inputs()[0].name: inputs.numpy()}
    outputs = [output.name for output in proto.graph.output]
    results = session.run(outputs + sorted(tensors), feed)
    values = dict(zip(sorted(tensors), results[len(outputs):]))
    values.update(feed)
    return results[:len(outputs)], {
        name: (np.asarray(values[read], dtype=np.float32), _decoded_codes(proto, name, values[dequantized]), values[dequantized])
        for name, (read, _, dequantized) in chains.items()}


def onnxruntime_quantizers_alone(proto, sweeps: dict) -> dict:
    """``{layer: codes}``: each layer's quantizer nodes copied out of the file into a model of
    their own, run by onnxruntime on ``sweeps[layer]`` (a 1-D float32 array)."""
    from onnx import TensorProto, helper

    nodes, graph_inputs, graph_outputs, read_names = [], [], [], set()
    for name in sweeps:
        read, chain, dequantized = input_chain(proto, name)
        feed = f"{name}.sweep"
        for node in chain:
            node = copy.deepcopy(node)
            node.input[:] = [feed if tensor == read else tensor for tensor in node.input]
            read_names.update(node.input)
            nodes.append(node)
        graph_inputs.append(helper.make_tensor_value_info(feed, TensorProto.FLOAT, [None]))
        graph_outputs.append(helper.make_tensor_value_info(dequantized, TensorProto.FLOAT, [None]))
    constants = [init for init in proto.graph.initializer if init.name in read_names]
    alone = helper.make_model(helper.make_graph(nodes, "input_quantizers", graph_inputs, graph_outputs, constants),
                              opset_imports=proto.opset_import)
    session = onnxruntime_session(alone.SerializeToString())
    results = session.run(None, {f"{name}.sweep": values for name, values in sweeps.items()})
    return {name: _decoded_codes(proto, name, values) for name, values in zip(sweeps, results)}


def grid_sweep(grid):
    """Float32 values at ``(k + (j + ½)/64)·a + o`` for every code ``k`` of the grid and three
    beyond each bound (``o``: the offset, or ``-z·a`` with an integer zero point)."""
    import numpy as np

    codes = np.arange(grid.low - SWEEP_CODES_BEYOND, grid.high + SWEEP_CODES_BEYOND, dtype=np.float64)
    fractions = (np.arange(SWEEP_POINTS_PER_CODE) + 0.5) / SWEEP_POINTS_PER_CODE
    base = grid.offset if grid.offset is not None else -grid.zero_point * grid.scale
    return ((codes[:, None] + fractions[None, :]).ravel() * grid.scale + base).astype(np.float32)


# ---- outputs ------------------------------------------------------------------------------------

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
    return max(1e-5, FLOAT_NOISE * max(float(abs(a).max()) for a in reference))


# ---- the whole check ----------------------------------------------------------------------------

@dataclass
class Proof:
    """What :func:`check_file` established (it raises :class:`ExportError` where it fails)."""

    outputs: Agreement                               # judged: each layer fed onnxruntime's codes
    chain: Agreement | None = None                   # reported: the PyTorch model on its own
    optimized: Agreement | None = None               # reported: onnxruntime's default optimizations against the file as written
    layers: list = field(default_factory=list)       # LayerCodes on the check batch, in module order
    propagated: dict = field(default_factory=dict)   # layer -> codes differing from PyTorch's whole chain

    @property
    def codes_compared(self) -> int:
        return sum(layer.compared for layer in self.layers)

    @property
    def codes_at_ties(self) -> int:
        return sum(layer.at_ties for layer in self.layers)


def check_file(model, proto, inputs, integer_zero_points: bool) -> Proof:
    """Checks 1-4 of the module docstring on the file ``proto`` against ``model`` (eval mode; with
    ``integer_zero_points``, its LSQ+ offsets already rounded to the file's zero points)."""
    layers = quantized_layers(model)
    differing = layers_whose_file_codes_differ(model, proto)
    if differing:
        raise ExportError(f"layer '{differing[0]}': the file's integer weight codes × scales are not PyTorch's quantized weight")

    grids = {name: activation_grid(layer, name, integer_zero_points) for name, layer in layers.items()}
    sweeps = {name: grid_sweep(grid) for name, grid in grids.items()}
    for name, codes in (onnxruntime_quantizers_alone(proto, sweeps) if layers else {}).items():
        verdict = compare_layer_codes(name, codes, *formula_codes(layers[name], name, sweeps[name]))
        if not verdict.ok:
            grid = grids[name]
            raise ExportError(
                f"layer '{name}': its QuantizeLinear/DequantizeLinear nodes in the file do not give PyTorch's codes on "
                f"a sweep over the range {grid.low}..{grid.high} ({verdict.wrong} of {verdict.compared} differ; "
                f"first {verdict.example})"
            )

    reference = torch_outputs(model, inputs)
    tolerance = max(output_step(model, inputs, reference), float_tolerance(reference))
    data = proto.SerializeToString()
    as_written = onnxruntime_outputs(data, inputs)
    chain = compare(reference, as_written, tolerance)
    optimized = compare(as_written, onnxruntime_outputs(onnxruntime_session(data, optimized=True), inputs), tolerance)
    if not layers:
        return _outputs_agree(Proof(chain, chain, optimized))
    chain_codes = activation_codes_torch(model, inputs)
    outputs, tensors = onnxruntime_layer_tensors(proto, inputs, layers)
    fed_outputs, float_inputs = _fed_onnxruntime_codes(model, inputs, grids, tensors)
    _float_inputs_agree(float_inputs, tensors)
    proof = Proof(compare(fed_outputs, outputs, tolerance), chain, optimized)
    for name, (float_input, codes, _) in tensors.items():
        verdict = compare_layer_codes(name, codes, *formula_codes(layers[name], name, float_input))
        if not verdict.ok:
            raise ExportError(
                f"layer '{name}': onnxruntime's input codes differ from PyTorch's formula on the same float input "
                f"in {verdict.wrong} of {verdict.compared} values away from rounding ties (first {verdict.example})"
            )
        proof.layers.append(verdict)
        proof.propagated[name] = int((chain_codes[name] != codes.reshape(chain_codes[name].shape)).sum())
    return _outputs_agree(proof)


def _fed_onnxruntime_codes(model, inputs, grids: dict, tensors: dict) -> tuple[list, dict]:
    """``(outputs, {layer: float input})`` of the PyTorch model with each input quantizer's output
    replaced by the value onnxruntime's layer received (its dequantized codes plus the offset): the
    float parts of the graph computed from the same quantized values as in onnxruntime, without
    the flips that propagate from earlier layers."""
    import numpy as np
    import torch

    float_inputs = {}

    def fed(name):
        offset = grids[name].offset or 0.0
        value = torch.from_numpy(tensors[name][2] + np.float32(offset))

        def hook(module, args, out):
            float_inputs[name] = args[0].float().numpy()
            return value.reshape(out.shape).to(out.dtype)
        return hook

    layers = quantized_layers(model)
    outputs = torch_outputs(model, inputs, [(layers[name].quantizer.input_quantizer, fed(name)) for name in tensors])
    return outputs, float_inputs


def _float_inputs_agree(float_inputs: dict, tensors: dict) -> None:
    """Each layer's float input in onnxruntime against PyTorch's from the same quantized values
    upstream: float noise only (1e-4 of its largest value), else the graph between them differs."""
    import numpy as np

    for name, (onnx_input, _, _) in tensors.items():
        torch_input = float_inputs[name].reshape(onnx_input.shape)
        difference = float(np.abs(torch_input - onnx_input).max(initial=0))
        tolerance = FLOAT_NOISE * max(1.0, float(np.abs(onnx_input).max(initial=0)))
        if difference > tolerance:
            raise ExportError(
                f"layer '{name}': its float input in onnxruntime differs from PyTorch's, computed from the same "
                f"quantized values upstream, by up to {difference:.3g} (float noise: {tolerance:.3g})"
            )


def _outputs_agree(proof: Proof) -> Proof:
    outputs = proof.outputs
    if not outputs.ok:
        top1 = "" if outputs.top1_agreement is None else f", top-1 agreement {100 * outputs.top1_agreement:.1f} %"
        raise ExportError(
            f"onnxruntime and PyTorch disagree: max |difference| {outputs.max_difference:.3g} > one output "
            f"step {outputs.tolerance:.3g}{top1}, with every layer fed the same quantized input"
        )
    return proof
