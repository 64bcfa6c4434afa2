"""The formula against the oracle at the sizes training uses, not only at toy sizes.

A million-element activation and a [256, 256, 3, 3] weight run through reductions split over
many chunks and every thread torch has; a wrong reduction order or a lost chunk shows here and
not on a few hundred elements. Tolerances are relative to each gradient's own magnitude:

- values: equal but for codes whose oracle value lies within 1e-5 of a rounding midpoint
  (the formula divides by s'·σ once, the oracle by σ then by s');
- dL/dx: 1e-5 of its largest element, per element;
- dL/ds: 1e-3 of its largest element, dL/do: 1e-4 (sums of up to a million products that
  cancel; measured: 2e-4 and 7e-6 on the activation, 4e-7 on the weight's steps).
"""

import pytest
import torch
from formula_paths import formula  # noqa: F401 (fixture)
from quantizer_reference import install_reference, reference_grid
from test_fake_quantize import _close, assert_same_quantization

from rupq.config import load_config
from rupq.models import create_model
from rupq.quantizers import initialize_quantizers
from rupq.quantizers.fake_quantize import step_gradient_scale


def _oracle(x, step, offset, n, p, std_dims, ema, momentum, bound_gradient):
    """docs/quantization.md's formula step by step: ``torch.std`` of ``x - o``, the EMA mixing, the literal grid."""
    shifted = x if offset is None else x - offset
    std = torch.std(shifted, std_dims, keepdim=True)
    sigma = std if momentum == 0 else (momentum * ema).detach() + (1 - momentum) * std
    out = reference_grid(shifted / sigma, step, n, p, bound_gradient) * sigma
    codes = (shifted / sigma / step).detach()
    return (out if offset is None else out + offset), codes


CASES = {
    # RUPQ activation quantizer: 8 x 32 x 64 x 64 = 1,048,576 elements, one σ with an EMA, an offset.
    "activation": dict(shape=(8, 32, 64, 64), per_channel=False, offset=0.05, n=0, p=15, momentum=0.9, bound_gradient=1.0),
    # The same at the offset's initial 0: the ReLU's half-million zeros tie with the lower bound.
    "activation_ties": dict(shape=(8, 32, 64, 64), per_channel=False, offset=0.0, n=0, p=15, momentum=0.9, bound_gradient=0.5),
    # RUPQ weight quantizer of a 3x3 conv with 256 channels: one step and one σ per output channel.
    "weight": dict(shape=(256, 256, 3, 3), per_channel=True, offset=None, n=-8, p=7, momentum=0.0, bound_gradient=1.0),
}


@pytest.mark.parametrize("case", CASES)
def test_formula_matches_the_oracle_at_training_sizes(case, formula):
    spec = CASES[case]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(spec["shape"], generator=generator) * 0.7
    if not spec["per_channel"]:
        x = x.relu()
    channels = spec["shape"][0]
    step = torch.rand(channels, 1, 1, 1, generator=generator) * 0.2 + 0.2 if spec["per_channel"] else torch.tensor(0.3)
    offset = None if spec["offset"] is None else torch.tensor(spec["offset"])
    std_dims = (1, 2, 3) if spec["per_channel"] else (0, 1, 2, 3)
    ema = torch.tensor(1.2)
    grad_out = torch.randn(spec["shape"], generator=generator)
    n, p, momentum = spec["n"], spec["p"], spec["momentum"]

    leaves = [t.clone().requires_grad_() for t in (x, step)]
    offset_leaf = None if offset is None else offset.clone().requires_grad_()
    out, _ = formula(leaves[0], leaves[1], n, p, step_gradient_scale(x.numel(), step.numel(), p),
                     offset=offset_leaf, std_dims=std_dims, ema=ema, momentum=momentum, bound_gradient=spec["bound_gradient"])
    out.backward(grad_out)

    oracle_leaves = [t.clone().requires_grad_() for t in (x, step)]
    oracle_offset = None if offset is None else offset.clone().requires_grad_()
    expected, codes = _oracle(oracle_leaves[0], oracle_leaves[1], oracle_offset, n, p, std_dims, ema, momentum,
                              spec["bound_gradient"])
    expected.backward(grad_out)

    assert_same_quantization(out.detach(), expected.detach(), codes)
    _close(leaves[0].grad, oracle_leaves[0].grad, 1e-5)
    _close(leaves[1].grad, oracle_leaves[1].grad, 1e-3)
    if offset is not None:
        _close(offset_leaf.grad, oracle_offset.grad, 1e-4)


def test_quantized_small_resnet_step_matches_the_model_with_the_oracle_installed():
    """One training step of the quickstart's RUPQ model: every parameter's gradient, both ways."""
    torch.manual_seed(0)
    parser_of = lambda: load_config("rupq/examples/quickstart/w4a4_rupq.yaml")["model_parser"]  # noqa: E731
    images = torch.randn(16, 1, 28, 28)
    labels = torch.randint(0, 10, (16,))
    ours = parser_of().parse(create_model("small_resnet"))
    initialize_quantizers(ours, images)
    # As after an optimizer step: MinErrorInitializer's largest candidate puts each channel's
    # largest weight exactly on the clip bound, where the formula's t = w / (s'σ) and the
    # oracle's (w / σ) / s' may land an ulp apart, on either side of the bound (μ_b of the gradient
    # or none); a step moved off the candidate grid leaves no element exactly there.
    with torch.no_grad():
        for quantizer in (module for module in ours.modules() if hasattr(module, "initializer")):
            quantizer.step.mul_(1.001)
    oracle = parser_of().parse(create_model("small_resnet"))
    oracle.load_state_dict(ours.state_dict())
    install_reference(oracle)

    losses = []
    for model in (ours, oracle):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    oracle_parameters = dict(oracle.named_parameters())
    for name, parameter in ours.named_parameters():
        expected = oracle_parameters[name].grad
        # Relative to this gradient's largest element: a code on a rounding midpoint may round
        # the other way in one path (see the module docstring) and move a few outputs by one step.
        scale = expected.abs().max().clamp_min(1e-12)
        assert (parameter.grad - expected).abs().max() <= 2e-3 * scale, name
