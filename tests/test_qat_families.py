"""rupq.quantize on model families that break naive wrappers (random weights, small inputs, no
downloads): the summary accounts for every Conv2d and Linear, 16 bits everywhere computes the
float model's outputs, and training steps at the preset's bits move every quantizer parameter."""

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import rupq
from rupq.quantizers.presets import preset

FAMILIES = {
    # hardswish, squeeze-excitation
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=10),
    "regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(num_classes=10),
    # LayerNorm, 7x7 depthwise, Linear inside blocks
    "convnext_tiny": lambda: torchvision.models.convnext_tiny(num_classes=10),
    # nn.MultiheadAttention: packed in_proj, out_proj read by its parent. vit_b_16's class and
    # blocks, 2 of them 64 wide instead of 12 of 768 (86 M parameters: 20 s more per test)
    "vision_transformer": lambda: torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
    ),
    # Conv2dSame ("same" padding computed on the fly), timm's Linear subclass
    "timm:tf_mobilenetv3_small_minimal_100": lambda: timm.create_model(
        "tf_mobilenetv3_small_minimal_100", pretrained=False, num_classes=10
    ),
    "timm:vit_tiny_patch16_224": lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10),
    "timm:resnet18d": lambda: timm.create_model("resnet18d", pretrained=False, num_classes=10),
}


def _float_model(name):
    """The family's model with well-conditioned random weights, in eval mode.

    Zero-initialised weights (torchvision's ViT head) get small random values, so that the output
    is not identically zero; BatchNorm running statistics (0 and 1 as built) are set by one pass
    in training mode, so that activations stay at unit scale: without it deep random networks
    amplify any difference, quantization's included, chaotically."""
    torch.manual_seed(0)
    model = FAMILIES[name]()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and not weight.any():
            # timm's zero_init_last: a zero BatchNorm scale would cut the gradients of its branch
            nn.init.normal_(weight, std=0.02) if weight.dim() > 1 else nn.init.ones_(weight)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: one pass sets the statistics
    if any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules()):
        model.train()
        with torch.no_grad():
            model(torch.randn(64, 3, 32, 32))
    return model.eval()


class _WholeRange:
    """A step per row of ``max|x| / p``: the grid covers the whole first tensor. MinErrorInitializer
    would choose about the same at 16 bits, but its search costs seconds per layer there."""

    def __call__(self, x, negative_clip, positive_clip, step_shape):
        rows = x.detach().float().reshape(max(1, x.shape[0] if step_shape else 1), -1)
        return (rows.abs().amax(1) / positive_clip).clamp_min(1e-8).reshape(step_shape)


def _whole_range(parser):
    """``parser`` (a preset) with whole-range initial steps: calibration in milliseconds."""
    for prototype in parser.wrappers.values():
        for quantizer in (prototype.quantizer.input_quantizer, prototype.quantizer.weight_quantizer):
            quantizer.initializer = _WholeRange()
    return parser


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_summary_and_16_bit_equivalence(name):
    model = _float_model(name)
    layers = {layer: type(module) for layer, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))}
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(images)
    # The rupq preset's quantizers (offset, standardization, per-channel weights) at 16 bits.
    rupq.quantize(model, _whole_range(preset("rupq_w4a4")), layers={"*": 16}, verbose=False)
    summary = rupq.summary(model)
    rows = {line.split()[0]: line.split()[1] for line in summary.splitlines() if line.split()}
    assert {layer: rows.get(layer) for layer in layers} == {layer: kind.__name__ for layer, kind in layers.items()}, summary
    with torch.no_grad():
        out = model(images)
    assert (out - reference).abs().max() / reference.abs().max() < 1e-2


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_trains_and_exports(name, tmp_path):
    """Three steps of the paper's optimizers at 4 bits give every quantizer parameter a gradient,
    move every step and lower the loss on the batch; the model then passes rupq.export's check."""
    trained = rupq.quantize(_float_model(name), _whole_range(preset("rupq_w4a4")), verbose=False)
    groups = rupq.param_groups(trained)
    quantizer_parameters = groups["quant_weight"] + groups["quant_input"]
    sgd = torch.optim.SGD(groups["weight"], lr=0.003, momentum=0.9)
    adam = torch.optim.Adam([{"params": groups["quant_weight"], "lr": 1e-4}, {"params": groups["quant_input"], "lr": 1e-3}])
    batch, labels = torch.randn(4, 3, 32, 32), torch.arange(4)
    trained.train()
    rupq.calibrate(trained, batch)
    before = [parameter.detach().clone() for parameter in quantizer_parameters]
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(trained(batch), labels)
        sgd.zero_grad(), adam.zero_grad()
        loss.backward()
        sgd.step(), adam.step()
        losses.append(loss.item())
    names = {id(parameter): name for name, parameter in trained.named_parameters()}
    assert [names[id(p)] for p in quantizer_parameters if p.grad is None] == []
    # Every step moves; an LSQ+ offset has a gradient only from values clipped by the grid, which
    # a small batch may not have: it must reach the optimizer (above), not necessarily move.
    unchanged = [names[id(new)] for old, new in zip(before, quantizer_parameters) if torch.equal(old, new)]
    assert [name for name in unchanged if not name.endswith(".offset")] == []
    with torch.no_grad():
        assert F.cross_entropy(trained(batch), labels).item() < losses[0], losses

    summary = rupq.export(trained.eval(), tmp_path / "model.onnx", torch.randn(2, 3, 32, 32))
    assert (tmp_path / "model.onnx").is_file() and summary["max_difference"] <= summary["tolerance"]
    assert summary["layers"] == sum(1 for layer, _ in trained.named_modules() if layer.endswith(".quantizer"))
