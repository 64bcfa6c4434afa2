"""What every dataloader tag shares: dataset paths, batch sizes, workers and resumable sampling.

A dataloader tag (``!ImageNet2012Dataloader`` …) is a :class:`DataModule`: building it from a
config stores its arguments only; folders are opened when a loader is first requested.
"""

import os
import random
import signal
import sys
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from tqdm import tqdm

from rupq.errors import DataError

DATASETS_INFO_ENV = "RUPQ_DATASETS_INFO"
DEFAULT_DATASETS_INFO = Path(__file__).with_name("datasets_info.yaml")


def datasets_info_path() -> Path:
    return Path(os.environ.get(DATASETS_INFO_ENV) or DEFAULT_DATASETS_INFO)


def dataset_root(key: str, root=None, tag: str = "dataloader") -> Path:
    """The folder of dataset ``key``: ``root`` if given, else the datasets-info file's entry."""
    how = (
        f"set '{key}:' in {datasets_info_path()}, point {DATASETS_INFO_ENV} at a file of your own, "
        f"or give !{tag} a root: argument"
    )
    if root is None:
        info_path = datasets_info_path()
        try:
            info = yaml.safe_load(info_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise DataError(f"cannot read datasets-info file {info_path}: {error}") from None
        if not isinstance(info, dict) or key not in info or not info[key]:
            raise DataError(f"dataset '{key}' has no path in {info_path}; {how}")
        root = Path(os.path.expanduser(str(info[key])))
        if not root.is_absolute():
            root = info_path.parent / root
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset '{key}': folder {root} does not exist; {how}")
    if not any(root.iterdir()):
        raise DataError(f"dataset '{key}': folder {root} is empty; {how}")
    return root


def default_num_workers(num_workers: int) -> int:
    return min(os.cpu_count() or 1, 8) if num_workers < 0 else num_workers


def ignore_interrupts(worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader: workers ignore Ctrl-C and die of SIGTERM.

    Ctrl-C reaches every process of the terminal's process group. The main process answers it by
    finishing the iteration and writing a resumable checkpoint; a worker that died of the same
    signal would make the main process fail with "DataLoader worker exited unexpectedly" instead.
    SIGTERM gets its default action back: a worker forked while the trainer listens for SIGTERM
    inherits that handler, and would then survive the SIGTERM with which PyTorch and
    multiprocessing end workers, leaving the main process waiting for it at exit.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class WorkerSafeDataLoader(DataLoader):
    """A ``DataLoader`` whose worker processes are shut down as soon as iterating it raises
    (a worker's :class:`DataError`, Ctrl-C), before the error goes on.

    Left to the garbage collector, the iterator of a failed epoch is finalized in one sweep with
    its queues, whose feeder threads then close pipes already closed: on Python 3.12, a
    ``QueueFeederThread`` traceback after the one-line error. Shutting down here keeps torch's order.
    """

    def __iter__(self):
        iterator = super().__iter__()
        try:
            yield from iterator
        except BaseException:
            shutdown = getattr(iterator, "_shutdown_workers", None)  # iterators with worker processes
            if shutdown is not None:
                shutdown()
            raise


def load_rgb_image(path) -> Image.Image:
    """An image file as an RGB PIL image; an unreadable or corrupt file raises :class:`DataError` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as error:  # PIL reports corrupt files as OSError, SyntaxError, ValueError, struct.error …
        reason = str(error).replace(str(path), "").strip(" '\":") or type(error).__name__
        raise DataError(f"cannot read image {path}: {reason}") from error  # the cause, for --debug


class CorruptFileGuard(Dataset):
    """``dataset`` whose unreadable samples either stop the run or, with ``skip``, are skipped.

    ``dataset[i]`` must raise :class:`DataError` naming the file when a sample cannot be read
    (:func:`load_rgb_image` does). Without ``skip`` the error says how to skip such files. With
    ``skip`` the next readable sample (``i + 1``, ``i + 2`` …) takes its place, so batches keep
    their size and the data order stays deterministic, and a warning names the file and counts
    the files skipped so far. Known corrupt indices are kept in shared memory, so DataLoader
    workers and later epochs skip them without reading them again and the count covers all.
    Other attributes (``classes`` …) are those of ``dataset``.
    """

    def __init__(self, dataset: Dataset, skip: bool, owner: str):
        self.dataset, self.skip, self.owner = dataset, bool(skip), owner
        self.corrupt = torch.zeros(len(dataset), dtype=torch.bool).share_memory_() if self.skip else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":  # not set yet (unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def skipped(self) -> int:
        """How many files were found unreadable so far (in any process)."""
        return int(self.corrupt.sum()) if self.corrupt is not None else 0

    def __getitem__(self, item):
        index, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, None)
        size = len(self.dataset)
        for offset in range(size):
            candidate = (index + offset) % size
            if self.corrupt is not None and self.corrupt[candidate]:
                continue
            try:
                return self.dataset[candidate if rest is None else (candidate, *rest)]
            except DataError as error:
                if not self.skip:
                    raise DataError(f"{error}; give !{self.owner} skip_corrupt: true to skip unreadable files") from error
                self.corrupt[candidate] = True
                tqdm.write(f"warning: skipping {error} ({self.skipped} unreadable file(s) skipped so far)",
                           file=sys.stderr)
        raise DataError(f"!{self.owner}: none of the {size} samples can be read")


MASK64 = 2**64 - 1


def sample_seed(seed: int, index: int) -> int:
    """A 64-bit seed for sample ``index`` of an epoch seeded ``seed`` (SplitMix64's finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class SeededSamples(Dataset):
    """``dataset[i]`` whose random augmentation, in a DataLoader worker, is seeded from ``(seed, i)``.

    Augmentations draw from the global generators (torch, ``random``, numpy). Inside workers those
    streams depend on which worker gets a batch and on how much it drew before, and both change
    when a run resumes in the middle of an epoch (the loader then numbers the remaining batches
    from 0) or when ``num_workers`` changes. Seeding the generators before each sample makes its
    augmentation depend on the epoch's seed and its index only, so a resumed run sees exactly the
    samples the interrupted one would have seen. With ``num_workers: 0`` the samples draw from
    the main process's generators, which are saved in every checkpoint, and nothing is reseeded.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item):
        if get_worker_info() is not None:
            value = sample_seed(self.seed, item[0] if isinstance(item, tuple) else item)
            torch.default_generator.manual_seed(value)
            random.seed(value)
            np.random.seed(value & 0xFFFF_FFFF)
        return self.dataset[item]


class EpochSampler(Sampler[int]):
    """Shuffled indices that depend only on ``(seed, epoch)``.

    Resuming in the middle of an epoch starts at ``start`` and yields exactly the indices the
    interrupted run had not consumed yet. With ``world_size > 1`` each rank takes every
    ``world_size``-th index of the same (padded) permutation, as ``DistributedSampler`` does.
    """

    def __init__(self, size, seed=0, epoch=0, shuffle=True, start=0, rank=0, world_size=1, pad=True):
        self.size, self.seed, self.epoch, self.shuffle = size, seed, epoch, shuffle
        self.start, self.rank, self.world_size, self.pad = start, rank, world_size, pad

    def indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.world_size > 1:
            padding = (-len(order)) % self.world_size if self.pad else 0
            order = (order + order[:padding])[self.rank :: self.world_size]
        return order[self.start :]

    def __iter__(self):
        return iter(self.indices())

    def __len__(self):
        return len(self.indices())


class DataModule:
    """Base of the dataloader tags; subclasses build ``train_dataset`` / ``val_dataset``."""

    dataset_key: str = ""
    collate_fn = None
    #: ``(C, H, W)`` of the inputs the model is fed (validation side), for the exporter; None
    #: when the data module cannot tell.
    input_size: tuple[int, int, int] | None = None

    def __init__(self, batch_size: int, num_workers: int = -1, root: str | None = None):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.num_workers = default_num_workers(num_workers)
        self.root_argument = root
        self.rank, self.world_size = 0, 1

    @cached_property
    def root(self) -> Path:
        return dataset_root(self.dataset_key, self.root_argument, type(self).__name__)

    def build_train_dataset(self) -> Dataset:
        raise NotImplementedError

    def build_val_dataset(self) -> Dataset:
        raise NotImplementedError

    @cached_property
    def train_dataset(self) -> Dataset:
        return self.build_train_dataset()

    @cached_property
    def val_dataset(self) -> Dataset:
        return self.build_val_dataset()

    def distribute(self, rank: int, world_size: int) -> None:
        """Split the global ``batch_size`` across ``world_size`` processes."""
        if self.batch_size % world_size:
            raise DataError(f"batch_size {self.batch_size} is not divisible by the {world_size} processes")
        self.rank, self.world_size = rank, world_size

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def _loader(self, dataset, sampler, seed) -> DataLoader:
        return WorkerSafeDataLoader(
            dataset,
            batch_size=self.local_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=torch.cuda.is_available(),
            # Worker seeds come from this generator, not from the global RNG.
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=False,
            worker_init_fn=ignore_interrupts,
        )

    def train_dataloader(self, epoch: int = 0, start_batch: int = 0, seed: int = 0) -> DataLoader:
        sampler = EpochSampler(
            len(self.train_dataset), seed, epoch, True, start_batch * self.local_batch_size, self.rank, self.world_size
        )
        # Seeds differ per rank (independent augmentations on every process); rank 0 keeps
        # the single-process seeds.
        epoch_seed = (seed * 1_000_003 + epoch) ^ (self.rank << 40)
        return self._loader(SeededSamples(self.train_dataset, epoch_seed), sampler, epoch_seed)

    def calibration_batch(self, seed: int = 0):
        """The first training batch of epoch 0 at the global batch size, the same on every process."""
        sampler = EpochSampler(len(self.train_dataset), seed, 0, True)
        loader = DataLoader(
            self.train_dataset, batch_size=self.batch_size, sampler=sampler, num_workers=0,
            collate_fn=self.collate_fn,
        )
        return next(iter(loader))

    def val_dataloader(self) -> DataLoader:
        # No padding: every validation sample is seen exactly once across processes.
        sampler = EpochSampler(
            len(self.val_dataset), shuffle=False, rank=self.rank, world_size=self.world_size, pad=False
        )
        return self._loader(self.val_dataset, sampler, 0)
