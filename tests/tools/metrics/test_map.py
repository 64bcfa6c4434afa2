"""``!MAP``: NMS, letterbox inversion, the seed's mAP@0.5 and COCO mAP@[.5:.95] by pycocotools."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from rupq.dataloaders.transforms.detection import letterbox_geometry
from rupq.tools.metrics.map import MAP, average_precision, map_at_iou, non_max_suppression

NUM_CLASSES = 3
INPUT = 128
# Two images: 100 wide × 50 high and 64 × 128, with boxes (class, x1, y1, x2, y2) in their pixels.
IMAGES = [
    ((50, 100), [(0, 10, 5, 40, 30), (2, 50, 10, 95, 45), (1, 60, 20, 70, 30)]),
    ((128, 64), [(1, 4, 10, 60, 50), (1, 8, 70, 40, 120)]),
]


def to_input(box, size):
    """Original pixels → letterboxed input pixels."""
    scale, _, _, top, left = letterbox_geometry(*size, INPUT)
    x1, y1, x2, y2 = box
    return [x1 * scale + left, y1 * scale + top, x2 * scale + left, y2 * scale + top]


def batch(shift=0.0, score=0.9, extra=()):
    """Model-like eval outputs whose boxes are the ground truth (moved by ``shift`` × width), and targets."""
    preds = torch.zeros(len(IMAGES), 16, 5 + NUM_CLASSES)
    rows = []
    for index, (size, boxes) in enumerate(IMAGES):
        for slot, (cls, *box) in enumerate(list(boxes) + list(extra)):
            x1, y1, x2, y2 = to_input(box, size)
            width = x2 - x1
            preds[index, slot, :4] = torch.tensor([(x1 + x2) / 2 + shift * width, (y1 + y2) / 2, width, y2 - y1])
            preds[index, slot, 4] = score
            preds[index, slot, 5 + cls] = 1.0
        for cls, *box in boxes:
            x1, y1, x2, y2 = to_input(box, size)
            rows.append([index, cls, (x1 + x2) / 2 / INPUT, (y1 + y2) / 2 / INPUT, (x2 - x1) / INPUT, (y2 - y1) / INPUT])
    targets = {
        "boxes": torch.tensor(rows),
        "original_sizes": torch.tensor([size for size, _ in IMAGES]),
        "input_size": INPUT,
        "paths": [f"img{i}.jpg" for i in range(len(IMAGES))],
    }
    return preds, targets


def metric():
    return MAP(img_size=INPUT, iou_thres=0.5, conf_thres=0.01, nms_thres=0.5)


def test_ground_truth_as_predictions_is_perfect():
    mean_ap = metric()
    mean_ap.update(*batch())
    results = mean_ap.results()
    assert mean_ap.compute() == pytest.approx(1.0) and results["mAP50"] == pytest.approx(1.0)
    assert results["mAP"] == pytest.approx(1.0)
    # Detections went back to the original pixels exactly.
    found = mean_ap.images[0][1]
    np.testing.assert_allclose(found[:, :4], [box for _, *box in IMAGES[0][1]], atol=1e-4)


def test_shifted_boxes_score_lower():
    values = []
    for shift in (0.0, 0.1, 0.3, 0.6):
        mean_ap = metric()
        mean_ap.update(*batch(shift))
        values.append((mean_ap.results()["mAP50"], mean_ap.results()["mAP"]))
    assert values[0] == pytest.approx((1.0, 1.0))
    assert values[1][0] == pytest.approx(1.0) and values[1][1] < 1.0  # IoU 0.82: still right at 0.5
    assert values[2][0] == pytest.approx(1.0) and values[2][1] < values[1][1]  # IoU 0.54
    assert values[3] == pytest.approx((0.0, 0.0))  # IoU 0.25: wrong at every threshold


def test_reset_forgets_and_update_accumulates():
    mean_ap = metric()
    mean_ap.update(*batch(0.6))
    mean_ap.reset()
    assert mean_ap.images == [] and np.isnan(mean_ap.compute())
    mean_ap.update(*batch())
    assert mean_ap.compute() == pytest.approx(1.0)


def test_coco_map_equals_a_direct_pycocotools_evaluation(tmp_path):
    """Noisy detections with false positives; the reference goes through json files and COCO()."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    generator = torch.Generator().manual_seed(0)
    preds, targets = batch(0.05, extra=[(0, 5, 5, 20, 20), (2, 30, 30, 60, 48)])
    preds[:, :, :4] += torch.randn(preds[:, :, :4].shape, generator=generator) * 2
    preds[:, :, 4] = torch.rand(preds.shape[:2], generator=generator) * 0.9 + 0.1
    preds[:, :, 4][preds[:, :, 5:].sum(-1) == 0] = 0
    mean_ap = metric()
    mean_ap.update(preds, targets)

    images, annotations, results = [], [], []
    for image_id, (key, found, truth) in enumerate(mean_ap.images, start=1):
        images.append({"id": image_id})
        for x1, y1, x2, y2, cls in truth.tolist():
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for x1, y1, x2, y2, score, cls in found.tolist():
            results.append({"image_id": image_id, "category_id": int(cls) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score})
    (tmp_path / "gt.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": c} for c in range(1, NUM_CLASSES + 1)]}
    ))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(tmp_path / "gt.json"))
        evaluation = COCOeval(truth, truth.loadRes(str(tmp_path / "dt.json")), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert 0.1 < evaluation.stats[0] < 0.99
    assert mean_ap.results()["mAP"] == pytest.approx(evaluation.stats[0], abs=1e-12)
    assert mean_ap.results()["coco_stats"] == pytest.approx(list(evaluation.stats), abs=1e-12)


def test_non_max_suppression_is_class_aware():
    preds = torch.zeros(1, 4, 5 + NUM_CLASSES)
    preds[0, :, :4] = torch.tensor([[50.0, 50, 20, 20], [51, 50, 20, 20], [50, 51, 20, 20], [90, 90, 10, 10]])
    preds[0, :, 4] = torch.tensor([0.9, 0.8, 0.7, 0.005])
    preds[0, 0, 5], preds[0, 1, 5], preds[0, 2, 6], preds[0, 3, 5] = 1.0, 1.0, 1.0, 1.0
    (detections,) = non_max_suppression(preds, conf_thres=0.01, nms_thres=0.5)
    # Box 1 overlaps box 0 of the same class: suppressed. Box 2 is another class: kept. Box 3: below conf.
    assert detections[:, 4].tolist() == pytest.approx([0.9, 0.7])
    assert detections[:, 5].tolist() == [0.0, 1.0]
    assert detections[0, :4].tolist() == [40.0, 40.0, 60.0, 60.0]


def test_non_max_suppression_gives_one_detection_per_likely_class():
    preds = torch.zeros(1, 1, 5 + NUM_CLASSES)
    preds[0, 0, :5] = torch.tensor([50.0, 50, 20, 20, 0.8])
    preds[0, 0, 5:] = torch.tensor([0.5, 0.3, 0.01])
    (detections,) = non_max_suppression(preds, conf_thres=0.05, nms_thres=0.5)
    assert detections[:, 5].tolist() == [0.0, 1.0]
    assert detections[:, 4].tolist() == pytest.approx([0.4, 0.24])


def test_seed_style_average_precision_by_hand():
    """One class, 2 ground-truth boxes; detections by score: hit, miss, hit → AP = 1·½ + ⅔·½."""
    truth = np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 0]], dtype=float)
    found = np.array([[0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.8, 0], [20, 20, 30, 30, 0.7, 0]], dtype=float)
    assert map_at_iou([(found, truth)], 0.5) == pytest.approx(0.5 + 2 / 3 * 0.5)
    # A second detection of an already matched box is a false positive.
    duplicate = np.array([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 11, 0.8, 0]], dtype=float)
    assert map_at_iou([(duplicate, truth)], 0.5) == pytest.approx(0.5)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="img_size"):
        MAP(img_size=100, iou_thres=0.5, conf_thres=0.01, nms_thres=0.5)
    with pytest.raises(ValueError, match="iou_thres"):
        MAP(img_size=608, iou_thres=1.5, conf_thres=0.01, nms_thres=0.5)
    assert MAP(img_size=608, iou_thres=0.75, conf_thres=0.01, nms_thres=0.5).name == "mAP75"
