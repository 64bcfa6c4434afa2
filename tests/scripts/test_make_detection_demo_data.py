"""scripts/make_detection_demo_data.py: exact boxes, the COCO list layout, and a loader that reads it."""

import importlib.util

import numpy as np
import pytest
from conftest import REPO

from rupq.dataloaders.coco import COCODataloader

spec = importlib.util.spec_from_file_location("make_detection_demo_data", REPO / "scripts" / "make_detection_demo_data.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


@pytest.mark.parametrize("seed", range(5))
def test_pasted_item_box_is_its_exact_visible_extent(seed):
    rng = np.random.default_rng(seed)
    canvas = np.zeros((160, 200, 3), dtype=np.float64)
    item = np.zeros((28, 28), dtype=np.uint8)
    item[5:20, 8:25] = 255
    item[20:23, 12:14] = 40  # faint pixels (opacity 0.16) still count as visible
    box = demo.paste(canvas, item, rng, taken=[])
    changed = np.nonzero(canvas.max(axis=2) > 0.1 * 150)  # the tint is at least 150
    x1, y1, x2, y2 = box
    assert (changed[1].min(), changed[0].min(), changed[1].max() + 1, changed[0].max() + 1) == (x1, y1, x2, y2)
    # A second item never overlaps the first.
    second = demo.paste(canvas, item, rng, taken=[box])
    if second is not None:
        assert second[2] <= x1 or x2 <= second[0] or second[3] <= y1 or y2 <= second[1]


def test_writes_a_dataset_the_loader_reads(tmp_path, tiny_fashion_mnist, datasets_info):
    datasets_info(fashion_mnist=tiny_fashion_mnist)
    out = tmp_path / "demo"
    demo.main(["--out", str(out), "--train", "6", "--val", "3", "--seed", "1"])
    assert len((out / "trainvalno5k.txt").read_text().split()) == 6 and len((out / "5k.txt").read_text().split()) == 3
    assert (out / "coco.names").read_text().splitlines()[0] == "T-shirt/top"
    assert (out / "datasets_info.yaml").read_text().splitlines()[-1] == "coco: ."
    first_labels = (out / "labels" / "train" / "000000.txt").read_text()
    datasets_info(fashion_mnist=tiny_fashion_mnist, coco=out)
    loader = COCODataloader(batch_size=3, image_size=128, multiscale=False, num_workers=0)
    assert len(loader.train_dataset) == 6 and len(loader.val_dataset) == 3
    assert sum(len(labels) for labels in loader.train_dataset.labels) >= 6
    paths, images, targets, sizes = next(iter(loader.val_dataloader()))
    assert images.shape == (3, 3, 128, 128) and targets.shape[1] == 6
    assert ((sizes >= 160) & (sizes <= 224)).all()
    # The same seed writes the same dataset.
    demo.main(["--out", str(tmp_path / "again"), "--train", "6", "--val", "3", "--seed", "1"])
    assert (tmp_path / "again" / "labels" / "train" / "000000.txt").read_text() == first_labels
