"""``!FashionMNISTDataloader``: Fashion-MNIST from its idx files (torchvision's format), held in memory.

The files (``train-images-idx3-ubyte[.gz]`` …) are looked for in the configured root (``root:``
or the datasets-info key ``fashion_mnist``, also under ``FashionMNIST/raw/``), then in the
Debian package's folder, and only then downloaded by torchvision when the machine is online.
"""

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rupq.dataloaders.base import DataModule, dataset_root
from rupq.errors import DataError, RupqError

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_FOLDER = Path.home() / ".cache" / "rupq" / "fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def find_file(folder: Path, name: str) -> Path | None:
    """The idx file ``name`` (or ``name.gz``) in ``folder`` or in its ``FashionMNIST/raw/`` (torchvision's
    layout); None when there is none."""
    for candidate in (folder / name, folder / f"{name}.gz", folder / "FashionMNIST" / "raw" / name,
                      folder / "FashionMNIST" / "raw" / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {body.size} values (truncated file?)")
    return body.reshape(shape)


def fashion_mnist_folder(root) -> Path:
    """The first folder holding all four files: configured root, Debian's folder, a download."""
    candidates = []
    try:
        candidates.append(dataset_root("fashion_mnist", root, "FashionMNISTDataloader"))
    except RupqError:
        if root is not None:
            raise
    candidates += [DEBIAN_FOLDER, DOWNLOAD_FOLDER]
    names = [name for pair in FILES.values() for name in pair]
    for folder in candidates:
        if all(find_file(folder, name) for name in names):
            return folder
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(DOWNLOAD_FOLDER), train=True, download=True)
        FashionMNIST(str(DOWNLOAD_FOLDER), train=False, download=True)
    except Exception as error:  # any network failure means the same thing to the user
        raise DataError(
            f"Fashion-MNIST not found in {', '.join(map(str, candidates[:-1]))} and downloading it failed "
            f"({type(error).__name__}); install the Debian package dataset-fashion-mnist"
        ) from None
    return DOWNLOAD_FOLDER


class FashionMNISTImages(Dataset):
    """Normalized ``1×28×28`` images and labels; random horizontal flips when ``augment``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool):
        self.images = torch.from_numpy(np.array(images))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.augment = augment

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = (self.images[index].float().div_(255).sub_(MEAN).div_(STD)).unsqueeze(0)
        if self.augment and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.labels[index]


class FashionMNISTDataloader(DataModule):
    """Fashion-MNIST: 60k training and 10k test images (the test set is the validation set).

    ``train_subset`` / ``val_subset`` keep a fixed random subset of that many images (for quick
    experiments); the subset depends only on its size.
    """

    dataset_key = "fashion_mnist"
    input_size = (1, 28, 28)

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        root: str | None = None,
        train_subset: int | None = None,
        val_subset: int | None = None,
        augment: bool = True,
    ):
        super().__init__(batch_size, num_workers, root)
        self.train_subset, self.val_subset, self.augment = train_subset, val_subset, augment

    @property
    def root(self) -> Path:
        return fashion_mnist_folder(self.root_argument)

    def _split(self, split: str, subset: int | None, augment: bool) -> FashionMNISTImages:
        folder = self.root
        images, labels = (read_idx(find_file(folder, name)) for name in FILES[split])
        if len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {split} split in {folder}: {len(images)} images but {len(labels)} labels")
        if subset is not None and subset < len(labels):
            keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(subset))[:subset].numpy()
            images, labels = images[np.sort(keep)], labels[np.sort(keep)]
        return FashionMNISTImages(images, labels, augment)

    def build_train_dataset(self):
        return self._split("train", self.train_subset, self.augment)

    def build_val_dataset(self):
        return self._split("test", self.val_subset, False)
