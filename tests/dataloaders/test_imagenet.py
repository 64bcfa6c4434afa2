import pytest

from rupq.dataloaders import ImageNet2012Dataloader
from rupq.errors import DataError


def test_imagenet_folders_and_seed_transforms(tiny_imagenet, datasets_info):
    datasets_info(imagenet2012=tiny_imagenet)
    data = ImageNet2012Dataloader(batch_size=2, num_workers=0)
    assert len(data.train_dataset) == 8 and len(data.val_dataset) == 4
    assert data.train_dataset.classes == ["n01440764", "n01443537"]
    images, labels = next(iter(data.val_dataloader()))
    assert images.shape == (2, 3, 224, 224)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (2, 3, 224, 224)


def test_missing_split_folder(tiny_imagenet):
    (tiny_imagenet / "val").rename(tiny_imagenet / "validation")
    data = ImageNet2012Dataloader(batch_size=2, root=str(tiny_imagenet))
    with pytest.raises(DataError, match=f"ImageNet split folder {tiny_imagenet / 'val'} does not exist"):
        data.val_dataset


def test_split_without_images(tmp_path):
    (tmp_path / "train" / "cls").mkdir(parents=True)
    data = ImageNet2012Dataloader(batch_size=2, root=str(tmp_path))
    with pytest.raises(DataError, match="ImageNet split folder .*train: Found no valid file for the classes cls"):
        data.train_dataset


def test_datasets_info_without_the_key(datasets_info):
    info = datasets_info(coco="/somewhere")
    with pytest.raises(DataError, match=f"dataset 'imagenet2012' has no path in {info}"):
        ImageNet2012Dataloader(batch_size=2).root
