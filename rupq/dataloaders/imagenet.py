"""``!ImageNet2012Dataloader``: ImageNet in folder layout (``train/<class>/*.JPEG``, ``val/<class>/*``).

An unreadable image stops the run with an error naming the file; with ``skip_corrupt: true`` it
is skipped with a warning instead (see :class:`~rupq.dataloaders.base.CorruptFileGuard`).
"""

from pathlib import Path

from torchvision.datasets import ImageFolder

from rupq.dataloaders.base import CorruptFileGuard, DataModule, load_rgb_image
from rupq.dataloaders.transforms import imagenet_train, imagenet_val
from rupq.errors import DataError


def image_folder(path: Path, transform) -> ImageFolder:
    if not path.is_dir():
        raise DataError(f"ImageNet split folder {path} does not exist (expected class subfolders inside)")
    try:
        return ImageFolder(str(path), transform=transform, loader=load_rgb_image)
    except FileNotFoundError as error:
        raise DataError(f"ImageNet split folder {path}: {error}") from None


class ImageNet2012Dataloader(DataModule):
    dataset_key = "imagenet2012"

    def __init__(self, batch_size: int, num_workers: int = -1, root: str | None = None, image_size: int = 224,
                 skip_corrupt: bool = False):
        super().__init__(batch_size, num_workers, root)
        self.image_size = image_size
        self.skip_corrupt = skip_corrupt

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def build_train_dataset(self):
        images = image_folder(self.root / "train", imagenet_train(self.image_size))
        return CorruptFileGuard(images, self.skip_corrupt, type(self).__name__)

    def build_val_dataset(self):
        images = image_folder(self.root / "val", imagenet_val(self.image_size, round(self.image_size * 256 / 224)))
        return CorruptFileGuard(images, self.skip_corrupt, type(self).__name__)
