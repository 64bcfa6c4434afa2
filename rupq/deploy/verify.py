"""The proof that an exported file computes what the PyTorch model computes, in onnxruntime.

Two checks on one batch: every quantized layer's input codes equal PyTorch's (a code one step off
is an activation on a rounding midpoint that the two runtimes' float sums put on different sides;
at most 0.1 % of them), and the outputs agree within one quantization step of the output.
"""

import copy
import os
from dataclasses import dataclass

from rupq.deploy.integers import activation_grid, quantized_layers
from rupq.errors import ExportError


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


