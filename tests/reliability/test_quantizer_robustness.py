"""Quantizers stay finite and their settings are checked before training starts.

A step that the optimizer drives to zero or below must not turn outputs or gradients into
inf/NaN (the grid uses ``max(|s|, ε)``); bit widths, per-layer exceptions and shapes are
validated when the model parser wraps the model, before any data is read.
"""

import math
import re

import pytest
import torch

from conftest import REPO, fashion_config, write_config
from reliability_support import line_of, one_error_line, run_main
from rupq.config import load_config
from rupq.quantizers import quantizers_of
from rupq.tools.training.optimizers import build_optimizers
from rupq.tools.training.task import RunContext
from rupq.tools.training.trainer import Trainer

QUANT_OPTIMIZERS = """optimizers: &optimizers
  weight_optimizer:
    name: SGD
    model_params_type: weight
    params: {lr: 0.01, momentum: 0.9}
  quant_optimizer:
    name: SGD
    model_params_type: quant
    params: {lr: 0.01}
"""


def quantized_config(tmp_path, fashion_root, recipe: str, parser_edit=("", "")) -> tuple:
    """The quickstart's model parser of ``recipe`` on the tiny Fashion-MNIST config."""
    recipe_text = (REPO / "rupq" / "examples" / "quickstart" / f"{recipe}.yaml").read_text()
    parser = recipe_text[: recipe_text.index("\ndataset:")] + "\n"
    if parser_edit[0]:
        assert parser.count(parser_edit[0]) == 1, parser_edit[0]
        parser = parser.replace(parser_edit[0], parser_edit[1])
    text = fashion_config(tmp_path / "fp.yaml", fashion_root).read_text()
    start, end = text.index("optimizers: &optimizers"), text.index("training_loop: &training_loop")
    text = parser + text[:start] + QUANT_OPTIMIZERS + text[end:] + "  model_parser: *model_parser\n"
    return write_config(tmp_path / f"{recipe}.yaml", text), text


def all_finite(tensors) -> bool:
    return all(torch.isfinite(t).all() for t in tensors)


# Found by this test: with every step at 0, layers whose input collapses to one constant value
# get σ = 0; the quantizers now divide by max(σ, SIGMA_EPSILON) (rupq/quantizers/fake_quantize.py).


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("recipe, step", [
    ("w4a4_rupq", 0.0),
    ("w4a4_rupq", -0.25),
    ("w4a4_lsqplus", 0.0),
    ("w4a4_lsqplus", -0.25),
])
def test_steps_at_or_below_zero_keep_training_finite(tmp_path, tiny_fashion_mnist, one_thread, recipe, step):
    config, _ = quantized_config(tmp_path, tiny_fashion_mnist, recipe)
    task = load_config(config)["task"]
    context = RunContext(version_dir=None, device=torch.device("cpu"))
    model = task.build_model(context)
    task.initialize_quantizers(model, context)
    quantizers = list(quantizers_of(model))
    assert len(quantizers) >= 8
    with torch.no_grad():
        for _, quantizer in quantizers:  # as if the optimizer had pushed every step there
            quantizer.step.fill_(step)

    loop = task.training_loop
    output = loop.training_step(model, loop.dataset.calibration_batch())
    output.loss.backward()
    assert math.isfinite(output.loss.item()) and torch.isfinite(output.preds).all()
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(gradients) == len(list(model.parameters())) and all_finite(gradients)
    for name, quantizer in quantizers:
        assert quantizer.step.grad is not None and torch.isfinite(quantizer.step.grad).all(), name
    model.zero_grad()

    # A whole epoch of training and validation from there: no NonFiniteLoss, finite weights.
    optimizers = build_optimizers(model, task.optimizers)
    trainer = Trainer(model, loop, optimizers, epochs=1, device=context.device)
    logged = trainer.fit()
    assert math.isfinite(logged["train_target_loss"]) and math.isfinite(logged["val_target_loss"])
    assert all_finite(model.state_dict().values())


CONFIGURE_ERRORS = [
    ("bit width below 2", ("  input_bit_width:\n    default: 4", "  input_bit_width:\n    default: 1"),
     r"model_parser: input bit width of layer '[\w.]+' must be an integer in \[2, 32\), got 1"),
    ("bit width not an integer", ("  weight_bit_width:\n    default: 4", "  weight_bit_width:\n    default: 4.5"),
     r"model_parser: weight bit width of layer '[\w.]+' must be an integer in \[2, 32\), got 4.5"),
    ("exception for a layer that does not exist",
     ("  weight_bit_width:\n    default: 4\n    exceptions:\n      conv1: 8",
      "  weight_bit_width:\n    default: 4\n    exceptions:\n      conv9: 8"),
     r"model_parser.weight_bit_width.exceptions: 'conv9' is not a wrapped layer; closest: conv1"),
    ("half_wave not a boolean", ("  half_wave:\n    default: true", "  half_wave:\n    default: 1"),
     r"model_parser: half_wave of layer '[\w.]+' must be true or false, got 1"),
    ("per-channel input steps", ("        input_quantizer: !StepOffsetQuantizer\n          initializer: !MinErrorInitializer\n"
                                 "          transformation: !Standardization\n            momentum: 0.9999\n"
                                 "            std_init: 1.0\n        weight_quantizer: !StepQuantizer\n"
                                 "          initializer: !MinErrorInitializer\n          transformation: !Standardization\n"
                                 "            dim: [1, 2, 3]",
                                 "        input_quantizer: !StepOffsetQuantizer\n          initializer: !MinErrorInitializer\n"
                                 "          per_channel: true\n        weight_quantizer: !StepQuantizer\n"
                                 "          initializer: !MinErrorInitializer\n          transformation: !Standardization\n"
                                 "            dim: [1, 2, 3]"),
     r"layer '[\w.]+': per_channel is supported for weight quantizers only"),
    ("input standardization with a shape", ("            momentum: 0.9999\n            std_init: 1.0\n        weight_quantizer: !StepQuantizer\n"
                                            "          initializer: !MinErrorInitializer\n          transformation: !Standardization\n"
                                            "            dim: [1, 2, 3]",
                                            "            dim: [1]\n        weight_quantizer: !StepQuantizer\n"
                                            "          initializer: !MinErrorInitializer\n          transformation: !Standardization\n"
                                            "            dim: [1, 2, 3]"),
     r"layer '[\w.]+': input Standardization must reduce all dims \(dim: null\), got dim \[1\]"),
    ("a layer wrapped by the wrong type", ("    Linear: !QuantLinear", "    fc: !QuantConv2d"),
     r"layer 'fc' is a Linear; QuantConv2d wraps Conv2d layers"),
    ("a wrapper key that is neither type nor layer", ("    Linear: !QuantLinear", "    Linaer: !QuantLinear"),
     r"model_parser.wrappers: 'Linaer' is neither a module type nor a layer name of the model; closest: Linear\b.*"),
]


@pytest.mark.parametrize("name, parser_edit, message", CONFIGURE_ERRORS, ids=[c[0] for c in CONFIGURE_ERRORS])
def test_quantizer_settings_are_checked_when_configuring(tmp_path, name, parser_edit, message):
    """Through the command line; the dataset folder does not exist, so reaching it would fail otherwise."""
    config, text = quantized_config(tmp_path, tmp_path / "no-data-needed", "w4a4_rupq", parser_edit)
    line = one_error_line(run_main("--config", config, "--logdir", tmp_path / "logs"))
    where = re.escape(f"{config}:{line_of(text, '!ModelParser')}: ")
    assert re.fullmatch(f"error: {where}{message}", line), line

