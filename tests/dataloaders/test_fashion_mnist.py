import pytest
import torch

from rupq.dataloaders import FashionMNISTDataloader
from rupq.dataloaders.fashion_mnist import MEAN, STD, read_idx
from rupq.errors import DataError


def test_reads_idx_files_from_the_configured_root(tiny_fashion_mnist):
    data = FashionMNISTDataloader(batch_size=8, root=str(tiny_fashion_mnist), augment=False)
    assert len(data.train_dataset) == 64 and len(data.val_dataset) == 32
    image, label = data.val_dataset[3]
    raw = read_idx(tiny_fashion_mnist / "t10k-images-idx3-ubyte.gz")[3].copy()
    assert image.shape == (1, 28, 28) and label.item() == 3
    assert torch.allclose(image[0], (torch.from_numpy(raw).float() / 255 - MEAN) / STD)
    images, labels = next(iter(data.train_dataloader(epoch=0, seed=1)))
    assert images.shape == (8, 1, 28, 28) and labels.dtype == torch.int64


def test_subset_is_fixed_by_its_size(tiny_fashion_mnist):
    a = FashionMNISTDataloader(batch_size=8, root=str(tiny_fashion_mnist), train_subset=20).train_dataset
    b = FashionMNISTDataloader(batch_size=8, root=str(tiny_fashion_mnist), train_subset=20).train_dataset
    assert len(a) == 20 and torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)


def test_shuffling_depends_on_seed_and_epoch_only(tiny_fashion_mnist):
    data = FashionMNISTDataloader(batch_size=64, root=str(tiny_fashion_mnist), augment=False)
    labels = lambda epoch: next(iter(data.train_dataloader(epoch=epoch, seed=3)))[1]
    assert torch.equal(labels(0), labels(0)) and not torch.equal(labels(0), labels(1))


def test_truncated_file_is_a_data_error(tmp_path):
    broken = tmp_path / "broken-idx3-ubyte"
    broken.write_bytes(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    with pytest.raises(DataError, match=r"broken-idx3-ubyte: header says \(10, 28, 28\) but holds 100 values"):
        read_idx(broken)


def test_configured_root_without_files_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"dataset 'fashion_mnist': folder {empty} is empty"):
        FashionMNISTDataloader(batch_size=8, root=str(empty)).train_dataset
