"""The shared training engine: epochs, optimizer steps, validation, logging, checkpoints, callbacks.

Every task runs through :class:`Trainer`; a task's :class:`~rupq.tools.training.loops.TrainingLoop`
only says what one step does. Each optimizer and each scheduler steps once per iteration.
A resumable checkpoint is written after every epoch and when the run is interrupted
(Ctrl-C, SIGTERM); resuming from it continues at the same iteration with the same RNG states.
"""

import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from rupq.errors import RupqError, TrainingInterrupted
from rupq.tools.metrics.base import Metric
from rupq.tools.training.loops import TrainingLoop, move_to
from rupq.tools.training.parallel import any_process, gather_from_every_process, process_index, synchronize_buffers
from rupq.tools.utils.checkpoint import TRAINING_FORMAT, save_atomic


class NonFiniteLoss(RupqError):
    """The loss became NaN or infinite: training stops instead of learning garbage."""


def rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    name, keys, *more = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *more))


class _StopRequests:
    """Turns SIGINT/SIGTERM into a flag checked between iterations; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"\n{signal.Signals(signum).name} received: finishing this iteration and writing a checkpoint")

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Trainer:
    """Runs ``epochs`` of ``training_loop`` on ``model`` (see ``Callback`` for what callbacks see)."""

    def __init__(
        self,
        model: nn.Module,
        training_loop: TrainingLoop,
        optimizers: dict,
        epochs: int,
        device: torch.device,
        callbacks=(),
        log_dir: Path | None = None,
        check_val_every_n_epochs: int = 1,
        seed: int = 0,
        build_model_checkpoint=None,
        train_model: nn.Module | None = None,
        is_main: bool = True,
        precision: str = "fp32",
        limit_batches: int | None = None,
        log_every_n_steps: int = 50,
    ):
        self.model = model
        self.train_model = model if train_model is None else train_model  # DataParallel/DDP wrapper, compiled model
        self.training_loop = training_loop
        self.optimizers = optimizers
        self.epochs = epochs
        self.device = device
        self.callbacks = list(callbacks)
        self.log_dir = Path(log_dir) if log_dir else None
        self.check_val_every_n_epochs = check_val_every_n_epochs
        self.seed = seed
        self.build_model_checkpoint = build_model_checkpoint  # () -> the model.ckpt dict (task.model_checkpoint)
        self.is_main = is_main
        # Mixed precision: the forward pass (and loss) under autocast; fp16 also scales the loss
        # so that small gradients do not underflow (bf16 has float32's exponent range).
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.grad_scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        # At most this many training and validation batches per epoch (--fast-dev-run); None: all.
        self.limit_batches = limit_batches
        self.log_every_n_steps = log_every_n_steps
        self.epoch = 0
        self.start_batch = 0
        self.global_step = 0
        self.logged: dict[str, float] = {}
        # Running sums of the epoch an interrupted run stopped in, one entry per process.
        self.interrupted_epoch_sums: list[dict] | None = None
        # Whether load_state_dict gave every process its own random streams back.
        self.restored_every_process_rng = False
        self._writer = None
        self._stop = _StopRequests()
        self._config_logged = False

    # ---- logging (main process only) -------------------------------------------------------
    @property
    def writer(self):
        if self._writer is None and self.is_main and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir))
        return self._writer

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        self.logged[name] = float(value)
        if self.writer is not None:
            self.writer.add_scalar(name, float(value), self.epoch + 1 if step is None else step)

    @property
    def should_log_step(self) -> bool:
        """Whether the step just taken is one to log (every ``log_every_n_steps``, main process only)."""
        return self.writer is not None and self.global_step % self.log_every_n_steps == 0

    def log_step_scalar(self, name: str, value: float) -> None:
        """``step/<name>`` against the global step, for curves inside an epoch (not in ``logged``)."""
        if self.writer is not None:
            self.writer.add_scalar(f"step/{name}", float(value), self.global_step)

    def _log_step(self, loss_value: float, metrics: dict) -> None:
        self.log_step_scalar("train_target_loss", loss_value)
        for name, metric in metrics.items():  # the epoch's running value, as the progress bar shows it
            self.log_step_scalar(f"train_{name}", metric.compute())
        for name, (optimizer, _) in self.optimizers.items():
            self.log_step_scalar(f"lr/{name}", optimizer.param_groups[0]["lr"])

    def _log_config(self) -> None:
        """The run's effective config (``config.yaml`` beside the event files) in TensorBoard's text tab."""
        config = self.log_dir / "config.yaml" if self.log_dir is not None else None
        if self.writer is not None and config is not None and config.is_file():
            # Indented four spaces: a code block in TensorBoard's markdown, so YAML keeps its layout.
            text = "\n".join("    " + line for line in config.read_text().splitlines())
            self.writer.add_text("config", text, self.global_step)

    def log_figure(self, tag: str, figure) -> None:
        if self.writer is not None:
            self.writer.add_figure(tag, figure, self.epoch + 1)

    def log_text(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    @property
    def is_last_epoch(self) -> bool:
        return self.epoch == self.epochs - 1

    def _call(self, hook: str) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self)

    # ---- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.log_dir / "checkpoints" / "last.ckpt" if self.log_dir else None

    def state_dict(self, epoch: int, batch: int, every_process_rng: list[dict] | None = None,
                   epoch_sums: list[dict] | None = None) -> dict:
        return {
            "format": TRAINING_FORMAT,
            "model": self.build_model_checkpoint(),
            "optimizers": {name: opt.state_dict() for name, (opt, _) in self.optimizers.items()},
            "optimizer_types": {name: type(opt).__name__ for name, (opt, _) in self.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, (_, s) in self.optimizers.items() if s is not None},
            "epoch": epoch,
            "batch": batch,
            "global_step": self.global_step,
            # One entry per process (rank order): a run resumed on as many processes continues
            # each process's own random streams (augmentations, dropout).
            "rng": every_process_rng or [rng_state()],
            "callbacks": [callback.state_dict() for callback in self.callbacks],
            "logged": dict(self.logged),
            "grad_scaler": self.grad_scaler.state_dict(),
            "epoch_sums": epoch_sums,
        }

    def save_checkpoint(self, epoch: int, batch: int, epoch_sums: list[dict] | None = None) -> None:
        """Called by every process together (it gathers their RNG states); the main one writes."""
        every_process_rng = gather_from_every_process(rng_state())
        if self.is_main and self.checkpoint_path is not None:
            save_atomic(self.state_dict(epoch, batch, every_process_rng, epoch_sums), self.checkpoint_path)

    def load_state_dict(self, state: dict) -> None:
        """Restore everything but the model (which the task loaded already).

        A checkpoint whose optimizers do not fit the config's (other names, classes, schedulers or
        parameter groups) is a ``RupqError`` that says what differs, not a traceback from torch.
        """
        saved, configured = sorted(state["optimizers"]), sorted(self.optimizers)
        if saved != configured:
            raise RupqError(f"the checkpoint's optimizers are {', '.join(saved)}; the config's are {', '.join(configured)}")
        for name, (optimizer, scheduler) in self.optimizers.items():
            saved_type = state.get("optimizer_types", {}).get(name, type(optimizer).__name__)
            if saved_type != type(optimizer).__name__:
                raise RupqError(f"optimizer '{name}' is {saved_type} in the checkpoint but {type(optimizer).__name__} in the config")
            if (scheduler is not None) != (name in state["schedulers"]):
                where = "the config" if scheduler is not None else "the checkpoint"
                raise RupqError(f"optimizer '{name}' has a scheduler only in {where}")
            groups = [len(group["params"]) for group in state["optimizers"][name]["param_groups"]]
            current = [len(group["params"]) for group in optimizer.param_groups]
            if groups != current:
                raise RupqError(
                    f"optimizer '{name}' trained {sum(groups)} parameter tensors in the checkpoint but gets "
                    f"{sum(current)} from the config: another model, model_parser or model_params_type"
                )
            try:
                optimizer.load_state_dict(state["optimizers"][name])
                if scheduler is not None:
                    scheduler.load_state_dict(state["schedulers"][name])
            except (ValueError, KeyError) as error:
                raise RupqError(f"optimizer '{name}': the checkpoint's state does not fit: {error}") from None
        self.epoch, self.start_batch, self.global_step = state["epoch"], state["batch"], state["global_step"]
        self.logged = dict(state.get("logged", {}))
        if state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.interrupted_epoch_sums = state.get("epoch_sums")
        for callback, callback_state in zip(self.callbacks, state.get("callbacks", [])):
            callback.load_state_dict(callback_state)
        every_process_rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # older: rank 0's
        rank, world_size = process_index()
        self.restored_every_process_rng = len(every_process_rng) == world_size
        set_rng_state(every_process_rng[rank] if self.restored_every_process_rng else every_process_rng[0])

    # ---- the loop ---------------------------------------------------------------------------
    def fit(self) -> dict:
        started = time.time()
        with self._stop:
            self._call("on_fit_start")
            for epoch in range(self.epoch, self.epochs):
                self.epoch = epoch
                self.train_epoch(self.start_batch)
                self.start_batch = 0
                if (epoch + 1) % self.check_val_every_n_epochs == 0:
                    self.validate()
                self.save_checkpoint(epoch + 1, 0)
            self._call("on_fit_end")
        if self._writer is not None:
            self._writer.flush()
        self.logged["time_s"] = time.time() - started
        return self.logged

    def _batches(self, loader) -> int:
        return len(loader) if self.limit_batches is None else min(len(loader), self.limit_batches)

    def _metric_postfix(self, loss_sum: float, steps: int, metrics: dict) -> dict:
        postfix = {"loss": f"{loss_sum / max(steps, 1):.4g}"}
        for name, metric in list(metrics.items())[:2]:
            value = metric.compute()
            if not math.isnan(value):
                postfix[name] = f"{value:.4g}"
        return postfix

    def train_epoch(self, start_batch: int = 0) -> None:
        loop = self.training_loop
        self.train_model.train()
        for metric in loop.train_metrics.values():
            metric.reset()
        self._call("on_train_epoch_start")
        loader = loop.dataset.train_dataloader(epoch=self.epoch, start_batch=start_batch, seed=self.seed)
        progress = tqdm(
            loader,
            desc=f"epoch {self.epoch + 1}/{self.epochs} train",
            total=self._batches(loader),
            disable=not self.is_main,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        loss_sum, steps = self._resume_epoch_sums(loop.train_metrics) if start_batch else (0.0, 0)
        for batch_index, batch in enumerate(progress, start=start_batch):
            loss_value = self._train_step(move_to(batch, self.device), batch_index)
            loss_sum, steps = loss_sum + loss_value, steps + 1
            if self.should_log_step:
                self._log_step(loss_value, loop.train_metrics)
            self._call("on_train_batch_end")
            if self.is_main and (steps % 10 == 0 or batch_index + 1 == len(loader) + start_batch):
                progress.set_postfix(self._metric_postfix(loss_sum, steps, loop.train_metrics), refresh=False)
            # Decided together, after the iteration in which the signal arrived (a second
            # reduction: read with the loss check before the step, a signal would stop the run one
            # iteration later, or after a forward pass that had already moved BatchNorm and σ EMAs).
            if any_process(self._stop.requested, self.device):
                self._interrupt(batch_index, loss_sum, steps)
            if steps == self.limit_batches:
                break
        progress.close()
        self._end_train_epoch(loss_sum, steps)

    def _train_step(self, batch, batch_index: int) -> float:
        """One optimisation step on ``batch``; its loss. A non-finite loss on any process stops the
        run before the step, so that the checkpoints on disk (written at epoch ends) stay good."""
        loop = self.training_loop
        with self._autocast():
            output = loop.training_step(self.train_model, batch)
        loss_value = output.loss.item()
        # Decided together: a process stopping alone would leave the others waiting for it.
        if any_process(not math.isfinite(loss_value), self.device):
            checkpoint = self.checkpoint_path
            kept = (f"the last good checkpoint is {checkpoint}" if checkpoint is not None and checkpoint.is_file()
                    else "no checkpoint had been written yet")
            value = loss_value if not math.isfinite(loss_value) else "non-finite on another process"
            raise NonFiniteLoss(f"loss is {value} at epoch {self.epoch + 1}, iteration {batch_index + 1}: stopping; {kept}")
        for optimizer, _ in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(output.loss).backward()
        for optimizer, scheduler in self.optimizers.values():
            self.grad_scaler.step(optimizer)
            if scheduler is not None:
                scheduler.step()
        self.grad_scaler.update()
        self.global_step += 1
        with torch.no_grad():
            for metric in loop.train_metrics.values():
                metric.update(output.preds.detach(), output.targets)
        return loss_value

    def _interrupt(self, batch_index: int, loss_sum: float, steps: int) -> None:
        """Ctrl-C / SIGTERM: a checkpoint that resumes after this iteration, then stop."""
        metrics = self.training_loop.train_metrics
        sums = {"loss_sum": loss_sum, "steps": steps,
                "metrics": {name: metric.state_dict() for name, metric in metrics.items()
                            if isinstance(metric, Metric)}}  # other metrics restart at the resume
        self.save_checkpoint(self.epoch, batch_index + 1, gather_from_every_process(sums))
        raise TrainingInterrupted(self.checkpoint_path)

    def _end_train_epoch(self, loss_sum: float, steps: int) -> None:
        synchronize_buffers(self.model)
        if not self._config_logged:
            # After the first epoch of this run, not before it: a SummaryWriter opened before the
            # first DataLoader workers were forked made their shutdown after a worker error stall
            # and print tracebacks (tests/reliability/test_data_errors.py).
            self._log_config()
            self._config_logged = True
        self._log_epoch("train", loss_sum, steps, self.training_loop.train_metrics)
        for name, (optimizer, _) in self.optimizers.items():
            self.log_scalar(f"lr/{name}", optimizer.param_groups[0]["lr"])
        self._call("on_train_epoch_end")

    def _resume_epoch_sums(self, metrics: dict) -> tuple[float, int]:
        """Continue the interrupted epoch's loss sum, step count and metric sums, so that the
        epoch's logged values are those of a run never interrupted. Each process takes its own
        sums; resumed on another number of processes, the first takes them all (the values
        logged at the end of the epoch are sums over the processes either way)."""
        every_process, self.interrupted_epoch_sums = self.interrupted_epoch_sums or [], None
        rank, world_size = process_index()
        if len(every_process) == world_size:
            mine = [every_process[rank]]
        else:
            mine = every_process if rank == 0 else []
        for name, metric in metrics.items():
            if not isinstance(metric, Metric):
                continue
            totals: dict = {}
            for sums in mine:
                for key, value in sums["metrics"].get(name, {}).items():
                    totals[key] = totals[key] + value if key in totals else value
            metric.load_state_dict(totals)
        return sum(sums["loss_sum"] for sums in mine), sum(sums["steps"] for sums in mine)

    def _log_epoch(self, split: str, loss_sum: float, steps: int, metrics: dict) -> None:
        if steps:
            self.log_scalar(f"{split}_target_loss", self._reduce_mean(loss_sum, steps))
        for name, metric in metrics.items():
            if hasattr(metric, "sync"):
                metric.sync()
            self.log_scalar(f"{split}_{name}", metric.compute())
        summary = ", ".join(f"{k}={v:.4g}" for k, v in self.logged.items() if k.startswith(split + "_"))
        self.log_text(f"epoch {self.epoch + 1}/{self.epochs} {split}: {summary}")

    def _reduce_mean(self, total: float, count: int) -> float:
        """Mean over all processes of a distributed run (plain mean otherwise)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            packed = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            dist.all_reduce(packed)
            total, count = packed.tolist()
        return total / max(count, 1)

    @torch.no_grad()
    def validate(self) -> None:
        loop = self.training_loop
        self._call("on_validation_epoch_start")
        self.train_model.eval()
        for metric in loop.val_metrics.values():
            metric.reset()
        loader = loop.dataset.val_dataloader()
        progress = tqdm(
            loader, desc=f"epoch {self.epoch + 1}/{self.epochs} val", total=self._batches(loader),
            disable=not self.is_main, dynamic_ncols=True, mininterval=1.0, leave=False,
        )
        loss_sum, steps = 0.0, 0
        # A plain loop with a break, not itertools.islice: an error raised by a DataLoader worker
        # must leave no wrapper holding the loader's iterator (its workers shut down in order).
        for index, batch in enumerate(progress):
            if index == self.limit_batches:
                break
            with self._autocast():
                output = loop.validation_step(self.train_model, move_to(batch, self.device))
            if output.loss is not None:
                loss_sum, steps = loss_sum + output.loss.item(), steps + 1
            for metric in loop.val_metrics.values():
                metric.update(output.preds, output.targets)
        progress.close()
        self._log_epoch("val", loss_sum, steps, loop.val_metrics)
        self.train_model.train()
        self._call("on_validation_epoch_end")
