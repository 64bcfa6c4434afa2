"""Loss tags of the project (standard losses come straight from ``torch.nn``)."""

from rupq.tools.losses.yolo import YOLOLoss

__all__ = ["YOLOLoss"]
