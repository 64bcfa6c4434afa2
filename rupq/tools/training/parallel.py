"""Training on several devices: ``torch.nn.DataParallel`` and ``DistributedDataParallel``.

Three modes, chosen by how the command is started (:func:`choose_mode`):

- **single**: one process, one device (``--gpu 0`` picks a GPU; without CUDA the CPU);
- **data_parallel**: one process, several GPUs (``--gpu 0,1,…``): every step the model is
  replicated on each GPU, the batch cut into one shard per GPU and the gradients added up on
  the first;
- **distributed**: one process per GPU (or per CPU slot), on one or several machines, started
  by ``torchrun``, recognised by its ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables:
  ``DistributedDataParallel`` over NCCL (gloo on the CPU); each process loads its shard of
  every global batch (:meth:`~rupq.dataloaders.base.DataModule.distribute`).

In all three the config's ``batch_size`` is the global batch, so a config gives the same
training whatever the number of devices. The trainer keeps the unwrapped model next to the
wrapped one: checkpoints never carry DataParallel's or DDP's ``module.`` prefix and load in any
mode. Quantizers are initialised on the global first batch before wrapping (``Task.run``) and
then told that they see one shard of it (:mod:`rupq.quantizers.data_parallel`).
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from rupq.errors import ConfigError
from rupq.quantizers.data_parallel import shard_activation_quantizers

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def torchrun_ranks(environ: Mapping[str, str] = os.environ) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` of a process started by torchrun with more than one
    process in all; ``None`` for a plain start (or a torchrun of one process)."""
    if "WORLD_SIZE" not in environ:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if name not in environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start distributed runs with torchrun")
    try:
        rank, world_size, local_rank = (int(environ[name]) for name in TORCHRUN_VARIABLES)
    except ValueError:
        values = ", ".join(f"{name}={environ[name]!r}" for name in TORCHRUN_VARIABLES)
        raise ConfigError(f"torchrun variables must be integers, got {values}") from None
    if world_size <= 1:
        return None
    if not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(f"RANK {rank} / LOCAL_RANK {local_rank} do not fit WORLD_SIZE {world_size}")
    return rank, world_size, local_rank


def choose_mode(gpu: str | None, cuda_devices: int, environ: Mapping[str, str] = os.environ) -> str:
    """``distributed`` under torchrun, ``data_parallel`` for ``--gpu`` with several visible
    GPUs, ``single`` otherwise (``cuda_devices`` counts the GPUs visible after ``--gpu``)."""
    if torchrun_ranks(environ) is not None:
        return "distributed"
    if gpu and cuda_devices > 1:
        return "data_parallel"
    return "single"


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass
class Parallelism:
    """Where this process trains and how its model is wrapped (see the module docstring)."""

    mode: str
    device: torch.device
    rank: int = 0
    world_size: int = 1
    gpus: int = 1
    sync_bn: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The model to train with: ``model`` itself, or a DataParallel / DDP wrapper around it."""
        if self.mode == "data_parallel":
            shard_activation_quantizers(model, self.gpus)
            return nn.DataParallel(model)
        if self.mode == "distributed":
            if self.sync_bn:
                # Replaces the BatchNorm children in place, sharing their parameters and buffers,
                # so the optimizers built on ``model`` and its state dict keys stay valid.
                converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                if converted is not model:
                    raise ConfigError("--sync_bn: the model is a single BatchNorm layer; nothing to synchronize")
            shard_activation_quantizers(model, self.world_size, dist.group.WORLD)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return model

    def close(self) -> None:
        if self.mode == "distributed" and is_distributed():
            dist.destroy_process_group()


def setup_parallelism(gpu: str | None = None, sync_bn: bool = False, environ: Mapping[str, str] = os.environ) -> Parallelism:
    """Pick the mode and device; under torchrun also join the process group.

    ``--gpu`` must already be in ``CUDA_VISIBLE_DEVICES`` (main sets it before CUDA starts);
    under torchrun each process takes the visible GPU of its ``LOCAL_RANK``.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mode = choose_mode(gpu, gpus, environ)
    if gpu and not gpus:
        print(f"--gpu {gpu}: CUDA is not available, running on the CPU", flush=True)
    if mode != "distributed":
        if sync_bn:
            raise ConfigError(
                "--sync_bn synchronizes BatchNorm between the processes of a torchrun start "
                "(DistributedDataParallel); this run has a single process"
            )
        device = torch.device("cuda", 0) if gpus else torch.device("cpu")
        return Parallelism(mode, device, gpus=max(gpus, 1))
    rank, world_size, local_rank = torchrun_ranks(environ)
    if gpus:
        if local_rank >= gpus:
            raise ConfigError(
                f"process {rank} has LOCAL_RANK {local_rank} but this machine shows {gpus} GPU(s): "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        if sync_bn:
            raise ConfigError("--sync_bn needs GPUs: SyncBatchNorm does not run on the CPU")
    options = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, rank=rank, world_size=world_size, **options)
    return Parallelism(mode, device, rank, world_size, gpus=1, sync_bn=sync_bn)


def broadcast_from_main(value):
    """``value`` as the main process (rank 0) has it, on every process (plain picklable data)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def process_index() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a distributed run."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def gather_from_every_process(value) -> list:
    """``[value of rank 0, value of rank 1, …]`` on every process (plain picklable data)."""
    if not is_distributed():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def synchronize_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics …).

    DDP does the same at the start of each training forward; after an epoch's last step the
    processes' BatchNorm statistics still differ (each saw its own shard), and validation,
    callbacks and the checkpoint must all see one model.
    """
    if not is_distributed():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on at least one process; every process must call it together.

    A Ctrl-C or SIGTERM reaches each process at a slightly different moment: deciding together
    makes all of them stop after the same iteration (one process stopping alone would leave the
    others waiting for it in the next gradient all-reduce).
    """
    if not is_distributed():
        return flag
    packed = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    return bool(packed.item())


def process_seed(seed: int, rank: int, step: int) -> int:
    """A seed for process ``rank`` at iteration ``step``: different processes draw different
    augmentations and dropout masks, and a resumed run draws the same ones again."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
