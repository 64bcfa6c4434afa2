"""``!YOLOLoss``: anchor assignment, CIoU / objectness / class terms, and that it trains."""

import math

import pytest
import torch
import torch.nn.functional as F
from detection_data import one_thread  # noqa: F401 (fixture)

from rupq.models import create_model
from rupq.tools.losses import YOLOLoss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("yolo_v3_tiny_demo", num_classes=3).train()


def test_anchors_are_assigned_by_width_height_ratio(model):
    """Stride-32 layer of a 128 input: anchors 40×52, 64×80, 100×120 pixels; grid 4×4."""
    predictions = model(torch.zeros(1, 3, 128, 128))
    loss = YOLOLoss()
    # A 64×80 box at (80, 48): ratio < 4 for all three anchors of the stride-32 layer.
    # An 8×8 box: ratio 4 or more for every anchor but the stride-16 layer's 16×20 one.
    targets = torch.tensor([[0, 2, 80 / 128, 48 / 128, 64 / 128, 80 / 128], [0, 1, 0.5, 0.5, 8 / 128, 8 / 128]])
    coarse, fine = loss.assign(predictions, targets, model.yolo_layers)
    assert coarse["class"].tolist() == [2, 2, 2]
    batch, anchor, cell_y, cell_x = coarse["index"]
    assert anchor.tolist() == [0, 1, 2] and cell_x.tolist() == [2, 2, 2] and cell_y.tolist() == [1, 1, 1]
    assert torch.allclose(coarse["box"][0], torch.tensor([0.5, 0.5, 2.0, 2.5]))  # in cells, from the cell corner
    assert torch.allclose(coarse["anchor"], torch.tensor([[40, 52], [64, 80], [100, 120]]) / 32)
    # Stride-16 anchors 16×20, 24×36, 36×28 (ratios 2.5, 4.5, 4.5 to the 8×8 box).
    small = fine["class"] == 1
    assert fine["index"][1][small].tolist() == [0]
    assert fine["index"][3][small].tolist() == [4] and fine["index"][2][small].tolist() == [4]


def test_perfect_prediction_has_no_box_loss_and_iou_objectness_target(model):
    loss = YOLOLoss(anchor_threshold=1.3)  # assign only the 64×80 anchor
    predictions = [torch.full_like(p, -20.0) for p in model(torch.zeros(1, 3, 128, 128))]
    targets = torch.tensor([[0, 2, 80 / 128, 48 / 128, 64 / 128, 80 / 128]])
    # σ(0) = 0.5 puts the centre mid-cell; e^0 = 1 gives the anchor's size; class 2 certain, objectness high.
    predictions[0][0, 1, 1, 2, :4] = 0.0
    predictions[0][0, 1, 1, 2, 4] = 20.0
    predictions[0][0, 1, 1, 2, 5:] = torch.tensor([-20.0, -20.0, 20.0])
    total = loss(predictions, targets, model)
    assert total.item() == pytest.approx(0.0, abs=1e-6)
    # Shrinking the predicted box raises the box loss: 1 − CIoU of a box half as wide.
    predictions[0][0, 1, 1, 2, 2] = math.log(0.5)
    loss(predictions, targets, model)
    assert loss.last_components["box"].item() > 0.05 * 0.3


def test_terms_and_batch_scaling(model):
    loss = YOLOLoss()
    torch.manual_seed(1)
    predictions = [torch.randn_like(p) for p in model(torch.zeros(1, 3, 128, 128))]
    targets = torch.tensor([[0, 1, 0.3, 0.6, 0.4, 0.5]])
    single = loss(predictions, targets, model)
    components = {k: v.item() for k, v in loss.last_components.items()}
    assert single.item() == pytest.approx(sum(components.values()))
    # Objectness with no targets: BCE against zeros, averaged per layer and summed.
    no_targets = loss(predictions, torch.zeros(0, 6), model)
    expected = sum(F.binary_cross_entropy_with_logits(p[..., 4], torch.zeros_like(p[..., 4])) for p in predictions)
    assert no_targets.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.last_components["box"].item() == 0 and loss.last_components["cls"].item() == 0
    # The same image twice: every mean is unchanged, the loss doubles (scaled by batch size).
    doubled = [torch.cat((p, p)) for p in predictions]
    both = torch.tensor([[0, 1, 0.3, 0.6, 0.4, 0.5], [1, 1, 0.3, 0.6, 0.4, 0.5]])
    assert loss(doubled, both, model).item() == pytest.approx(2 * single.item(), rel=1e-5)


def test_loss_decreases_over_20_steps_on_a_tiny_set(model):
    torch.manual_seed(0)
    images = torch.rand(4, 3, 64, 64) * 0.2
    targets = []
    for index, (cls, x, y, size) in enumerate([(0, 8, 8, 24), (1, 30, 20, 30), (2, 10, 34, 20), (0, 36, 36, 26)]):
        images[index, cls, y : y + size, x : x + size] = 1.0
        targets.append([index, cls, (x + size / 2) / 64, (y + size / 2) / 64, size / 64, size / 64])
    targets = torch.tensor(targets)
    loss = YOLOLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    values = []
    for _ in range(20):
        value = loss(model(images), targets, model)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert all(math.isfinite(v) for v in values)
    assert sum(values[-3:]) / 3 < 0.5 * sum(values[:3]) / 3, values


def test_errors():
    with pytest.raises(ValueError, match="anchor_threshold"):
        YOLOLoss(anchor_threshold=1.0)
    with pytest.raises(ValueError, match="no YOLO layers"):
        YOLOLoss()([torch.zeros(1, 3, 2, 2, 8)], torch.zeros(0, 6), torch.nn.Linear(2, 2))
