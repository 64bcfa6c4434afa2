"""``!YOLOLoss``: the YOLO-v3 training loss in the Ultralytics style (as the original RUPQ code's Darknet port uses).

For each yolo layer (grid ``nx×ny``, stride ``s``, anchors ``A_k`` in pixels):

* **assignment** — a target box of size ``(w, h)`` (in grid cells) goes to every anchor ``k`` of
  the layer with ``max(w / a_w, a_w / w, h / a_h, a_h / h) < anchor_threshold`` (4), where
  ``a = A_k / s``, in the cell that holds its centre;
* **box** — the predicted box ``(σ(t_x) + i, σ(t_y) + j, a_w·e^{t_w}, a_h·e^{t_h})`` of each
  assigned anchor is compared with its target by ``1 − CIoU`` (``torchvision.ops.complete_box_iou_loss``);
* **objectness** — binary cross-entropy of every anchor of every cell against a target that is
  ``max(CIoU, 0)`` (detached) for the assigned anchors and 0 elsewhere;
* **class** — binary cross-entropy of the assigned anchors' class logits against one-hot targets.

Each term is a mean (box and class over assignments, objectness over all anchors) summed over the
layers; the loss is ``(box_gain·L_box + obj_gain·L_obj + cls_gain·L_cls) × batch_size``.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import box_convert, complete_box_iou_loss

from rupq.models.yolo import YOLOLayer

# exp(t_w) is clamped so that an early, wild prediction cannot overflow the CIoU.
MAX_EXP = 1e3


def yolo_layers_of(model: nn.Module) -> list[YOLOLayer]:
    """The detection layers in output order (works through DataParallel and quantization wrappers)."""
    layers = [module for module in model.modules() if isinstance(module, YOLOLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no YOLO layers; !YOLOLoss needs a yolo_v3 model")
    return layers


class YOLOLoss(nn.Module):
    def __init__(self, box_gain: float = 0.05, obj_gain: float = 1.0, cls_gain: float = 0.5,
                 anchor_threshold: float = 4.0):
        super().__init__()
        if anchor_threshold <= 1:
            raise ValueError(f"anchor_threshold must be above 1, got {anchor_threshold}")
        self.box_gain, self.obj_gain, self.cls_gain = box_gain, obj_gain, cls_gain
        self.anchor_threshold = anchor_threshold
        self.last_components: dict[str, torch.Tensor] = {}

    def assign(self, predictions: list[torch.Tensor], targets: torch.Tensor, layers: list[YOLOLayer]):
        """Per layer: ``(batch, anchor, grid_y, grid_x)`` indices of the assigned predictions, their
        target boxes ``(x, y, w, h)`` in cells relative to the cell corner, anchors in cells, classes."""
        assigned = []
        for prediction, layer in zip(predictions, layers):
            _, num_anchors, grid_y, grid_x, _ = prediction.shape
            anchors = layer.anchors.to(prediction.device) / layer.stride  # [A, 2] in cells
            scaled = targets[:, 2:6] * torch.tensor([grid_x, grid_y, grid_x, grid_y], device=targets.device)
            ratio = scaled[None, :, 2:4] / anchors[:, None]  # [A, N, 2]
            matches = torch.max(ratio, 1 / ratio).amax(dim=2) < self.anchor_threshold  # [A, N]
            anchor_index, target_index = matches.nonzero(as_tuple=True)
            boxes = scaled[target_index]
            cells = boxes[:, :2].long()
            cell_x = cells[:, 0].clamp(0, grid_x - 1)
            cell_y = cells[:, 1].clamp(0, grid_y - 1)
            assigned.append({
                "index": (targets[target_index, 0].long(), anchor_index, cell_y, cell_x),
                "box": torch.cat((boxes[:, :2] - torch.stack((cell_x, cell_y), 1), boxes[:, 2:]), dim=1),
                "anchor": anchors[anchor_index],
                "class": targets[target_index, 1].long(),
            })
        return assigned

    def forward(self, predictions: list[torch.Tensor], targets: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """``predictions``: the training-mode outputs of the model; ``targets``: ``[N, 6]`` rows
        ``(batch_index, class, cx, cy, w, h)`` normalized to the input."""
        layers = yolo_layers_of(model)
        if len(layers) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions for {len(layers)} YOLO layers (is the model in eval mode?)")
        device = predictions[0].device
        targets = targets.to(device)
        box_loss = torch.zeros((), device=device)
        obj_loss = torch.zeros((), device=device)
        cls_loss = torch.zeros((), device=device)
        for prediction, match in zip(predictions, self.assign(predictions, targets, layers)):
            objectness_target = torch.zeros_like(prediction[..., 4])
            if match["class"].numel():
                chosen = prediction[match["index"]]  # [n, 5 + classes]
                xy = chosen[:, :2].sigmoid()
                wh = torch.exp(chosen[:, 2:4]).clamp(max=MAX_EXP) * match["anchor"]
                predicted = box_convert(torch.cat((xy, wh), 1), "cxcywh", "xyxy")
                target = box_convert(match["box"], "cxcywh", "xyxy")
                ciou_loss = complete_box_iou_loss(predicted, target, reduction="none")
                box_loss = box_loss + ciou_loss.mean()
                objectness_target[match["index"]] = (1.0 - ciou_loss).detach().clamp(min=0).to(prediction.dtype)
                num_classes = chosen.shape[1] - 5
                if num_classes > 1:
                    one_hot = F.one_hot(match["class"], num_classes).to(chosen.dtype)
                    cls_loss = cls_loss + F.binary_cross_entropy_with_logits(chosen[:, 5:], one_hot)
            obj_loss = obj_loss + F.binary_cross_entropy_with_logits(prediction[..., 4], objectness_target)
        batch_size = predictions[0].shape[0]
        box_loss, obj_loss, cls_loss = self.box_gain * box_loss, self.obj_gain * obj_loss, self.cls_gain * cls_loss
        # Detached, so that reading them does not force a device synchronisation every step.
        self.last_components = {"box": box_loss.detach(), "obj": obj_loss.detach(), "cls": cls_loss.detach()}
        return (box_loss + obj_loss + cls_loss) * batch_size
