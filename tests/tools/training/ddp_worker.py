"""``rupq/main.py`` for the distributed tests: same command line, plus a dump of each process's model.

Run as ``torchrun … ddp_worker.py --config … --logdir … [--then --config … --logdir …]`` (or with
plain ``python`` for one process): each ``--then`` starts one more run in the same processes,
which saves launching torch again. After each run every process writes
``<logdir>/state_rank{RANK}.pt`` (its unwrapped state dict as it holds it after the last step).
Configs may use ``tiny_convnet`` (``tiny_models.py``).
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

import tiny_models  # noqa: E402,F401  (registers tiny_convnet; this folder is on sys.path)
from rupq.main import main  # noqa: E402
from rupq.tools.training.parallel import Parallelism  # noqa: E402
from rupq.tools.training.trainer import Trainer  # noqa: E402


def fit_and_dump(trainer: Trainer) -> dict:
    logged = original_fit(trainer)
    logdir = trainer.log_dir.parent  # every process knows LOGDIR/version_N
    torch.save(trainer.model.state_dict(), logdir / f"state_rank{os.environ.get('RANK', '0')}.pt")
    return logged


def init_once(*args, **kwargs):
    if not dist.is_initialized():
        init_process_group(*args, **kwargs)


original_fit = Trainer.fit
Trainer.fit = fit_and_dump
# Several runs in one launch share one process group: re-creating it under torchrun is racy
# (its store still holds the previous group's addresses).
init_process_group = dist.init_process_group
dist.init_process_group = init_once
Parallelism.close = lambda self: None

if __name__ == "__main__":
    arguments = " ".join(sys.argv[1:]).split(" --then ")
    for run in arguments:
        main(run.split())
    if dist.is_initialized():
        dist.destroy_process_group()
