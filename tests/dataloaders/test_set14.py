import numpy as np
import pytest
from superresolution_data import write_set14

from rupq.dataloaders import Set14Dataloader
from rupq.errors import DataError


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("RUPQ_CACHE_DIR", str(tmp_path / "cache"))


def test_whole_images_grey_made_rgb_and_hr_cropped(tmp_path, datasets_info):
    images = write_set14(tmp_path / "set14", names=("baboon", "comic", "lenna"), scale=3, lr_size=(5, 7),
                         grey_names=("comic",))
    datasets_info(set14=tmp_path / "set14")
    data = Set14Dataloader(scale=3, normalize=False)
    batches = list(data.val_dataloader())
    assert len(batches) == 3
    for (lr, hr), name in zip(batches, ("baboon", "comic", "lenna")):
        assert lr.shape == (1, 3, 5, 7) and hr.shape == (1, 3, 15, 21)  # HR had 2 extra rows, 1 extra column
        expected_lr, expected_hr = images[name]
        assert np.array_equal(lr[0].permute(1, 2, 0).numpy(), expected_lr)
        assert np.array_equal(hr[0].permute(1, 2, 0).numpy(), expected_hr[:15, :21])


def test_normalized_values(tmp_path):
    write_set14(tmp_path, scale=2)
    lr, hr = next(iter(Set14Dataloader(scale=2, root=str(tmp_path)).val_dataloader()))
    assert lr.min() >= -2.5 and lr.max() <= 2.5 and lr.min() < -2.0 and lr.max() > 2.0


def test_missing_lr_image(tmp_path):
    write_set14(tmp_path, names=("baboon", "lenna"), scale=2)
    (tmp_path / "LR_bicubic" / "X2" / "lennax2.png").unlink()
    with pytest.raises(DataError) as error:
        Set14Dataloader(scale=2, root=str(tmp_path)).val_dataset
    message = str(error.value)
    assert f"2 HR images in {tmp_path / 'HR'} but 1 LR images in {tmp_path / 'LR_bicubic' / 'X2'}" in message
    assert "lennax2.png is missing" in message and "\n" not in message


def test_missing_scale_folder(tmp_path):
    write_set14(tmp_path, scale=2)
    with pytest.raises(DataError, match=f"Set14: folder {tmp_path / 'LR_bicubic' / 'X4'} does not exist"):
        Set14Dataloader(scale=4, root=str(tmp_path)).val_dataset


def test_no_training_split(tmp_path):
    write_set14(tmp_path, scale=2)
    with pytest.raises(DataError, match="no training images"):
        Set14Dataloader(scale=2, root=str(tmp_path)).train_dataset
