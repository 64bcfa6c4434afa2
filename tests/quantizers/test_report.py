import pytest
import torch
import torchvision
from torch import nn

from rupq.quantizers import MeanStdInitializer, calibration_report, initialize_quantizers, quantizers_of
from test_parser import _rupq_parser


def test_calibration_report_lists_every_wrapped_tensor():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    _rupq_parser({"default": 4, "exceptions": {"conv1": 8}}, {"default": 4, "exceptions": {"conv1": 8}},
                 {"default": True, "exceptions": {"conv1": False}}, n_iters=20).parse(model)
    assert "not initialized" in calibration_report(model)
    for _, quantizer in quantizers_of(model):
        quantizer.initializer = MeanStdInitializer()  # the report is the subject here, not the search
    initialize_quantizers(model, torch.randn(2, 3, 32, 32))
    report = calibration_report(model)
    lines = report.splitlines()
    assert lines[0].split() == ["layer", "tensor", "bits", "half_wave", "min", "max", "initial", "step"]
    assert len(lines) == 2 + 2 * 21
    conv1_input = lines[2].split()
    assert conv1_input[:4] == ["conv1", "input", "8", "no"]
    q = model.conv1.quantizer.input_quantizer
    assert float(conv1_input[4]) == float(f"{q.min_value.item():.6g}") and float(conv1_input[6]) == float(f"{q.step.item():.6g}")
    # fc's weight step is per output channel: its row shows the mean and (min..max) of the 10 steps.
    fc_weight = lines[-1].split()
    assert fc_weight[:4] == ["fc", "weight", "4", "no"] and len(fc_weight) == 8
    steps = model.fc.quantizer.weight_quantizer.initial_step
    assert steps.numel() == 10 and steps.min() < steps.max()
    low, high = fc_weight[7].removeprefix("(").removesuffix(")").split("..")
    assert float(fc_weight[6]) == pytest.approx(steps.mean().item(), rel=1e-5)
    assert float(low) == pytest.approx(steps.min().item(), rel=1e-3)
    assert float(high) == pytest.approx(steps.max().item(), rel=1e-3)
    assert len(lines[1]) == max(len(line) for line in lines)  # underlined to the table's width


class _Mixed(nn.Module):
    """Quantized layers next to every kind of layer left in float."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 4, 2)
        self.conv1d = nn.Conv1d(4, 4, 1)
        self.conv3d = nn.Conv3d(4, 4, 1)
        self.embedding = nn.Embedding(10, 4)
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)
        self.token = nn.Parameter(torch.zeros(1, 1, 4))
        self.skipped = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)


def test_summary_lists_quantized_layers_and_every_layer_left_in_float_with_its_reason():
    from rupq.quantizers.report import summary

    parser = _rupq_parser({"default": 4, "exceptions": {"head": 8}}, {"default": 3}, {"default": False}, skip=["skip*"])
    model = parser.parse(_Mixed())
    rows = {line.split()[0]: line for line in summary(model).splitlines()[1:]}
    assert summary(model).splitlines()[0] == "quantized: 2 layers (1 Conv2d, 1 Linear)"
    assert rows["conv"].split() == ["conv", "Conv2d", "3", "4", "signed", "yes", "yes", "w/a"]
    assert rows["head"].split() == ["head", "Linear", "3", "8", "signed", "yes", "yes", "w/a"]
    assert "left in float: 9 layers with parameters" in summary(model)
    reasons = {name: " ".join(line.split()[2:]) for name, line in rows.items() if name not in ("conv", "head")}
    assert reasons["up"] == "unsupported type ConvTranspose2d (RUPQ quantizes Conv2d and Linear layers)"
    assert reasons["conv1d"] == "unsupported type Conv1d (RUPQ quantizes Conv2d and Linear layers)"
    assert reasons["conv3d"] == "unsupported type Conv3d (RUPQ quantizes Conv2d and Linear layers)"
    assert reasons["embedding"] == "unsupported type Embedding (RUPQ quantizes Conv2d and Linear layers)"
    assert reasons["attn"] == "unsupported: the packed input projection (in_proj_weight) of MultiheadAttention"
    assert reasons["attn.out_proj"] == "read directly by its parent MultiheadAttention (its forward uses out_proj.weight)"
    assert reasons["skipped"] == "skipped by pattern 'skip*'"
    assert reasons["(model)"] == "parameters outside a Conv2d/Linear layer (float in the method)"
    assert rows["1"].split() == ["1", "layer", "(norm)", "BatchNorm2d", "normalization", "(float", "in", "the", "method)"]


def test_summary_of_a_model_without_quantized_layers():
    from rupq.quantizers.report import summary

    assert summary(nn.Sequential(nn.Linear(2, 2))).splitlines()[:2] == [
        "no quantized layer (rupq.quantize or a model_parser wraps Conv2d and Linear layers)",
        "left in float: 1 layers with parameters",
    ]
