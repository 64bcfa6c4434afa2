"""Box-aware transforms for detection (torchvision transforms v2 on ``tv_tensors``).

A sample is a dict ``{"image": tv_tensors.Image (uint8, 3×H×W), "boxes": tv_tensors.BoundingBoxes
(XYXY pixels), "labels": class ids}``; every geometric transform moves the boxes with the pixels.
"""

import torch
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

# Grey of the letterbox borders and of the areas an affine transform uncovers (Ultralytics' value).
PAD_VALUE = 114
# After augmentation a box is kept when at least this fraction of its area is still in the image.
MIN_VISIBLE_FRACTION = 0.2


def letterbox_geometry(height: int, width: int, size: int) -> tuple[float, int, int, int, int]:
    """How an ``height×width`` image fits in a ``size×size`` square keeping its aspect ratio.

    Returns ``(scale, new_height, new_width, pad_top, pad_left)``: the image is resized by
    ``scale = size / max(height, width)`` to ``new_height×new_width`` and centred, so that a
    point ``p`` of the original lands at ``p·scale + (pad_left, pad_top)``.
    """
    scale = size / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    return scale, new_height, new_width, (size - new_height) // 2, (size - new_width) // 2


def letterbox(sample: dict, size: int) -> dict:
    """Resize the longer side to ``size`` and pad the shorter one to a centred ``size×size`` square."""
    image, boxes = sample["image"], sample["boxes"]
    height, width = image.shape[-2:]
    _, new_height, new_width, top, left = letterbox_geometry(height, width, size)
    padding = [left, top, size - new_width - left, size - new_height - top]
    image = F.pad(F.resize(image, [new_height, new_width], antialias=True), padding, fill=PAD_VALUE)
    boxes = F.pad(F.resize(boxes, [new_height, new_width]), padding)
    return {**sample, "image": image, "boxes": boxes}


def undo_letterbox(boxes: torch.Tensor, original_size: tuple[int, int], size: int) -> torch.Tensor:
    """XYXY boxes of the ``size×size`` letterboxed image → pixels of the original, clipped to it."""
    height, width = original_size
    scale, _, _, top, left = letterbox_geometry(height, width, size)
    offset = boxes.new_tensor([left, top, left, top])
    boxes = (boxes - offset) / scale
    limits = boxes.new_tensor([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), limits)


def box_areas(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


class DetectionAugmentation:
    """Training augmentation after the letterbox: random scale and translation (one affine
    transform), horizontal flip and colour jitter. Boxes are then clipped to the image and dropped
    when less than :data:`MIN_VISIBLE_FRACTION` of them, or less than 2 pixels, remains inside.

    The boxes must be created with ``clamping_mode=None`` so that the affine transform leaves
    them whole and the visible fraction can be measured.
    """

    def __init__(self, scale=(0.75, 1.25), translate=(0.1, 0.1), flip=0.5, brightness=0.4, contrast=0.2,
                 saturation=0.7, hue=0.015):
        self.geometry = v2.Compose([
            v2.RandomAffine(degrees=0, translate=translate, scale=scale, fill={tv_tensors.Image: PAD_VALUE, "others": 0}),
            v2.RandomHorizontalFlip(flip),
        ])
        self.colour = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        self.clamp = v2.ClampBoundingBoxes(clamping_mode="hard")
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=2.0, labels_getter=lambda s: (s["labels"], s["areas"]))

    def __call__(self, sample: dict) -> dict:
        sample = self.geometry(sample)
        sample["areas"] = box_areas(sample["boxes"])  # whole boxes, before clipping
        sample = self.sanitize(self.clamp(sample))
        boxes = sample["boxes"]
        keep = box_areas(boxes) >= MIN_VISIBLE_FRACTION * sample["areas"]
        return {
            "image": self.colour(sample["image"]),
            "boxes": tv_tensors.wrap(boxes[keep], like=boxes),
            "labels": sample["labels"][keep],
        }
