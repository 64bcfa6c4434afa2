"""``!MAP``: detection mean average precision, at one IoU threshold and COCO's mAP@[.5:.95].

``update(predictions, targets)`` takes the eval-mode output of a YOLO model (``[B, boxes, 5 +
classes]``: ``cx, cy, w, h`` in input pixels, objectness, class probabilities) and the targets
dict of :class:`~rupq.tools.training.detection.ObjectDetectionTrainingLoop`. It keeps, per image,
the detections after class-aware non-maximum suppression and the ground truth, both mapped back
from the letterboxed input onto the original image. ``compute()`` then gives:

* ``mAP@iou_thres`` (the original RUPQ code's number, ``mAP50`` for 0.5): detections sorted by confidence are
  matched greedily to the unmatched ground-truth box of their class they overlap most (IoU ≥
  ``iou_thres``); per class, AP is the area under the precision envelope over recall (all
  points, as VOC 2010+), and the mean is over the classes that have ground truth;
* ``mAP`` (COCO's mAP@[.5:.95]): pycocotools ``COCOeval`` on the same detections and ground
  truth, converted in memory.
"""

import contextlib
import io

import numpy as np
import torch
import torch.distributed as dist
from torchvision.ops import batched_nms, box_convert, box_iou

from rupq.dataloaders.transforms.detection import undo_letterbox
from rupq.tools.metrics.base import Metric

# At most this many boxes per image enter NMS, and this many detections per image leave it.
MAX_NMS_INPUTS = 30000
MAX_DETECTIONS = 300


def non_max_suppression(predictions: torch.Tensor, conf_thres: float, nms_thres: float,
                        max_detections: int = MAX_DETECTIONS) -> list[torch.Tensor]:
    """Per image, ``[n, 6]`` detections ``x1, y1, x2, y2, score, class`` sorted by score.

    A box gives one detection per class with ``score = objectness × class probability >
    conf_thres`` (one class when the model has only one); overlapping detections of the same
    class are suppressed above IoU ``nms_thres`` (``torchvision.ops.batched_nms``).
    """
    results = []
    for boxes in predictions:
        boxes = boxes[boxes[:, 4] > conf_thres]
        scores = boxes[:, 5:] * boxes[:, 4:5] if boxes.shape[1] > 6 else boxes[:, 4:5]
        box_index, classes = (scores > conf_thres).nonzero(as_tuple=True)
        score = scores[box_index, classes]
        if score.numel() > MAX_NMS_INPUTS:
            top = score.topk(MAX_NMS_INPUTS).indices
            box_index, classes, score = box_index[top], classes[top], score[top]
        xyxy = box_convert(boxes[box_index, :4], "cxcywh", "xyxy")
        keep = batched_nms(xyxy.float(), score.float(), classes, nms_thres)[:max_detections]
        results.append(torch.cat((xyxy[keep], score[keep, None], classes[keep, None].to(xyxy.dtype)), dim=1))
    return results


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (precision made non-increasing in recall), all points."""
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([0.0], precision, [0.0]))
    precision = np.flip(np.maximum.accumulate(np.flip(precision)))
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def match_detections(detections: np.ndarray, ground_truth: np.ndarray, iou_thres: float) -> np.ndarray:
    """True-positive flags of one image's detections (sorted by score): each is matched to the
    ground-truth box of its class it overlaps most; a box already matched makes it a false positive."""
    true_positive = np.zeros(len(detections), dtype=bool)
    if len(detections) == 0 or len(ground_truth) == 0:
        return true_positive
    ious = box_iou(torch.from_numpy(detections[:, :4]).double(), torch.from_numpy(ground_truth[:, :4]).double()).numpy()
    ious[detections[:, 5][:, None] != ground_truth[:, 4][None, :]] = -1.0
    matched = set()
    for index, row in enumerate(ious):
        best = int(row.argmax())
        if row[best] >= iou_thres and best not in matched:
            true_positive[index] = True
            matched.add(best)
    return true_positive


def map_at_iou(images: list[tuple[np.ndarray, np.ndarray]], iou_thres: float) -> float:
    """The original RUPQ code's mAP over ``(detections [n, 6], ground_truth [m, 5])`` pairs (see the module docstring)."""
    scores, classes, hits = [], [], []
    for detections, ground_truth in images:
        hits.append(match_detections(detections, ground_truth, iou_thres))
        scores.append(detections[:, 4])
        classes.append(detections[:, 5])
    scores, classes, hits = np.concatenate(scores), np.concatenate(classes), np.concatenate(hits)
    truth_classes = np.concatenate([ground_truth[:, 4] for _, ground_truth in images])
    if truth_classes.size == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    classes, hits = classes[order], hits[order]
    precisions = []
    for cls in np.unique(truth_classes):
        num_truth = int((truth_classes == cls).sum())
        cls_hits = hits[classes == cls]
        if cls_hits.size == 0:
            precisions.append(0.0)
            continue
        true_positives = np.cumsum(cls_hits)
        false_positives = np.cumsum(~cls_hits)
        recall = true_positives / num_truth
        precision = true_positives / (true_positives + false_positives)
        precisions.append(average_precision(recall, precision))
    return float(np.mean(precisions))


def coco_eval(images: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, str]:
    """pycocotools ``COCOeval`` (bbox) of ``(detections [n, 6], ground_truth [m, 5])`` pairs.

    Returns the 12 summary statistics (``stats[0]`` is mAP@[.5:.95], ``stats[1]`` mAP@0.5) and
    the printed summary. Image and annotation ids start at 1 (pycocotools treats id 0 as "no
    match"); category ids are the class ids + 1.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotations, results, categories = [], [], set()
    for image_id, (detections, ground_truth) in enumerate(images, start=1):
        for x1, y1, x2, y2, cls in ground_truth.tolist():
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
            categories.add(int(cls) + 1)
        for x1, y1, x2, y2, score, cls in detections.tolist():
            results.append([image_id, x1, y1, x2 - x1, y2 - y1, score, int(cls) + 1])
            categories.add(int(cls) + 1)
    if not annotations:
        return np.full(12, np.nan), "no ground-truth boxes"
    if not results:
        return np.zeros(12), "no detections"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):  # pycocotools prints progress messages
        truth = COCO()
        truth.dataset = {
            "images": [{"id": i} for i in range(1, len(images) + 1)],
            "annotations": annotations,
            "categories": [{"id": c} for c in sorted(categories)],
        }
        truth.createIndex()
        detected = truth.loadRes(np.array(results, dtype=np.float64))
        evaluation = COCOeval(truth, detected, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluation.summarize()
    return evaluation.stats, summary.getvalue().rstrip()


class MAP(Metric):
    """Detection mAP (see the module docstring).

    Args:
        img_size: side of the letterboxed validation images (``ValidateCOCOCallback`` makes the
            dataloader use it).
        iou_thres: IoU a detection needs to count as correct for ``compute()`` (the original RUPQ code: 0.5).
        conf_thres: minimum ``objectness × class probability`` of a detection.
        nms_thres: IoU above which NMS suppresses the lower-scored of two same-class boxes.
    """

    def __init__(self, img_size: int, iou_thres: float, conf_thres: float, nms_thres: float):
        super().__init__()
        if not isinstance(img_size, int) or img_size < 32 or img_size % 32:
            raise ValueError(f"img_size must be a positive multiple of 32, got {img_size!r}")
        for name, value in (("iou_thres", iou_thres), ("conf_thres", conf_thres), ("nms_thres", nms_thres)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.img_size, self.iou_thres, self.conf_thres, self.nms_thres = img_size, iou_thres, conf_thres, nms_thres
        self.reset()

    @property
    def name(self) -> str:
        """``mAP50`` for ``iou_thres`` 0.5: the logged name of ``compute()``'s value."""
        return f"mAP{round(self.iou_thres * 100)}"

    def reset(self) -> None:
        super().reset()
        self.images: list[tuple[str, np.ndarray, np.ndarray]] = []  # (key, detections, ground truth)
        self._results: dict | None = None

    @torch.no_grad()
    def update(self, preds: torch.Tensor, targets: dict) -> None:
        input_size = int(targets["input_size"])
        boxes = targets["boxes"].detach().float().cpu()
        sizes = targets["original_sizes"].cpu().tolist()
        paths = targets.get("paths") or [f"image {len(self.images) + i}" for i in range(len(sizes))]
        detections = non_max_suppression(preds.detach().float(), self.conf_thres, self.nms_thres)
        for index, (found, size, path) in enumerate(zip(detections, sizes, paths)):
            found = found.cpu()
            found[:, :4] = undo_letterbox(found[:, :4], size, input_size)
            rows = boxes[boxes[:, 0] == index]
            truth = box_convert(rows[:, 2:6] * input_size, "cxcywh", "xyxy")
            truth = undo_letterbox(truth, size, input_size)
            self.images.append((str(path), found.double().numpy(), torch.cat((truth, rows[:, 1:2]), 1).double().numpy()))
        self._results = None

    def sync(self) -> None:
        """Gather every process's images (distributed validation splits them)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.images)
        self.images = [image for part in gathered for image in part]
        self._results = None

    def results(self) -> dict:
        """``{name: mAP@iou_thres, "mAP": mAP@[.5:.95], "coco_stats": [...], "coco_summary": str}``."""
        if self._results is None:
            # One entry per image, in a fixed order whatever the process layout was.
            images = sorted({key: (found, truth) for key, found, truth in self.images}.items())
            pairs = [pair for _, pair in images]
            if not pairs:
                self._results = {self.name: float("nan"), "mAP": float("nan"), "coco_stats": [], "coco_summary": "no images"}
            else:
                stats, summary = coco_eval(pairs)
                self._results = {
                    self.name: map_at_iou(pairs, self.iou_thres),
                    "mAP": float(stats[0]),
                    "coco_stats": [float(s) for s in stats],
                    "coco_summary": summary,
                }
        return self._results

    def compute(self) -> float:
        return self.results()[self.name]


class COCOmAP(Metric):
    """A view of a :class:`MAP`'s COCO mAP@[.5:.95], so that the trainer logs it beside mAP@0.5.

    It has no state of its own: ``update`` and ``reset`` do nothing (the :class:`MAP` gets them).
    """

    def __init__(self, source: MAP):
        super().__init__()
        self.source = source

    def update(self, preds, targets) -> None:
        pass

    def reset(self) -> None:
        pass

    def compute(self) -> float:
        return self.source.results()["mAP"]
