"""What every dataloader tag shares: dataset paths, batch sizes, workers and resumable sampling.

A dataloader tag (``!ImageNet2012Dataloader`` …) is a :class:`DataModule`: building it from a
config stores its arguments only; folders are opened when a loader is first requested.
"""

import os
from functools import cached_property
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler

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
        return DataLoader(
            dataset,
            batch_size=self.local_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=torch.cuda.is_available(),
            # Worker seeds come from this generator, not from the global RNG.
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=False,
        )

    def train_dataloader(self, epoch: int = 0, start_batch: int = 0, seed: int = 0) -> DataLoader:
        sampler = EpochSampler(
            len(self.train_dataset), seed, epoch, True, start_batch * self.local_batch_size, self.rank, self.world_size
        )
        # Worker seeds differ per rank (independent augmentations on every process); rank 0 keeps
        # the single-process seeds.
        return self._loader(self.train_dataset, sampler, (seed * 1_000_003 + epoch) ^ (self.rank << 40))

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
