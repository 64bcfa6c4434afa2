"""``!DIV2KDataloader``: DIV2K (Agustsson & Timofte, NTIRE 2017), bicubic degradation.

Layout under the dataset folder (datasets-info key ``div2k``)::

    DIV2K_train_HR/0001.png … 0900.png
    DIV2K_train_LR_bicubic/X2/0001x2.png …   (X3/0001x3.png, X4/0001x4.png for the other scales)

Images 0001–0800 are the training set, 0801–0900 the validation set. When ``DIV2K_train_HR``
holds no image in 801–900, the validation images are read from the official download's
``DIV2K_valid_HR/`` and ``DIV2K_valid_LR_bicubic/X{s}/`` instead. Whichever ids of those ranges
exist are used, so a small folder in the same layout works too.

Training samples are random aligned patches (``patch_size`` HR pixels, ``patch_size / scale``
LR pixels) with a random rotation/flip. One epoch draws one patch from each training image
(``repeat`` times over): with the 800 DIV2K images that is 800 patches, which is what the
original RUPQ configs assume (e.g. SRResNet: ``T_max = 180000`` iterations = 7200 epochs × 800 / 32).
Small datasets raise ``repeat`` to get epochs of a useful length. Validation uses whole images,
one per batch.
"""

from pathlib import Path

from rupq.dataloaders.superresolution import SuperResolutionDataModule, SuperResolutionPairs, cached_pairs
from rupq.errors import DataError

TRAIN_IDS = range(1, 801)
VAL_IDS = range(801, 901)


def _numbered_images(folder: Path, ids: range, suffix: str) -> dict[int, Path]:
    """``{id: path}`` of ``folder/NNNN{suffix}.png`` for the ids in ``ids``."""
    found = {}
    for path in folder.glob(f"*{suffix}.png"):
        number = path.name[: -len(f"{suffix}.png")]
        if number.isdigit() and int(number) in ids:
            found[int(number)] = path
    return found


def div2k_pairs(root: Path, hr_folder: str, lr_folder: str, scale: int, ids: range) -> list[tuple[Path, Path]]:
    """``(lr, hr)`` paths of the images of ``ids`` in ``root/hr_folder`` and ``root/lr_folder/X{scale}``."""
    hr_dir, lr_dir = root / hr_folder, root / lr_folder / f"X{scale}"
    for folder in (hr_dir, lr_dir):
        if not folder.is_dir():
            raise DataError(f"DIV2K: folder {folder} does not exist (expected {hr_folder}/0001.png and "
                            f"{lr_folder}/X{scale}/0001x{scale}.png under {root})")
    hr = _numbered_images(hr_dir, ids, "")
    lr = _numbered_images(lr_dir, ids, f"x{scale}")
    span = f"ids {ids.start}-{ids.stop - 1}"
    if not hr:
        raise DataError(f"DIV2K: no HR images with {span} (0001.png …) in {hr_dir}")
    if set(hr) != set(lr):
        lonely = sorted(set(hr) ^ set(lr))[0]
        example = (f"{lr_dir / f'{lonely:04d}x{scale}.png'} is missing" if lonely in hr
                   else f"{hr_dir / f'{lonely:04d}.png'} is missing")
        raise DataError(f"DIV2K: {len(hr)} HR images in {hr_dir} but {len(lr)} LR images in {lr_dir} for {span}; "
                        f"e.g. {example}")
    return [(lr[number], hr[number]) for number in sorted(hr)]


class DIV2KDataloader(SuperResolutionDataModule):
    dataset_key = "div2k"

    def __init__(
        self,
        batch_size: int,
        patch_size: int,
        scale: int,
        normalize: bool = True,
        num_workers: int = -1,
        root: str | None = None,
        repeat: int = 1,
        cache_dir: str | None = None,
    ):
        super().__init__(batch_size, scale, normalize, num_workers, root, cache_dir)
        if not isinstance(patch_size, int) or patch_size < scale or patch_size % scale:
            raise ValueError(f"patch_size must be a positive multiple of scale {scale}, got {patch_size!r}")
        if not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"repeat must be a positive integer, got {repeat!r}")
        self.patch_size, self.repeat = patch_size, repeat
        self.input_size = (3, patch_size // scale, patch_size // scale)  # the LR patches

    def build_train_dataset(self) -> SuperResolutionPairs:
        pairs = div2k_pairs(self.root, "DIV2K_train_HR", "DIV2K_train_LR_bicubic", self.scale, TRAIN_IDS)
        pairs = cached_pairs(self.image_cache(), pairs, self.num_workers, "DIV2K train")
        return SuperResolutionPairs(pairs, self.scale, self.normalize, self.patch_size, self.repeat)

    def build_val_dataset(self) -> SuperResolutionPairs:
        root = self.root
        hr_folder, lr_folder = "DIV2K_train_HR", "DIV2K_train_LR_bicubic"
        if not _numbered_images(root / hr_folder, VAL_IDS, "") and (root / "DIV2K_valid_HR").is_dir():
            hr_folder, lr_folder = "DIV2K_valid_HR", "DIV2K_valid_LR_bicubic"
        pairs = div2k_pairs(root, hr_folder, lr_folder, self.scale, VAL_IDS)
        pairs = cached_pairs(self.image_cache(), pairs, self.num_workers, "DIV2K validation")
        return SuperResolutionPairs(pairs, self.scale, self.normalize)
