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

from rupq.config import argument_locations, location_of
from rupq.errors import CheckpointError, ConfigError, RupqError
from rupq.models import architecture_of, create_model
from rupq.tools.callbacks.base import Callback
from rupq.tools.callbacks.model_saver import ModelSaver
from rupq.tools.training.loops import TrainingLoop, move_to
from rupq.tools.training.optimizers import build_optimizers
from rupq.tools.training.parallel import process_seed
from rupq.tools.training.trainer import Trainer
from rupq.tools.utils.checkpoint import MODEL_FORMAT, TRAINING_FORMAT, load_checkpoint, save_atomic

TORCHVISION_PREFIX = "torchvision:"


@dataclass
class RunContext:
    """What the command line decided: where to write, what to load, which device(s)."""

    version_dir: Path | None
    device: torch.device
    load: str | None = None
    checkpoint_path: str | None = None
    rank: int = 0
    world_size: int = 1
    # Wraps the initialised model for several devices (DataParallel/DDP); identity otherwise.
    wrap_model: Callable[[nn.Module], nn.Module] = field(default=lambda model: model)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_checkpoint(model: nn.Module) -> dict:
    return {
        "format": MODEL_FORMAT,
        "arch": architecture_of(model),
        "quantized": any("quantizer" in name for name, _ in model.named_modules()),
        "state_dict": model.state_dict(),
    }


def torchvision_pretrained(arch: str) -> nn.Module:
    """``arch`` with torchvision's published ImageNet weights (its own weights API and cache)."""
    import torchvision

    known = {"resnet18": "ResNet18_Weights", "mobilenet_v2": "MobileNet_V2_Weights"}
    if arch not in known:
        raise ConfigError(f"--load {TORCHVISION_PREFIX}{arch}: pretrained weights are known for {', '.join(known)}")
    model = create_model(arch)
    weights = torchvision.models.get_weight(f"{known[arch]}.IMAGENET1K_V1")
    try:
        state = weights.get_state_dict(progress=True)
    except Exception as error:  # network and cache failures all mean "not available here"
        raise CheckpointError(
            f"cannot obtain torchvision's ImageNet weights for {arch} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no details'}); they download once into torch's cache"
        ) from None
    model.load_state_dict(state)
    return model


class Task:
    """One experiment: a model (``model_arch`` or ``--load``), optionally quantized by
    ``model_parser``, trained for ``epochs`` by ``training_loop`` with ``optimizers``."""

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
    ):
        if not isinstance(training_loop, TrainingLoop):
            raise ValueError(f"training_loop must be a !TrainingLoop, got {training_loop!r}")
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
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
        self.callbacks = list(callbacks or [])
        self.seed = seed

    # ---- model ------------------------------------------------------------------------------
    def _base_model(self, context: RunContext, resume_state: dict | None) -> tuple[nn.Module, dict | None]:
        """The model before quantization and the state dict still to load after wrapping."""
        where = location_of(self)
        if resume_state is not None:
            saved = resume_state["model"]
            model = create_model(saved["arch"]["name"], **saved["arch"]["kwargs"])
            return self._load_into(model, saved, context.checkpoint_path)
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
                f"(or {TORCHVISION_PREFIX}resnet18)", where
            )
        if context.load.startswith(TORCHVISION_PREFIX):
            return torchvision_pretrained(context.load[len(TORCHVISION_PREFIX):]), None
        saved = load_checkpoint(context.load, MODEL_FORMAT)
        model = create_model(saved["arch"]["name"], **saved["arch"]["kwargs"])
        return self._load_into(model, saved, context.load)

    def _load_into(self, model: nn.Module, saved: dict, source) -> tuple[nn.Module, dict | None]:
        if saved["quantized"]:
            if self.model_parser is None:
                raise ConfigError(
                    f"{source} holds a quantized model; its config needs the model_parser that quantized it",
                    location_of(self),
                )
            return model, saved["state_dict"]
        self._load_state(model, saved["state_dict"], source)
        return model, None

    @staticmethod
    def _load_state(model: nn.Module, state: dict, source) -> None:
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise CheckpointError(f"{source} does not fit the model: {' '.join(lines[1:3])[:300]}") from None

    def build_model(self, context: RunContext, resume_state: dict | None = None) -> nn.Module:
        model, pending_state = self._base_model(context, resume_state)
        if self.model_parser is not None:
            try:
                model = self.model_parser.parse(model)
            except RupqError as error:
                raise error.at(location_of(self.model_parser))
        if pending_state is not None:
            self._load_state(model, pending_state, context.checkpoint_path or context.load)
        return model.to(context.device)

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
        quantized = self.model_parser is not None
        if quantized:
            self.initialize_quantizers(model, context)
        optimizers = build_optimizers(model, self.optimizers, argument_locations(self, "optimizers"))
        callbacks = [self.model_saver] + self.callbacks
        if quantized:
            from rupq.tools.callbacks.quantization import QuantVarsCallback

            if not any(isinstance(callback, QuantVarsCallback) for callback in callbacks):
                callbacks.append(QuantVarsCallback())
        trainer = Trainer(
            model=model,
            training_loop=self.training_loop,
            optimizers=optimizers,
            epochs=self.epochs,
            device=context.device,
            callbacks=callbacks,
            log_dir=context.version_dir,
            check_val_every_n_epochs=self.check_val_every_n_epochs,
            seed=self.seed,
            model_checkpoint=lambda: model_checkpoint(model),
            train_model=context.wrap_model(model),
            is_main=context.is_main,
        )
        if resume_state is not None:
            trainer.load_state_dict(resume_state)
            if trainer.epoch >= self.epochs:
                raise ConfigError(
                    f"{context.checkpoint_path} already finished epoch {trainer.epoch} of {self.epochs}: "
                    "raise epochs in the config to train further", location_of(self)
                )
            if context.is_main:
                print(f"resuming at epoch {trainer.epoch + 1}, iteration {trainer.start_batch + 1}", flush=True)
                self._carry_over_best_model(context)
        if context.world_size > 1 and not trainer.restored_every_process_rng:
            # One seed so far on every process (identical models and calibration); from here on
            # each process draws its own augmentations and dropout masks.
            seed_everything(process_seed(self.seed, context.rank, trainer.global_step))
        logged = trainer.fit()
        if context.is_main and context.version_dir is not None:
            results = json.dumps(logged, indent=2, sort_keys=True) + "\n"
            save_atomic(results.encode(), context.version_dir / "results.json")
        return logged
