import os

import numpy as np
import pytest
import torch
from PIL import Image
from superresolution_data import write_div2k

import rupq.dataloaders.superresolution as superresolution
from rupq.dataloaders import DIV2KDataloader
from rupq.errors import DataError


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("RUPQ_CACHE_DIR", str(folder))
    return folder


def pixels(tensor: torch.Tensor) -> np.ndarray:
    """``3×H×W`` float tensor of 0–255 values → ``H×W×3`` uint8."""
    array = tensor.permute(1, 2, 0).numpy()
    assert np.array_equal(array, np.round(array))
    return array.astype(np.uint8)


def dihedral_images(image: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations/flips of ``image``."""
    found = []
    for flipped in (image, image[:, ::-1]):
        for turns in range(4):
            found.append(np.rot90(flipped, turns))
    return found


def locate(patch: np.ndarray, image: np.ndarray, scale: int):
    """``(transform index, y, x)`` with ``patch`` at a multiple of ``scale`` in a rotation/flip of ``image``."""
    size = patch.shape[0]
    for index, candidate in enumerate(dihedral_images(image)):
        for y in range(0, candidate.shape[0] - size + 1, scale):
            for x in range(0, candidate.shape[1] - size + 1, scale):
                if np.array_equal(candidate[y : y + size, x : x + size], patch):
                    return index, y, x
    return None


def test_training_patches_are_aligned_and_rotated_together(tmp_path):
    scale, patch = 2, 8
    images = write_div2k(tmp_path / "div2k", scale=scale, train_ids=(1, 2), val_ids=(), lr_size=(12, 16))
    data = DIV2KDataloader(batch_size=4, patch_size=patch, scale=scale, normalize=False, num_workers=0,
                           root=str(tmp_path / "div2k"))
    dataset = data.train_dataset
    assert len(dataset) == 2
    torch.manual_seed(0)
    transforms = set()
    for index in range(48):
        lr, hr = dataset[index % 2]
        assert lr.shape == (3, patch // scale, patch // scale) and hr.shape == (3, patch, patch)
        lr, hr = pixels(lr), pixels(hr)
        # The LR patch upscaled by nearest neighbour is the HR patch, pixel for pixel.
        assert np.array_equal(lr.repeat(scale, axis=0).repeat(scale, axis=1), hr)
        # And the HR patch is a scale-aligned region of a rotation/flip of the HR image.
        where = locate(hr, images[index % 2 + 1][1], scale)
        assert where is not None
        transforms.add(where[0])
    assert len(transforms) >= 5  # several of the 8 rotations/flips were drawn


def test_normalization_and_batches(tmp_path):
    write_div2k(tmp_path, scale=2, train_ids=(1, 2, 3), val_ids=())
    data = DIV2KDataloader(batch_size=2, patch_size=8, scale=2, num_workers=0, root=str(tmp_path), repeat=3)
    assert len(data.train_dataset) == 9
    loader = data.train_dataloader()
    assert len(loader) == 5
    lr, hr = next(iter(loader))
    assert lr.shape == (2, 3, 4, 4) and hr.shape == (2, 3, 8, 8)
    values = torch.unique(torch.cat([lr.flatten(), hr.flatten()]))
    # (x − 127.5) / 51 for integer x: every value maps back to an integer in 0..255
    back = values * 51 + 127.5
    assert torch.allclose(back, back.round(), atol=1e-3) and back.min() >= 0 and back.max() <= 255


def test_validation_whole_images_grey_and_hr_crop(tmp_path):
    images = write_div2k(tmp_path, scale=3, train_ids=(1,), val_ids=(801, 802, 950), lr_size=(7, 9),
                         grey_ids=(801,), extra_ids=(802,))
    data = DIV2KDataloader(batch_size=4, patch_size=6, scale=3, normalize=False, num_workers=0, root=str(tmp_path))
    assert len(data.val_dataset) == 2  # 950 is outside 801–900
    batches = list(data.val_dataloader())
    assert len(batches) == 2
    for (lr, hr), number in zip(batches, (801, 802)):
        assert lr.shape == (1, 3, 7, 9) and hr.shape == (1, 3, 21, 27)  # 802's HR has extra pixels, cropped
        expected_lr, expected_hr = images[number]
        assert np.array_equal(pixels(lr[0]), expected_lr)
        assert np.array_equal(pixels(hr[0]), expected_hr[:21, :27])
    grey = pixels(batches[0][0][0])
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])


def test_official_validation_folder_is_used_when_train_folder_has_no_validation_ids(tmp_path):
    write_div2k(tmp_path, scale=2, train_ids=(1,), val_ids=())
    official = tmp_path / "official"
    write_div2k(official, scale=2, train_ids=(), val_ids=(801, 802))
    (official / "DIV2K_train_HR").rename(tmp_path / "DIV2K_valid_HR")
    (official / "DIV2K_train_LR_bicubic").rename(tmp_path / "DIV2K_valid_LR_bicubic")
    data = DIV2KDataloader(batch_size=1, patch_size=4, scale=2, num_workers=0, root=str(tmp_path))
    assert len(data.val_dataset) == 2
    assert data.val_dataset.pairs[0].hr == tmp_path / "DIV2K_valid_HR" / "0801.png"


def test_cache_is_reused_without_decoding(tmp_path, cache_root, monkeypatch):
    write_div2k(tmp_path / "div2k", train_ids=(1, 2), val_ids=(801,))
    root = tmp_path / "div2k"
    first = DIV2KDataloader(batch_size=1, patch_size=4, scale=2, num_workers=0, root=str(root))
    first.train_dataset, first.val_dataset
    cached = sorted(cache_root.rglob("*.npy"))
    assert len(cached) == 6
    assert all(str(path).startswith(str(cache_root / "div2k")) for path in cached)  # not in the dataset folder
    assert not list(root.rglob("*.npy"))
    assert np.load(cached[0], allow_pickle=False).dtype == np.uint8

    decoded = []
    original = superresolution.decode_rgb
    monkeypatch.setattr(superresolution, "decode_rgb", lambda path: decoded.append(path) or original(path))
    second = DIV2KDataloader(batch_size=1, patch_size=4, scale=2, num_workers=0, root=str(root))
    second.train_dataset, second.val_dataset
    second.train_dataset[0]
    assert decoded == []

    # An edited image is decoded again, and only that one.
    changed = root / "DIV2K_train_HR" / "0002.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    DIV2KDataloader(batch_size=1, patch_size=4, scale=2, num_workers=0, root=str(root)).train_dataset
    assert decoded == [changed]


def test_cache_dir_argument(tmp_path, cache_root):
    write_div2k(tmp_path / "div2k", train_ids=(1,), val_ids=())
    data = DIV2KDataloader(batch_size=1, patch_size=4, scale=2, num_workers=0, root=str(tmp_path / "div2k"),
                           cache_dir=str(tmp_path / "mine"))
    data.train_dataset
    assert len(list((tmp_path / "mine").rglob("*.npy"))) == 2
    assert not cache_root.exists()


def test_linked_folders(tmp_path, cache_root):
    """Image folders that are links to another disk are cached under the dataset's own names."""
    write_div2k(tmp_path / "elsewhere", train_ids=(1,), val_ids=())
    (tmp_path / "div2k").mkdir()
    for name in ("DIV2K_train_HR", "DIV2K_train_LR_bicubic"):
        (tmp_path / "div2k" / name).symlink_to(tmp_path / "elsewhere" / name)
    DIV2KDataloader(batch_size=1, patch_size=4, scale=2, num_workers=0, root=str(tmp_path / "div2k")).train_dataset
    assert sorted(p.name for p in cache_root.rglob("*.npy")) == ["0001.npy", "0001x2.npy"]
    assert len(list(cache_root.rglob("DIV2K_train_HR/0001.npy"))) == 1


def test_building_touches_no_data(tmp_path):
    DIV2KDataloader(batch_size=2, patch_size=96, scale=2, root=str(tmp_path / "nowhere"))


def test_missing_folder_is_a_one_line_error(tmp_path):
    write_div2k(tmp_path, scale=2)
    data = DIV2KDataloader(batch_size=1, patch_size=12, scale=3, root=str(tmp_path))
    with pytest.raises(DataError) as error:
        data.train_dataset
    message = str(error.value)
    assert f"folder {tmp_path / 'DIV2K_train_LR_bicubic' / 'X3'} does not exist" in message
    assert "\n" not in message


def test_lr_hr_count_mismatch_names_both_folders(tmp_path):
    write_div2k(tmp_path, scale=2, train_ids=(1, 2, 3))
    (tmp_path / "DIV2K_train_LR_bicubic" / "X2" / "0002x2.png").unlink()
    data = DIV2KDataloader(batch_size=1, patch_size=4, scale=2, root=str(tmp_path))
    with pytest.raises(DataError) as error:
        data.train_dataset
    message = str(error.value)
    assert f"3 HR images in {tmp_path / 'DIV2K_train_HR'} but 2 LR images in {tmp_path / 'DIV2K_train_LR_bicubic' / 'X2'}" in message
    assert "0002x2.png is missing" in message and "\n" not in message


def test_no_images_in_range(tmp_path):
    write_div2k(tmp_path, scale=2, train_ids=(), val_ids=(801,))
    with pytest.raises(DataError, match="no HR images with ids 1-800"):
        DIV2KDataloader(batch_size=1, patch_size=4, scale=2, root=str(tmp_path)).train_dataset


def test_lr_smaller_than_a_patch(tmp_path):
    write_div2k(tmp_path, scale=2, lr_size=(6, 8))
    with pytest.raises(DataError, match=r"0001x2.png is 8×6, smaller than the 10-pixel LR patches"):
        DIV2KDataloader(batch_size=1, patch_size=20, scale=2, root=str(tmp_path), num_workers=0).train_dataset


def test_hr_smaller_than_scale_times_lr(tmp_path):
    write_div2k(tmp_path, scale=3, train_ids=(1,), val_ids=(), lr_size=(12, 16))
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / "DIV2K_train_HR" / "0001.png")
    with pytest.raises(DataError, match=r"0001.png is 32×24 but its ×3 LR image .*0001x3.png is 16×12: .* at least 48×36"):
        DIV2KDataloader(batch_size=1, patch_size=6, scale=3, root=str(tmp_path), num_workers=0).train_dataset


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"patch_size": 95, "scale": 2}, "patch_size must be a positive multiple of scale 2"),
        ({"patch_size": 96, "scale": 1}, "scale must be an integer of at least 2"),
        ({"patch_size": 96, "scale": 2, "repeat": 0}, "repeat must be a positive integer"),
    ],
)
def test_argument_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        DIV2KDataloader(batch_size=2, **arguments)
