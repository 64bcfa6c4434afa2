"""``!Set14Dataloader``: the Set14 benchmark (Zeyde et al., 2010), validation only.

Layout under the dataset folder (datasets-info key ``set14``), as in the benchmark archive the
EDSR authors distribute::

    HR/baboon.png …
    LR_bicubic/X2/baboonx2.png …   (X3/baboonx3.png, X4/baboonx4.png)

Every HR image (``.png`` or ``.bmp``) must have its LR image. Grey images become 3-channel, and
HR images are cropped to ``scale ×`` the LR size (some Set14 sizes are not multiples of 3 or 4).
"""

from pathlib import Path

from rupq.dataloaders.superresolution import SuperResolutionDataModule, SuperResolutionPairs, cached_pairs
from rupq.errors import DataError

SUFFIXES = (".png", ".bmp")


def set14_pairs(root: Path, scale: int) -> list[tuple[Path, Path]]:
    """``(lr, hr)`` paths: ``root/HR/<name>`` with ``root/LR_bicubic/X{scale}/<name>x{scale}``."""
    hr_dir, lr_dir = root / "HR", root / "LR_bicubic" / f"X{scale}"
    for folder in (hr_dir, lr_dir):
        if not folder.is_dir():
            raise DataError(f"Set14: folder {folder} does not exist (expected HR/<name>.png and "
                            f"LR_bicubic/X{scale}/<name>x{scale}.png under {root})")
    hr_images = sorted(path for path in hr_dir.iterdir() if path.suffix.lower() in SUFFIXES)
    lr_images = {path.stem: path for path in lr_dir.iterdir() if path.suffix.lower() in SUFFIXES}
    if not hr_images:
        raise DataError(f"Set14: no .png or .bmp images in {hr_dir}")
    missing = [hr for hr in hr_images if f"{hr.stem}x{scale}" not in lr_images]
    if missing or len(lr_images) != len(hr_images):
        example = (f"{lr_dir / (missing[0].stem + f'x{scale}' + missing[0].suffix)} is missing" if missing
                   else f"{lr_dir} holds images without an HR counterpart")
        raise DataError(f"Set14: {len(hr_images)} HR images in {hr_dir} but {len(lr_images)} LR images in {lr_dir}; "
                        f"e.g. {example}")
    return [(lr_images[f"{hr.stem}x{scale}"], hr) for hr in hr_images]


class Set14Dataloader(SuperResolutionDataModule):
    """Whole Set14 images, one per batch, for :meth:`val_dataloader`."""

    dataset_key = "set14"

    def __init__(self, scale: int, normalize: bool = True, num_workers: int = 0, root: str | None = None,
                 cache_dir: str | None = None):
        super().__init__(1, scale, normalize, num_workers, root, cache_dir)

    def build_train_dataset(self):
        raise DataError("Set14 is a benchmark: it has no training images; use it through val_dataloader()")

    def build_val_dataset(self) -> SuperResolutionPairs:
        pairs = cached_pairs(self.image_cache(), set14_pairs(self.root, self.scale), self.num_workers, "Set14")
        return SuperResolutionPairs(pairs, self.scale, self.normalize)
