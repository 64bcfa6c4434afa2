"""``!COCODataloader``: detection data in the COCO list-file layout of the Darknet tools.

Layout under the root (datasets-info key ``coco``)::

    trainvalno5k.txt   training images, one path per line (relative to the root, or absolute)
    5k.txt             validation images
    coco.names         class names, one per line (optional; when present, class ids are checked)
    images/…/x.jpg     the images
    labels/…/x.txt     one ``class cx cy w h`` line per box, normalized to [0, 1]

The label file of an image is its path with the last ``images`` of the folder replaced by
``labels`` and the extension by ``.txt``; an image without a label file has no objects.

A batch is ``(paths, images, targets, original_sizes)``: ``images`` ``[B, 3, S, S]`` in [0, 1]
(letterboxed squares), ``targets`` ``[N, 6]`` rows ``(batch_index, class, cx, cy, w, h)``
normalized to the square, ``original_sizes`` ``[B, 2]`` the ``(height, width)`` of each image
before the letterbox (to map detections back onto it).

Multiscale training changes the square's side ``S`` every :data:`MULTISCALE_EVERY` batches, among
``image_size − 96 … image_size + 96`` in steps of 32. The side of batch ``b`` depends only on
``(seed, epoch, b // 10)``, and the batch sampler hands it to the dataset with each index, so
that it is the same with any number of workers and after resuming.
"""

import math
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors
from tqdm import tqdm

from rupq.dataloaders.base import DataModule, WorkerSafeDataLoader, load_rgb_image
from rupq.dataloaders.transforms.detection import DetectionAugmentation, letterbox
from rupq.errors import DataError

TRAIN_LIST, VAL_LIST, NAMES_FILE = "trainvalno5k.txt", "5k.txt", "coco.names"
MULTISCALE_EVERY = 10
MULTISCALE_RANGE = 96
MULTISCALE_STEP = 32


def label_path(image_path: Path) -> Path:
    """``…/images/…/x.jpg`` → ``…/labels/…/x.txt`` (the last ``images`` of the folder path)."""
    folder = str(image_path.parent)
    if "images" not in folder:
        raise DataError(f"cannot locate the labels of {image_path}: its folder has no 'images' part to replace by 'labels'")
    head, tail = folder.rsplit("images", 1)
    return Path(f"{head}labels{tail}") / f"{image_path.stem}.txt"


def read_labels(path: Path, num_classes: int | None = None) -> np.ndarray:
    """The ``[n, 5]`` float32 rows ``class, cx, cy, w, h`` of a label file (``[0, 5]`` if it has none).

    Raises :class:`DataError` naming the file and line for anything but five numbers with an
    integer class (below ``num_classes`` when known), a centre in [0, 1] and a positive size.
    """
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read label file {path}: {error}") from None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 5:
            raise DataError(f"expected 'class cx cy w h', got {len(fields)} fields: {line.strip()!r}", where)
        try:
            values = [float(field) for field in fields]
        except ValueError:
            raise DataError(f"expected 'class cx cy w h' numbers, got {line.strip()!r}", where) from None
        cls, cx, cy, w, h = values
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"non-finite value in {line.strip()!r}", where)
        if cls != int(cls) or cls < 0 or (num_classes is not None and cls >= num_classes):
            limit = f" below {num_classes} (the lines of {NAMES_FILE})" if num_classes is not None else ""
            raise DataError(f"class must be an integer from 0{limit}, got {fields[0]}", where)
        if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0 and 0.0 < w <= 1.0 and 0.0 < h <= 1.0):
            raise DataError(f"box must be normalized (centre in [0, 1], size in (0, 1]), got {line.strip()!r}", where)
        rows.append(values)
    return np.array(rows, dtype=np.float32).reshape(-1, 5)


def read_image_list(list_path: Path, root: Path) -> list[Path]:
    if not list_path.is_file():
        raise DataError(f"image list {list_path} does not exist")
    paths = []
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        path = Path(entry) if Path(entry).is_absolute() else root / entry
        if not path.is_file():
            raise DataError(f"image {path} does not exist", f"{list_path}:{number}")
        paths.append(path)
    if not paths:
        raise DataError(f"image list {list_path} is empty")
    return paths


def read_class_names(root: Path) -> list[str] | None:
    path = root / NAMES_FILE
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class COCODetection(Dataset):
    """The images of one list file with their boxes.

    ``dataset[i]`` or ``dataset[(i, size)]`` is ``(path, image, labels, original_size)``:
    ``image`` a ``3×size×size`` float tensor in [0, 1], ``labels`` ``[n, 5]`` rows
    ``class, cx, cy, w, h`` normalized to that square, ``original_size`` ``(height, width)``.
    """

    def __init__(self, root: Path, list_name: str, image_size: int, augment: bool):
        self.root, self.image_size = root, image_size
        self.class_names = read_class_names(root)
        num_classes = len(self.class_names) if self.class_names else None
        self.paths = read_image_list(root / list_name, root)
        self.labels = []
        for path in tqdm(self.paths, desc=f"reading labels of {list_name}", mininterval=2.0, leave=False,
                         disable=len(self.paths) < 5000):
            labels_file = label_path(path)
            self.labels.append(read_labels(labels_file, num_classes) if labels_file.is_file() else np.zeros((0, 5), np.float32))
        self.augmentation = DetectionAugmentation() if augment else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        index, size = item if isinstance(item, tuple) else (item, self.image_size)
        path = self.paths[index]
        image = tv_tensors.Image(F.pil_to_tensor(load_rgb_image(path)))
        height, width = image.shape[-2:]
        labels = torch.from_numpy(self.labels[index])
        cxcywh = labels[:, 1:] * torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = tv_tensors.BoundingBoxes(cxcywh, format="CXCYWH", canvas_size=(height, width), clamping_mode=None)
        sample = {"image": image, "boxes": F.convert_bounding_box_format(boxes, new_format="XYXY"), "labels": labels[:, 0]}
        sample = letterbox(sample, size)
        if self.augmentation is not None:
            sample = self.augmentation(sample)
        xyxy = sample["boxes"].as_subclass(torch.Tensor)
        cxcywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), dim=1) / size
        targets = torch.cat((sample["labels"].float().unsqueeze(1), cxcywh), dim=1)
        pixels = sample["image"].as_subclass(torch.Tensor).float().div_(255)
        return str(path), pixels, targets, (height, width)


def collate_detections(samples):
    """Samples → ``(paths, images, targets [N, 6] with the batch index first, original_sizes [B, 2])``."""
    paths, images, labels, sizes = zip(*samples)
    targets = [torch.cat((torch.full((len(rows), 1), float(i)), rows), dim=1) for i, rows in enumerate(labels)]
    return list(paths), torch.stack(images), torch.cat(targets), torch.tensor(sizes, dtype=torch.int64)


def multiscale_sizes(image_size: int) -> list[int]:
    return [s for s in range(image_size - MULTISCALE_RANGE, image_size + MULTISCALE_RANGE + 1, MULTISCALE_STEP) if s > 0]


class MultiscaleBatchSampler(Sampler[list]):
    """Groups ``sampler``'s indices into batches of ``(index, size)``; the size changes every
    ``every`` batches, drawn from ``sizes`` by a generator seeded with ``(seed, epoch, b // every)``.

    ``first_batch`` is the number of the first batch (when resuming mid-epoch), so that batch
    ``b`` gets the same size as in an uninterrupted run.
    """

    def __init__(self, sampler, batch_size: int, sizes: list[int], seed: int, epoch: int, first_batch: int = 0,
                 every: int = MULTISCALE_EVERY):
        self.sampler, self.batch_size, self.sizes = sampler, batch_size, list(sizes)
        self.seed, self.epoch, self.first_batch, self.every = seed, epoch, first_batch, every

    def size_of(self, batch_number: int) -> int:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + batch_number // self.every)
        return self.sizes[int(torch.randint(len(self.sizes), (), generator=generator))]

    def __iter__(self):
        batch, number = [], self.first_batch
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                size = self.size_of(number)
                yield [(i, size) for i in batch]
                batch, number = [], number + 1
        if batch:
            size = self.size_of(number)
            yield [(i, size) for i in batch]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


class COCODataloader(DataModule):
    """COCO (or any data in its list-file layout) for YOLO: letterboxed squares of ``image_size``.

    Training images are augmented (random scale/translation, flip, colour jitter) and, with
    ``multiscale``, resized per group of batches (see the module docstring); validation images
    are only letterboxed, to ``val_image_size`` (``image_size`` unless a callback sets it).
    """

    dataset_key = "coco"
    collate_fn = staticmethod(collate_detections)

    def __init__(self, batch_size: int, image_size: int = 640, multiscale: bool = True, num_workers: int = -1,
                 root: str | None = None):
        super().__init__(batch_size, num_workers, root)
        if not isinstance(image_size, int) or image_size < MULTISCALE_STEP or image_size % MULTISCALE_STEP:
            raise ValueError(f"image_size must be a positive multiple of {MULTISCALE_STEP}, got {image_size!r}")
        if multiscale and image_size - MULTISCALE_RANGE < MULTISCALE_STEP:
            raise ValueError(
                f"multiscale training needs image_size ≥ {MULTISCALE_RANGE + MULTISCALE_STEP} "
                f"(it goes down to image_size − {MULTISCALE_RANGE}), got {image_size}; set multiscale: false"
            )
        self.image_size, self.multiscale = image_size, multiscale
        self.val_image_size = image_size
        self.input_size = (3, image_size, image_size)

    @property
    def class_names(self) -> list[str] | None:
        return read_class_names(self.root)

    def build_train_dataset(self) -> COCODetection:
        return COCODetection(self.root, TRAIN_LIST, self.image_size, augment=True)

    def build_val_dataset(self) -> COCODetection:
        return COCODetection(self.root, VAL_LIST, self.val_image_size, augment=False)

    def set_val_image_size(self, size: int) -> None:
        """Letterbox validation images to ``size`` (the mAP metric's ``img_size``)."""
        self.val_image_size = size
        if "val_dataset" in self.__dict__:  # already built (cached_property)
            self.val_dataset.image_size = size

    def train_dataloader(self, epoch: int = 0, start_batch: int = 0, seed: int = 0) -> DataLoader:
        loader = super().train_dataloader(epoch, start_batch, seed)
        if not self.multiscale:
            return loader
        # The base class's loader (its sampler, seeds and worker setup), batched by size.
        batches = MultiscaleBatchSampler(
            loader.sampler, self.local_batch_size, multiscale_sizes(self.image_size), seed, epoch, start_batch
        )
        return WorkerSafeDataLoader(
            loader.dataset,
            batch_sampler=batches,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            generator=loader.generator,
            worker_init_fn=loader.worker_init_fn,
            persistent_workers=loader.persistent_workers,
        )
