"""What the super-resolution datasets (DIV2K, Set14) share: a cache of decoded images, the
LR/HR pair dataset and a data module whose validation batches hold one whole image.

Decoding a 2040×1356 PNG takes tens of milliseconds, far longer than cutting a 96-pixel patch
from it, so every image is decoded once into an uncompressed ``H×W×3`` uint8 ``.npy`` file and
read memory-mapped afterwards: a patch touches only the rows it covers, and the operating
system's page cache keeps hot files in memory for all DataLoader workers at once.

The cache lives outside the dataset folder (which may be read-only or shared), in
``$RUPQ_CACHE_DIR/<dataset>/<hash of the dataset folder>/`` (``~/.cache/rupq`` when the variable
is not set), or in the folder a dataloader's ``cache_dir`` argument names. A cached file is reused
while its recorded modification time equals the image's; an edited image is decoded again.
"""

import hashlib
import mmap
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from rupq.dataloaders.base import DataModule, EpochSampler, WorkerSafeDataLoader
from rupq.dataloaders.transforms.superresolution import random_aligned_crop, random_dihedral, to_tensor
from rupq.errors import DataError

CACHE_ENV = "RUPQ_CACHE_DIR"


def default_cache_root() -> Path:
    return Path(os.path.expanduser(os.environ.get(CACHE_ENV) or "~/.cache/rupq"))


def decode_rgb(path: Path) -> np.ndarray:
    """An image file as ``H×W×3`` uint8; grey, palette and RGBA images become 3-channel RGB."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB") if image.mode != "RGB" else image.copy())
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"cannot decode image {path}: {error}") from None


class ImageCache:
    """Decoded copies of the images under ``dataset_root``, one ``.npy`` file per image."""

    def __init__(self, dataset_root: Path, dataset_name: str, cache_dir: str | Path | None = None):
        self.dataset_root = Path(dataset_root)
        if cache_dir is None:
            digest = hashlib.sha1(str(self.dataset_root.resolve()).encode()).hexdigest()[:16]
            cache_dir = default_cache_root() / dataset_name / digest
        self.folder = Path(os.path.expanduser(str(cache_dir)))

    def path_for(self, image: Path) -> Path:
        # Relative to the folder as given, not resolved: its subfolders may be links to elsewhere.
        return self.folder / Path(image).relative_to(self.dataset_root).with_suffix(".npy")

    def is_fresh(self, image: Path) -> bool:
        cached = self.path_for(image)
        return cached.is_file() and cached.stat().st_mtime_ns == Path(image).stat().st_mtime_ns

    def _store(self, image: Path) -> None:
        pixels = decode_rgb(image)
        cached = self.path_for(image)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            # Write beside the target and rename: readers (other ranks, an interrupted run) never
            # see a half-written file.
            handle, temporary = tempfile.mkstemp(prefix=f".{cached.stem}.", suffix=".npy", dir=cached.parent)
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, pixels)
            source = Path(image).stat()
            os.utime(temporary, ns=(source.st_atime_ns, source.st_mtime_ns))
            os.replace(temporary, cached)
        except OSError as error:
            raise DataError(
                f"cannot write the image cache in {self.folder}: {error.strerror or error}; "
                f"set {CACHE_ENV} or the dataloader's cache_dir: to a writable folder"
            ) from None

    def prepare(self, images: list[Path], threads: int = 1, description: str = "decoding images") -> list[Path]:
        """Decode the images that have no fresh cached copy; return the cached paths in order."""
        missing = [image for image in images if not self.is_fresh(image)]
        if missing:
            with ThreadPoolExecutor(max(1, threads)) as pool:
                done = pool.map(self._store, missing)
                for _ in tqdm(done, total=len(missing), desc=f"{description} into {self.folder}", mininterval=1.0):
                    pass
        return [self.path_for(image) for image in images]


class ImagePair(NamedTuple):
    lr: Path  # the source files, for messages
    hr: Path
    lr_cached: Path
    hr_cached: Path


class CachedImage(NamedTuple):
    """Where the pixels of a cached ``.npy`` file start, and their ``H×W×3`` shape."""

    path: Path
    offset: int
    shape: tuple[int, int, int]

    @classmethod
    def open(cls, path: Path) -> "CachedImage":
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(stream)
            offset = stream.tell()
        if dtype != np.uint8 or fortran_order or len(shape) != 3 or shape[2] != 3:
            raise DataError(f"{path} is not an image cache file (H×W×3 uint8); delete it to have it rebuilt")
        return cls(Path(path), offset, shape)

    def pixels(self) -> np.ndarray:
        """The image, memory-mapped read-only (``np.load(mmap_mode="r")`` costs several times more
        per call: it resolves the path and parses the header every time)."""
        with open(self.path, "rb") as stream:
            mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
        # The array keeps the mapping alive; it is unmapped when the array is freed.
        return np.frombuffer(mapped, np.uint8, count=int(np.prod(self.shape)), offset=self.offset).reshape(self.shape)


class SuperResolutionPairs(Dataset):
    """``(LR, HR)`` float tensors ``3×h×w`` and ``3×(scale·h)×(scale·w)``.

    With ``patch_size`` (training): a random aligned crop of ``patch_size`` HR pixels, then one
    random rotation/flip applied to both; each image appears ``repeat`` times per epoch. Without
    it (validation): the whole LR image and the HR image cropped to ``scale ×`` its size.
    """

    def __init__(self, pairs: list[ImagePair], scale: int, normalize: bool, patch_size: int | None = None,
                 repeat: int = 1):
        self.pairs, self.scale, self.normalize = pairs, scale, normalize
        self.patch_size, self.repeat = patch_size, repeat
        self.images = [(CachedImage.open(pair.lr_cached), CachedImage.open(pair.hr_cached)) for pair in pairs]
        for pair, (lr, hr) in zip(pairs, self.images):
            self._check_sizes(pair, lr.shape, hr.shape)

    def _check_sizes(self, pair: ImagePair, lr_shape: tuple, hr_shape: tuple) -> None:
        (lr_height, lr_width, _), (hr_height, hr_width, _) = lr_shape, hr_shape
        if hr_height < self.scale * lr_height or hr_width < self.scale * lr_width:
            raise DataError(
                f"{pair.hr} is {hr_width}×{hr_height} but its ×{self.scale} LR image {pair.lr} is "
                f"{lr_width}×{lr_height}: the HR image must be at least {self.scale * lr_width}×{self.scale * lr_height}"
            )
        if self.patch_size is not None and min(lr_height, lr_width) < self.patch_size // self.scale:
            raise DataError(
                f"{pair.lr} is {lr_width}×{lr_height}, smaller than the {self.patch_size // self.scale}-pixel LR "
                f"patches of patch_size {self.patch_size} at scale {self.scale}"
            )

    def __len__(self) -> int:
        return len(self.pairs) * self.repeat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr_image, hr_image = self.images[index % len(self.images)]
        lr, hr = lr_image.pixels(), hr_image.pixels()
        if self.patch_size is not None:
            lr, hr = random_aligned_crop(lr, hr, self.scale, self.patch_size)
            lr, hr = random_dihedral(lr, hr)
        else:
            hr = hr[: self.scale * lr.shape[0], : self.scale * lr.shape[1]]
        return to_tensor(lr, self.normalize), to_tensor(hr, self.normalize)


def cached_pairs(cache: ImageCache, pairs: list[tuple[Path, Path]], threads: int, description: str) -> list[ImagePair]:
    """Decode ``(lr, hr)`` source files into ``cache`` and pair them with their cached copies."""
    cached = cache.prepare([path for pair in pairs for path in pair], threads, description)
    return [ImagePair(lr, hr, cached[2 * i], cached[2 * i + 1]) for i, (lr, hr) in enumerate(pairs)]


class SuperResolutionDataModule(DataModule):
    """A data module of :class:`SuperResolutionPairs`; validation batches hold one whole image each,
    because validation images differ in size."""

    def __init__(self, batch_size: int, scale: int, normalize: bool = True, num_workers: int = -1,
                 root: str | None = None, cache_dir: str | None = None):
        super().__init__(batch_size, num_workers, root)
        if not isinstance(scale, int) or isinstance(scale, bool) or scale < 2:
            raise ValueError(f"scale must be an integer of at least 2, got {scale!r}")
        self.scale, self.normalize, self.cache_dir = scale, bool(normalize), cache_dir

    def image_cache(self) -> ImageCache:
        return ImageCache(self.root, self.dataset_key, self.cache_dir)

    def val_dataloader(self) -> DataLoader:
        sampler = EpochSampler(len(self.val_dataset), shuffle=False, rank=self.rank, world_size=self.world_size, pad=False)
        return WorkerSafeDataLoader(
            self.val_dataset, batch_size=1, sampler=sampler, num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )
