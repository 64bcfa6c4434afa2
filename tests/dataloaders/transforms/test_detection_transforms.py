"""Box-aware detection transforms: boxes follow the pixels through letterbox and augmentation."""

import numpy as np
import pytest
import torch
from detection_data import write_image
from torchvision import tv_tensors

from rupq.dataloaders.coco import COCODataloader
from rupq.dataloaders.transforms.detection import DetectionAugmentation, letterbox, letterbox_geometry, undo_letterbox


def red_mask(image: torch.Tensor) -> torch.Tensor:
    """Pixels of the red rectangle: red clearly above green survives any colour jitter we apply,
    while the black background and the grey fill have red == green."""
    return image[0] - image[1] > 0.12


def sample_with_rectangle(height=60, width=90, box=(20, 15, 50, 45)):
    pixels = torch.zeros(3, height, width, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    pixels[0, y1:y2, x1:x2] = 255
    boxes = tv_tensors.BoundingBoxes(torch.tensor([box], dtype=torch.float32), format="XYXY",
                                     canvas_size=(height, width), clamping_mode=None)
    return {"image": tv_tensors.Image(pixels), "boxes": boxes, "labels": torch.tensor([1.0])}


def test_letterbox_geometry_and_its_inverse():
    scale, new_height, new_width, top, left = letterbox_geometry(60, 90, 120)
    assert (scale, new_height, new_width, top, left) == (120 / 90, 80, 120, 20, 0)
    boxes = torch.tensor([[0.0, 0.0, 90.0, 60.0], [10.0, 5.0, 20.0, 25.0]])
    square = boxes * scale + torch.tensor([left, top, left, top])
    assert torch.allclose(undo_letterbox(square, (60, 90), 120), boxes, atol=1e-5)


def test_letterboxed_box_matches_the_rectangle():
    sample = letterbox(sample_with_rectangle(), 120)
    mask = red_mask(sample["image"].float() / 255)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    x1, y1, x2, y2 = sample["boxes"][0].tolist()
    assert abs(xs.min().item() - x1) <= 1 and abs(xs.max().item() + 1 - x2) <= 1
    assert abs(ys.min().item() - y1) <= 1 and abs(ys.max().item() + 1 - y2) <= 1


@pytest.mark.parametrize("seed", range(12))
def test_augmented_box_keeps_the_drawn_rectangle_inside(seed):
    torch.manual_seed(seed)
    augment = DetectionAugmentation(scale=(0.5, 1.5), translate=(0.3, 0.3))
    sample = augment(letterbox(sample_with_rectangle(), 96))
    mask = red_mask(sample["image"].float() / 255)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(sample["boxes"]) == 0:  # dropped: less than 20 % of the rectangle remains visible
        assert mask.sum() < 0.2 * (30 * 30 * (96 / 90) ** 2 * 1.5**2)
        return
    x1, y1, x2, y2 = sample["boxes"][0].tolist()
    # Every red pixel lies in the box, and the box is no larger than the red area (±1.5 pixels).
    assert xs.min() >= x1 - 1.5 and xs.max() + 1 <= x2 + 1.5 and ys.min() >= y1 - 1.5 and ys.max() + 1 <= y2 + 1.5
    assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() + 1 - x2) <= 1.5
    assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
    assert sample["labels"].tolist() == [1.0]


def test_horizontal_flip_moves_the_box():
    augment = DetectionAugmentation(scale=(1.0, 1.0), translate=(0.0, 0.0), flip=1.0)
    sample = augment(letterbox(sample_with_rectangle(90, 90, (10, 20, 30, 40)), 90))
    assert torch.allclose(sample["boxes"][0], torch.tensor([60.0, 20.0, 80.0, 40.0]))
    assert red_mask(sample["image"].float() / 255)[30, 70]


def test_dataset_targets_stay_on_the_rectangle(tmp_path):
    """Through the training dataset (letterbox + default augmentation), normalized targets."""
    pixels = np.zeros((80, 120, 3), np.uint8)
    pixels[10:50, 30:70] = (255, 0, 0)
    write_image(tmp_path, "images/a.png", pixels, [(0, 30, 10, 70, 50)])
    (tmp_path / "trainvalno5k.txt").write_text("images/a.png\n")
    dataset = COCODataloader(batch_size=1, image_size=128, root=str(tmp_path)).train_dataset
    for seed in range(8):
        torch.manual_seed(seed)
        _, image, labels, size = dataset[(0, 96)]
        assert size == (80, 120) and image.shape == (3, 96, 96)
        mask = red_mask(image)
        if len(labels) == 0:
            continue
        cls, cx, cy, w, h = (labels[0] * torch.tensor([1, 96, 96, 96, 96])).tolist()
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert cls == 0
        assert xs.min() >= cx - w / 2 - 1.5 and xs.max() + 1 <= cx + w / 2 + 1.5
        assert ys.min() >= cy - h / 2 - 1.5 and ys.max() + 1 <= cy + h / 2 + 1.5
