"""Command line: ``rupq train --config CFG --logdir DIR [--load MODEL] [--checkpoint_path CKPT] [--gpu 0,1]
[--set KEY=VALUE …] [--fast-dev-run [N]]`` (also ``python rupq/main.py …`` and ``python -m rupq train …``).

Several GPUs in one process: ``--gpu 0,1`` (DataParallel). One process per GPU, on one or several
machines: ``torchrun --nproc_per_node N [--nnodes M …] rupq/main.py …`` (DistributedDataParallel,
see :mod:`rupq.tools.training.parallel`).

config → objects → ``Task.run``. Errors in the user's input are printed as one line and exit
with status 2 (``--debug`` shows the traceback).
"""

import argparse
import gc
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

# `import rupq` needs the package installed (`pip install -e .`, see the README).
from rupq.config_text import effective_config_text
from rupq.errors import ConfigError, RupqError, TrainingInterrupted  # no torch import yet: --gpu comes first


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rupq train", description="Train or quantize a model from a YAML config.")
    parser.add_argument("--config", required=True, help="YAML config (see rupq/examples)")
    parser.add_argument("--logdir", required=True, help="runs go to LOGDIR/version_N (next free N)")
    parser.add_argument("--load", help="model.ckpt of an earlier run, or torchvision:NAME / timm:NAME: the published "
                        "weights, from the local cache (nothing is downloaded)")
    parser.add_argument("--checkpoint_path", help="resume from a training checkpoint (LOGDIR/version_N/checkpoints/last.ckpt)")
    parser.add_argument("--gpu", help="visible CUDA devices, e.g. 0 or 0,1 (several: DataParallel; under torchrun, "
                        "the devices the processes of each machine take by LOCAL_RANK)")
    parser.add_argument("--sync_bn", action="store_true",
                        help="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, GPUs only)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="compile the model with torch.compile for training and validation (the Task's `compile: true`)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                        help="mixed precision under torch.autocast (the Task's `precision`; quantizers stay float32)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="change the config before it is built: a dotted path and a YAML value, e.g. "
                        "--set task.epochs=1 dataset.batch_size=64 (repeatable)")
    parser.add_argument("--fast-dev-run", metavar="N", nargs="?", type=int, const=2, default=None,
                        help="check that the config runs end to end: one epoch of N (default 2) training and N "
                        "validation batches with every callback; writes nothing to LOGDIR")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return parser.parse_args(argv)


def next_version_dir(logdir: Path) -> Path:
    """Create and return ``logdir/version_N`` for the first N not taken; never reuse one."""
    if logdir.exists() and not logdir.is_dir():
        raise ConfigError(f"--logdir {logdir} is a file, not a folder")
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a parent that is a file, no permission, read-only disk
        raise ConfigError(f"cannot create --logdir {logdir}: {error.strerror or error}") from None
    taken = [int(p.name[8:]) for p in logdir.glob("version_*") if p.name[8:].isdigit()]
    number = max(taken, default=-1) + 1
    while True:
        candidate = logdir / f"version_{number}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # another run took it meanwhile
            number += 1
        except OSError as error:
            raise ConfigError(f"cannot create {candidate}: {error.strerror or error}") from None


def make_version_dir(args: argparse.Namespace, parallel) -> Path:
    """The main process creates ``LOGDIR/version_N`` and writes the effective config; all get its path.

    A fast dev run writes to a temporary folder instead (deleted when it ends): nothing in LOGDIR,
    so no later run reuses a checkpoint or a version number of it.
    """
    from rupq.tools.training.parallel import broadcast_from_main

    created, failure = None, None
    if parallel.is_main:
        try:
            if args.fast_dev_run is not None:
                created = Path(tempfile.mkdtemp(prefix="rupq-fast-dev-run-"))
                print(f"fast dev run: writing to {created} (deleted at the end), nothing to {args.logdir}", flush=True)
            else:
                created = next_version_dir(Path(args.logdir))
                print(f"writing to {created}", flush=True)
            (created / "config.yaml").write_text(effective_config_text(args.config, args.overrides))
        except Exception as error:  # raised after the broadcast, so no process waits forever
            failure = error
    path = broadcast_from_main(None if created is None else str(created))
    if failure is not None:
        raise failure
    if path is None:
        sys.exit(2)  # the main process failed and reports why
    return Path(path)


def run(args: argparse.Namespace) -> Path:
    from rupq.config import load_config
    from rupq.config_locations import location_of
    from rupq.tags import ConfigCaseWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigCaseWarning)
        config = load_config(args.config, args.overrides)
    # Imported once the config has loaded: a missing file or a YAML typo is reported without
    # the seconds of importing torch (a config's tags import it when they build objects).
    from rupq.tools.training.parallel import setup_parallelism
    from rupq.tools.training.task import RunContext, Task

    for warning in caught:  # one line each, like the errors (not Python's "file:line: Category" form)
        if issubclass(warning.category, ConfigCaseWarning):
            print(f"warning: {warning.message}", file=sys.stderr, flush=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    task = config.get("task")
    if not isinstance(task, Task):
        found = "nothing" if task is None else type(task).__name__
        raise ConfigError(f"the config needs a top-level `task: !Task`, found {found}", args.config)
    if args.fast_dev_run is not None and args.fast_dev_run < 1:
        raise ConfigError(f"--fast-dev-run {args.fast_dev_run}: the number of batches must be at least 1")
    parallel = setup_parallelism(args.gpu, args.sync_bn)
    version_dir = None
    try:
        version_dir = make_version_dir(args, parallel)
        context = RunContext(
            version_dir=version_dir, device=parallel.device, load=args.load, checkpoint_path=args.checkpoint_path,
            rank=parallel.rank, world_size=parallel.world_size, wrap_model=parallel.wrap_model,
            compile=args.compile, precision=args.precision,
            overrides=list(args.overrides), fast_dev_run=args.fast_dev_run,
        )
        try:
            task.run(context)
        except ConfigError as error:  # found while running (optimizers, model_arch …): point at the task at least
            raise error.at(location_of(task))
    finally:
        parallel.close()
        if args.fast_dev_run is not None and parallel.is_main and version_dir is not None:
            shutil.rmtree(version_dir, ignore_errors=True)
    return version_dir


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu  # before torch initialises CUDA
    try:
        run(args)
        return
    except RupqError as error:
        if args.debug:
            if error.worker_traceback:  # raised in a DataLoader worker: show where
                print(error.worker_traceback, file=sys.stderr)
            raise
        message, status = f"error: {error}", 2
    except TrainingInterrupted as interrupted:
        message, status = str(interrupted), 130
    # Exit outside the except blocks: the exception's frames, and the DataLoader iterators they
    # hold, are released first, so worker processes are shut down in order instead of being
    # killed at interpreter exit (which PyTorch reports with a traceback).
    gc.collect()
    print(message, file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
