"""``rupq/main.py`` for the distributed tests, with two callback tags their configs can name.

Run as ``torchrun … ddp_worker.py --config … --logdir …``: the command line's own ``main``,
one run per launch, so every run joins its process group and tears it down as a user's run
does. Nothing of rupq is replaced; the two callbacks below are registered as config tags the
way docs/configs.md says a tag is added (a class in a tag package's ``__all__``):

- ``!DumpProcessState``: when training ends, every process writes its unwrapped state dict as
  it holds it then to ``<logdir>/state_rank{RANK}.pt`` (only rank 0 writes checkpoints, and
  the tests compare the processes with each other);
- ``!SigtermAtEpochStart {epoch: E}``: at the start of epoch ``E`` (1-based) every process
  sends itself SIGTERM, as torchrun forwards a job scheduler's SIGTERM to its processes; the
  run then stops after the first iteration of that epoch, at a point the test chose.

Configs may use ``tiny_convnet`` (``tiny_models.py``).
"""

import os
import signal
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

import tiny_models  # noqa: E402,F401  (registers tiny_convnet; this folder is on sys.path)
import rupq.tools.callbacks as callback_tags  # noqa: E402
from rupq.main import main  # noqa: E402
from rupq.tools.callbacks import Callback  # noqa: E402


class DumpProcessState(Callback):
    def on_fit_end(self, trainer) -> None:
        logdir = trainer.log_dir.parent  # every process knows LOGDIR/version_N
        torch.save(trainer.model.state_dict(), logdir / f"state_rank{os.environ.get('RANK', '0')}.pt")


class SigtermAtEpochStart(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer) -> None:
        if trainer.epoch + 1 == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


for tag in (DumpProcessState, SigtermAtEpochStart):
    setattr(callback_tags, tag.__name__, tag)
    callback_tags.__all__.append(tag.__name__)

if __name__ == "__main__":
    main(sys.argv[1:])
