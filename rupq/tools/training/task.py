"""``!Task``: builds the model, its quantizers and optimizers, then runs the shared trainer."""

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from rupq.config_locations import argument_locations, location_of
from rupq.errors import CheckpointError, ConfigError, RupqError
from rupq.models import architecture_of, create_model, pretrained_model
from rupq.models.named import split_source
from rupq.quantizers import ModuleQuantizer, quantizers_of
from rupq.quantizers.report import summary
from rupq.tools.callbacks.base import Callback
from rupq.tools.callbacks.model_saver import ModelSaver
from rupq.tools.training.loops import TrainingLoop, move_to
from rupq.tools.training.optimizers import build_optimizers
from rupq.tools.training.parallel import process_seed
from rupq.tools.training.trainer import Trainer
from rupq.tools.utils.checkpoint import MODEL_FORMAT, TRAINING_FORMAT, load_checkpoint, save_atomic

#: ``precision`` of a Task: float32, or mixed precision under torch.autocast (the quantizer math
#: stays in float32).
PRECISIONS = ("fp32", "bf16", "fp16")
def describe_arch(arch: dict) -> str:
    kwargs = ", ".join(f"{key}={value}" for key, value in sorted(arch["kwargs"].items()))
    return f"{arch['name']}({kwargs})" if kwargs else arch["name"]


@dataclass
class RunContext:
    """What the command line decided: where to write, what to load, which device(s)."""

    version_dir: Path | None
    device: torch.device
    load: str | None = None
    checkpoint_path: str | None = None
    rank: int = 0
    world_size: int = 1
    overrides: list[str] = field(default_factory=list)  # the command line's --set KEY=VALUE, for results.json
    # --fast-dev-run N: one epoch of N training and N validation batches, every callback, then stop.
    fast_dev_run: int | None = None
    # Wraps the initialised model for several devices (DataParallel/DDP); identity otherwise.
    wrap_model: Callable[[nn.Module], nn.Module] = field(default=lambda model: model)
    # --compile / --precision: override the Task's ``compile`` / ``precision`` when given.
    compile: bool | None = None
    precision: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def is_quantized(model: nn.Module) -> bool:
    """Whether a model parser wrapped any of its layers (decided by module type, not by names)."""
    return any(isinstance(module, ModuleQuantizer) for module in model.modules())


def quantizer_settings(model: nn.Module) -> dict[str, dict]:
    """``{quantizer name: {type, bit_width, half_wave, bound_gradient}}``: what a config decides and a
    state dict does not show."""
    return {
        name: {"type": type(quantizer).__name__, "bit_width": int(quantizer.bit_width), "half_wave": bool(quantizer.half_wave),
               "bound_gradient": float(quantizer.bound_gradient)}
        for name, quantizer in quantizers_of(model)
    }


def model_checkpoint(model: nn.Module) -> dict:
    return {
        "format": MODEL_FORMAT,
        # None for a network rupq did not build (rupq.save of one's own model): rupq.load reads it.
        "arch": getattr(model, "rupq_arch", None),
        "quantized": is_quantized(model),
        "quantizers": quantizer_settings(model),
        "state_dict": model.state_dict(),
    }


def settings_difference(saved: dict[str, dict], built: dict[str, dict]) -> str | None:
    """The first way the checkpoint's quantizers differ from the config's, in words (None: they match)."""
    missing, extra = sorted(set(saved) - set(built)), sorted(set(built) - set(saved))
    if missing or extra:
        parts = [f"{len(missing)} quantizer(s) only in the checkpoint (e.g. {missing[0]})" if missing else "",
                 f"{len(extra)} only in the config (e.g. {extra[0]})" if extra else ""]
        return ", ".join(part for part in parts if part)
    # A key the checkpoint lacks is not compared: it was written before that setting was saved
    # (bound_gradient), and what it trained with is not known.
    differing = [(name, key) for name in saved for key in ("type", "bit_width", "half_wave", "bound_gradient")
                 if key in saved[name] and saved[name][key] != built[name][key]]
    if not differing:
        return None
    name, key = differing[0]
    more = f" (and {len(differing) - 1} more difference(s))" if len(differing) > 1 else ""
    return f"{name} has {key} {saved[name][key]} in the checkpoint but {built[name][key]} in the config{more}"


def model_of(saved: dict, source) -> nn.Module:
    """A new model of the architecture a checkpoint records (its weights not loaded yet)."""
    if saved["arch"] is None:
        raise CheckpointError(
            f"{source} holds a network that rupq did not build (written by rupq.save): build the network in "
            "Python and read it with rupq.load(path, model)"
        )
    return create_model(saved["arch"]["name"], **saved["arch"]["kwargs"])


def load_state(model: nn.Module, state: dict, source, saved_quantizers: dict | None = None) -> None:
    """Load a checkpoint's ``state`` into ``model``, built and quantized for it: first the quantizer
    settings it was saved with (``saved_quantizers``; None in checkpoints older than them) against
    the model's, then the tensors; either mismatch is one line naming ``source``. The one loader of
    ``--load``, ``--checkpoint_path``, ``rupq export`` and ``rupq.load``."""
    if saved_quantizers is not None:
        difference = settings_difference(saved_quantizers, quantizer_settings(model))
        if difference:
            raise CheckpointError(f"{source} does not fit the config's model_parser: {difference}")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise CheckpointError(f"{source} does not fit the model: {' '.join(lines[1:3])[:300]}") from None


class Task:
    """One experiment: a model (``model_arch`` or ``--load``), optionally quantized by
    ``model_parser``, trained for ``epochs`` by ``training_loop`` with ``optimizers``."""

    # Set while build_model runs: the checkpoint being resumed, and the quantizer settings saved
    # in a quantized checkpoint, checked against the config's model_parser once it has wrapped the model.
    _resume_source: str | None = None
    _saved_quantizers: dict | None = None

    def __init__(
        self,
        training_loop: TrainingLoop,
        epochs: int,
        model_saver: dict | None = None,
        model_arch: str | None = None,
        optimizers: dict | None = None,
        model_parser=None,
        check_val_every_n_epochs: int = 1,
        callbacks: list | None = None,
        model_kwargs: dict | None = None,
        seed: int = 0,
        compile: bool = False,
        precision: str = "fp32",
        log_every_n_steps: int = 50,
    ):
        if not isinstance(training_loop, TrainingLoop):
            raise ValueError(f"training_loop must be a !TrainingLoop, got {training_loop!r}")
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        if log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be at least 1, got {log_every_n_steps}")
        if check_val_every_n_epochs < 1:
            raise ValueError(f"check_val_every_n_epochs must be at least 1, got {check_val_every_n_epochs}")
        for callback in callbacks or []:
            if not isinstance(callback, Callback):
                raise ValueError(f"callbacks must be callback tags such as !QuantImagesCallback, got {callback!r}")
        if model_parser is not None and not hasattr(model_parser, "parse"):
            raise ValueError(f"model_parser must be a !ModelParser, got {model_parser!r}")
        model_saver = model_saver or {}
        if not isinstance(model_saver, dict):
            raise ValueError(f"model_saver must be a mapping with monitor/mode/save_last, got {model_saver!r}")
        unknown = set(model_saver) - {"monitor", "mode", "save_last"}
        if unknown:
            raise ValueError(f"model_saver: unexpected key '{sorted(unknown)[0]}'; accepted: monitor, mode, save_last")
        self.training_loop = training_loop
        self.epochs = epochs
        self.model_saver = ModelSaver(**model_saver)
        self.model_arch = model_arch
        self.model_kwargs = model_kwargs or {}
        self.optimizers = optimizers
        self.model_parser = model_parser
        self.check_val_every_n_epochs = check_val_every_n_epochs
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.callbacks = list(callbacks or [])
        self.seed = seed
        self.compile = bool(compile)
        self.precision = precision
        self.log_every_n_steps = log_every_n_steps

    # ---- model ------------------------------------------------------------------------------
    def _base_model(self, context: RunContext, resume_state: dict | None) -> tuple[nn.Module, dict | None]:
        """The model before quantization and the state dict still to load after wrapping."""
        where = location_of(self)
        if resume_state is not None:
            saved = resume_state["model"]
            wanted = {"name": self.model_arch, "kwargs": self.model_kwargs}
            if self.model_arch and saved["arch"] != wanted:
                raise CheckpointError(
                    f"{context.checkpoint_path} holds {describe_arch(saved['arch'])} but the config builds "
                    f"{describe_arch(wanted)}"
                )
            return self._load_into(model_of(saved, context.checkpoint_path), saved, context.checkpoint_path)
        if self.model_arch and context.load:
            raise ConfigError(
                "the config sets model_arch and --load was given: use one (model_arch trains from scratch, "
                "--load starts from a checkpoint)", where
            )
        if self.model_arch:
            return create_model(self.model_arch, **self.model_kwargs), None
        if not context.load:
            raise ConfigError(
                "no model: set model_arch in the config or give --load with a model.ckpt "
                "(or torchvision:resnet18)", where
            )
        if split_source(context.load):
            return pretrained_model(context.load), None
        saved = load_checkpoint(context.load, MODEL_FORMAT)
        return self._load_into(model_of(saved, context.load), saved, context.load)

    def _load_into(self, model: nn.Module, saved: dict, source) -> tuple[nn.Module, dict | None]:
        if saved["quantized"]:
            if self.model_parser is None:
                raise ConfigError(
                    f"{source} holds a quantized model; its config needs the model_parser that quantized it",
                    location_of(self),
                )
            self._saved_quantizers = saved.get("quantizers")
            return model, saved["state_dict"]
        if source == self._resume_source and self.model_parser is not None:
            raise CheckpointError(
                f"{source} holds a full-precision model but the config quantizes the model (model_parser): "
                "use the full-precision config, or start quantization with --load MODEL.ckpt"
            )
        load_state(model, saved["state_dict"], source)
        return model, None


    def build_model(self, context: RunContext, resume_state: dict | None = None) -> nn.Module:
        self._resume_source = context.checkpoint_path if resume_state is not None else None
        self._saved_quantizers = None
        model, pending_state = self._base_model(context, resume_state)
        if self.model_parser is not None:
            try:
                model = self.model_parser.parse(model)
            except RupqError as error:
                raise error.at(location_of(self.model_parser))
        if pending_state is not None:
            load_state(model, pending_state, context.checkpoint_path or context.load, self._saved_quantizers)
        return model.to(context.device)

    def load_trained_model(self, path) -> nn.Module:
        """The model that a run of this config wrote to ``path`` (its ``model.ckpt``), rebuilt by the
        rules of ``--checkpoint_path``: the recorded architecture (the config's, when it names one),
        quantized by the config's model_parser exactly when the checkpoint is. On the CPU."""
        saved = load_checkpoint(path, MODEL_FORMAT)
        return self.build_model(RunContext(None, torch.device("cpu"), checkpoint_path=str(path)), {"model": saved})

    def initialize_quantizers(self, model: nn.Module, context: RunContext) -> None:
        """Initialise every quantizer on the full first batch, before any replication."""
        from rupq.quantizers import calibration_report, initialize_quantizers, quantizers_of

        if all(quantizer.initialized for _, quantizer in quantizers_of(model)):
            return
        batch = move_to(self.training_loop.dataset.calibration_batch(self.seed), context.device)
        inputs, _ = self.training_loop.unpack_batch(batch)
        initialize_quantizers(model, inputs)
        if self.training_loop.print_calibration and context.is_main:
            print(calibration_report(model), flush=True)

    @staticmethod
    def _carry_over_best_model(context: RunContext) -> None:
        """A resumed run writes a new version_N; start it with the interrupted run's best model,
        which stays its ``model.ckpt`` unless the resumed epochs improve on it."""
        previous = Path(context.checkpoint_path).resolve().parent.parent / "model.ckpt"
        if context.version_dir is not None and previous.is_file():
            shutil.copyfile(previous, context.version_dir / "model.ckpt")

    # ---- run --------------------------------------------------------------------------------
    def run(self, context: RunContext) -> dict:
        seed_everything(self.seed)
        resume_state = load_checkpoint(context.checkpoint_path, TRAINING_FORMAT) if context.checkpoint_path else None
        if context.world_size > 1:
            self.training_loop.dataset.distribute(context.rank, context.world_size)
        model = self.build_model(context, resume_state)
        if self.model_parser is not None:
            if context.is_main:
                print(summary(model), flush=True)  # what is quantized, and what stays in float and why
            self.initialize_quantizers(model, context)
        trainer = self.build_trainer(model, context)
        if resume_state is not None:
            self._resume(trainer, resume_state, context)
        if context.world_size > 1 and not trainer.restored_every_process_rng:
            # One seed so far on every process (identical models and calibration); from here on
            # each process draws its own augmentations and dropout masks.
            seed_everything(process_seed(self.seed, context.rank, trainer.global_step))
        logged = trainer.fit()
        if context.is_main:
            self._report(trainer, logged, context)
        return logged

    def build_trainer(self, model: nn.Module, context: RunContext) -> Trainer:
        """The shared trainer over ``model`` (initialised), with this task's optimizers and
        callbacks, wrapped for several devices and compiled as the config and command line say."""
        optimizers = build_optimizers(model, self.optimizers, argument_locations(self, "optimizers"))
        callbacks = [self.model_saver] + self.callbacks
        if self.model_parser is not None:
            from rupq.tools.callbacks.quantization import QuantVarsCallback

            if not any(isinstance(callback, QuantVarsCallback) for callback in callbacks):
                callbacks.append(QuantVarsCallback())
        train_model = context.wrap_model(model)
        if self.compile if context.compile is None else context.compile:
            # After quantizer initialisation and the calibration report, which run eagerly once.
            # Dynamic shapes: detection changes its image size every 10 batches, SR validates
            # whole images of different sizes.
            if context.is_main:
                print("compiling the model with torch.compile (the first steps take longer)", flush=True)
            train_model = torch.compile(train_model, dynamic=True)
        fast = context.fast_dev_run is not None
        return Trainer(
            model=model,
            training_loop=self.training_loop,
            optimizers=optimizers,
            epochs=1 if fast else self.epochs,
            device=context.device,
            callbacks=callbacks,
            log_dir=context.version_dir,
            check_val_every_n_epochs=1 if fast else self.check_val_every_n_epochs,
            seed=self.seed,
            build_model_checkpoint=lambda: model_checkpoint(model),
            train_model=train_model,
            is_main=context.is_main,
            precision=self.precision if context.precision is None else context.precision,
            limit_batches=context.fast_dev_run,
            log_every_n_steps=self.log_every_n_steps,
        )

    def _resume(self, trainer: Trainer, resume_state: dict, context: RunContext) -> None:
        """The trainer where the interrupted run stopped (--checkpoint_path)."""
        try:
            trainer.load_state_dict(resume_state)
        except RupqError as error:
            raise error.at(context.checkpoint_path)
        if context.fast_dev_run is not None:  # one epoch from where the checkpoint stopped
            trainer.epochs = trainer.epoch + 1
        if trainer.epoch >= self.epochs:
            raise ConfigError(
                f"{context.checkpoint_path} already finished epoch {trainer.epoch} of {self.epochs}: "
                "raise epochs in the config to train further", location_of(self)
            )
        if context.is_main:
            print(f"resuming at epoch {trainer.epoch + 1}, iteration {trainer.start_batch + 1}", flush=True)
            self._carry_over_best_model(context)

    def _report(self, trainer: Trainer, logged: dict, context: RunContext) -> None:
        """What a finished run prints and writes: the fast dev run's line, ``results.json``."""
        if context.fast_dev_run is not None:
            names = ", ".join(type(callback).__name__ for callback in trainer.callbacks)
            kind = "quantized" if self.model_parser is not None else "full-precision"
            print(f"fast dev run: {context.fast_dev_run} training and {context.fast_dev_run} validation batches of "
                  f"epoch {trainer.epoch + 1} (of {self.epochs}) with callbacks {names}; "
                  f"{len(trainer.optimizers)} optimizer(s), {kind} {architecture_of(trainer.model)['name']}", flush=True)
        if context.version_dir is not None:
            results = json.dumps({**logged, "overrides": context.overrides}, indent=2, sort_keys=True) + "\n"
            save_atomic(results.encode(), context.version_dir / "results.json")
