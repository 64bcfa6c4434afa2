"""``rupq/main.py`` with three callback tags, for the tests that start runs of their own.

Run as ``torchrun … callback_main.py --config … --logdir …`` (the distributed tests) or
``python callback_main.py …`` (the compiled-run test): the command line's own ``main``, one run
per process launch, so every run joins its process group and tears it down as a user's run
does. Nothing of rupq is replaced; the callbacks below are registered as config tags the way
docs/configs.md says a tag is added (a class in a tag package's ``__all__``):

- ``!DumpProcessState``: when training ends, every process writes its unwrapped state dict as
  it holds it then to ``<logdir>/state_rank{RANK}.pt`` (only rank 0 writes checkpoints, and
  the tests compare the processes with each other);
- ``!SigtermAtEpochStart {epoch: E}``: at the start of epoch ``E`` (1-based) every process
  sends itself SIGTERM, as torchrun forwards a job scheduler's SIGTERM to its processes; the
  run then stops after the first iteration of that epoch, at a point the test chose;
- ``!CopyCheckpointAtEpochStart {epoch: E}``: at the start of epoch ``E`` the main process
  copies ``checkpoints/last.ckpt`` (written when epoch ``E - 1`` ended), if the run wrote one, to
  ``checkpoints/before_epoch_E.ckpt``: what a run stopped between the two epochs leaves, without
  a second run to stop.

Configs may use ``tiny_convnet`` (``tiny_models.py``).
"""

import os
import shutil
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


class CopyCheckpointAtEpochStart(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer) -> None:
        # A run resumed at epoch E has written no checkpoint of its own yet: nothing to copy.
        if trainer.epoch + 1 == self.epoch and trainer.is_main and trainer.checkpoint_path.is_file():
            shutil.copyfile(trainer.checkpoint_path, trainer.checkpoint_path.with_name(f"before_epoch_{self.epoch}.ckpt"))


for tag in (DumpProcessState, SigtermAtEpochStart, CopyCheckpointAtEpochStart):
    setattr(callback_tags, tag.__name__, tag)
    callback_tags.__all__.append(tag.__name__)

if __name__ == "__main__":
    main(sys.argv[1:])
