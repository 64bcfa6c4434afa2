"""``!COCODataloader`` on a tiny dataset in the COCO list-file layout."""

from pathlib import Path

import numpy as np
import pytest
import torch
from detection_data import write_image, write_tiny_coco

from rupq.config import load_config
from rupq.dataloaders.coco import (
    COCODataloader,
    MultiscaleBatchSampler,
    label_path,
    multiscale_sizes,
    read_labels,
)
from rupq.errors import DataError


@pytest.fixture
def tiny_coco(tmp_path) -> Path:
    return write_tiny_coco(tmp_path / "coco")


def test_label_path_replaces_the_last_images_folder():
    assert label_path(Path("/data/coco/images/train2014/a.jpg")) == Path("/data/coco/labels/train2014/a.txt")
    assert label_path(Path("/images/x/images/b.png")) == Path("/images/x/labels/b.txt")
    with pytest.raises(DataError, match="no 'images' part"):
        label_path(Path("/data/pictures/c.jpg"))


def test_training_batch_format(tiny_coco):
    loader = COCODataloader(batch_size=4, image_size=64, multiscale=False, num_workers=0, root=str(tiny_coco))
    paths, images, targets, sizes = next(iter(loader.train_dataloader()))
    assert len(paths) == 4 and all(Path(p).is_file() for p in paths)
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert targets.ndim == 2 and targets.shape[1] == 6
    assert set(targets[:, 0].long().tolist()) <= {0, 1, 2, 3} and set(targets[:, 1].long().tolist()) <= {0, 1, 2}
    assert (targets[:, 2:] >= 0).all() and (targets[:, 2:] <= 1).all()
    assert sizes.shape == (4, 2)


def test_validation_is_an_exact_letterbox(tiny_coco):
    """A 64×40 image (width 40) in a 128 square: scale 2, 24 pixels of padding on each side."""
    write_image(tiny_coco, "images/val/0000.png", np.zeros((64, 40, 3), np.uint8), [(2, 10, 20, 30, 60)])
    loader = COCODataloader(batch_size=4, image_size=128, num_workers=0, root=str(tiny_coco))
    paths, images, targets, sizes = next(iter(loader.val_dataloader()))
    assert paths[0].endswith("images/val/0000.png")
    assert sizes[0].tolist() == [64, 40]
    first = targets[targets[:, 0] == 0]
    expected = torch.tensor([[0, 2, (24 + 40) / 128, 80 / 128, 40 / 128, 80 / 128]])
    assert torch.allclose(first, expected, atol=1e-6)
    assert torch.allclose(images[0, :, :, :20], torch.full((3, 128, 20), 114 / 255))  # left padding


def test_images_without_labels_are_allowed(tiny_coco):
    dataset = COCODataloader(batch_size=1, image_size=64, multiscale=False, root=str(tiny_coco)).train_dataset
    assert not label_path(dataset.paths[0]).exists()
    path, image, labels, size = dataset[0]
    assert labels.shape == (0, 5) and image.shape == (3, 64, 64)


@pytest.mark.parametrize(
    "line, problem",
    [
        ("0 0.5 0.5 0.2", "expected 'class cx cy w h', got 4 fields"),
        ("cat 0.5 0.5 0.2 0.2", "expected 'class cx cy w h' numbers"),
        ("1.5 0.5 0.5 0.2 0.2", "class must be an integer"),
        ("3 0.5 0.5 0.2 0.2", "class must be an integer from 0 below 3"),
        ("0 0.5 1.5 0.2 0.2", "box must be normalized"),
        ("0 0.5 0.5 0 0.2", "box must be normalized"),
        ("0 nan 0.5 0.2 0.2", "non-finite"),
    ],
)
def test_malformed_label_line_names_file_and_line(tiny_coco, line, problem):
    labels = tiny_coco / "labels" / "train" / "0003.txt"
    labels.write_text("1 0.5 0.5 0.25 0.25\n\n" + line + "\n")
    with pytest.raises(DataError) as error:
        COCODataloader(batch_size=2, root=str(tiny_coco)).train_dataset
    assert str(error.value).startswith(f"{labels}:3: {problem}")
    assert "\n" not in str(error.value)


def test_missing_images_and_lists_are_data_errors(tiny_coco):
    (tiny_coco / "5k.txt").write_text("images/val/0000.png\nimages/val/nope.png\n")
    with pytest.raises(DataError, match=r"5k.txt:2: image .*nope.png does not exist"):
        COCODataloader(batch_size=2, root=str(tiny_coco)).val_dataset
    (tiny_coco / "trainvalno5k.txt").unlink()
    with pytest.raises(DataError, match="trainvalno5k.txt does not exist"):
        COCODataloader(batch_size=2, root=str(tiny_coco)).train_dataset


def test_absolute_paths_in_the_list(tiny_coco):
    (tiny_coco / "5k.txt").write_text(f"{tiny_coco / 'images/val/0001.png'}\n")
    dataset = COCODataloader(batch_size=2, root=str(tiny_coco)).val_dataset
    assert len(dataset) == 1 and dataset.labels[0].shape[0] == 2


def test_read_labels_values(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("2 0.5 0.25 0.1 0.2\n0 1 1 1 1\n")
    np.testing.assert_allclose(read_labels(path, 3), [[2, 0.5, 0.25, 0.1, 0.2], [0, 1, 1, 1, 1]])
    assert read_labels(path, 3).dtype == np.float32


def test_multiscale_sizes_change_every_10_batches_deterministically():
    assert multiscale_sizes(608) == [512, 544, 576, 608, 640, 672, 704]
    sampler = MultiscaleBatchSampler(range(400), 2, multiscale_sizes(608), seed=0, epoch=3)
    batches = list(sampler)
    sizes = [batch[0][1] for batch in batches]
    assert len(batches) == 200 and all(len({s for _, s in batch}) == 1 for batch in batches)
    assert all(len(set(sizes[i : i + 10])) == 1 for i in range(0, 200, 10))
    assert len(set(sizes)) > 3 and set(sizes) <= set(multiscale_sizes(608))
    assert sizes == [b[0][1] for b in MultiscaleBatchSampler(range(400), 2, multiscale_sizes(608), 0, 3)]
    other_epoch = [b[0][1] for b in MultiscaleBatchSampler(range(400), 2, multiscale_sizes(608), 0, 4)]
    assert other_epoch != sizes
    # Resuming at batch 37 gives batch 37 onwards the sizes of the uninterrupted epoch.
    resumed = MultiscaleBatchSampler(range(74, 400), 2, multiscale_sizes(608), 0, 3, first_batch=37)
    assert [b[0][1] for b in resumed] == sizes[37:]


def test_multiscale_batches_are_the_same_with_workers_and_after_resuming(tiny_coco):
    loader = COCODataloader(batch_size=1, image_size=128, multiscale=True, num_workers=0, root=str(tiny_coco))
    torch.manual_seed(0)
    serial = [(b[0], b[1].shape[-1]) for b in loader.train_dataloader(epoch=1, seed=5)]
    assert {size for _, size in serial} <= set(multiscale_sizes(128))
    assert len({size for _, size in serial[:8]}) == 1  # one size for a group of 10 batches
    loader.num_workers = 2
    parallel = [(b[0], b[1].shape[-1]) for b in loader.train_dataloader(epoch=1, seed=5)]
    assert parallel == serial
    resumed = [(b[0], b[1].shape[-1]) for b in loader.train_dataloader(epoch=1, start_batch=3, seed=5)]
    assert resumed == serial[3:]


def test_augmentation_is_reproducible_with_workers(tiny_coco):
    loader = COCODataloader(batch_size=2, image_size=64, multiscale=False, num_workers=2, root=str(tiny_coco))
    first = [b[1] for b in loader.train_dataloader(epoch=0, seed=1)]
    second = [b[1] for b in loader.train_dataloader(epoch=0, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_arguments_are_checked_and_data_is_not_touched(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        COCODataloader(batch_size=2, image_size=100)
    with pytest.raises(ValueError, match="multiscale training needs image_size"):
        COCODataloader(batch_size=2, image_size=96)
    config = tmp_path / "c.yaml"
    config.write_text("dataset: !COCODataloader\n  batch_size: 4\n  image_size: 608\n  root: /no/such/folder\n")
    dataset = load_config(config)["dataset"]
    assert (dataset.image_size, dataset.multiscale, dataset.root_argument) == (608, True, "/no/such/folder")
    with pytest.raises(DataError, match="folder /no/such/folder does not exist"):
        dataset.train_dataset
