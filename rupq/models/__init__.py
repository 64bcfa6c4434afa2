"""Model factory: ``create_model(arch, **kwargs)`` over a small registry of architectures.

An architecture is a function decorated with :func:`register_model`; its name is the
``model_arch`` of a config, as are ``torchvision:NAME`` and ``timm:NAME`` (:mod:`rupq.models.named`).
The built model remembers its name and arguments so that a checkpoint can rebuild it
(``model.ckpt`` stores them next to the state dict).
"""

import difflib
from typing import Callable

import torch.nn as nn

from rupq.errors import ConfigError
from rupq.models.named import build_named, is_torchvision_name, load_pretrained, split_source

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[factory.__name__] = factory
    return factory


def model_names() -> list[str]:
    return sorted(_MODELS)


def create_model(arch: str, **kwargs) -> nn.Module:
    """The architecture ``arch`` (a registered name, ``torchvision:NAME`` or ``timm:NAME``) built with ``kwargs``."""
    named = split_source(arch)
    if named is None and arch not in _MODELS:
        close = difflib.get_close_matches(arch, _MODELS, n=3, cutoff=0.5)
        if is_torchvision_name(arch):  # the library's name without its prefix
            close = [f"torchvision:{arch}"]
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(model_names())}"
        raise ConfigError(f"unknown model_arch '{arch}'; {hint} (any other model: torchvision:NAME or timm:NAME)")
    # Arguments the builder does not take (TypeError) are the config's; torchvision's and timm's
    # builders also check their values with ValueError. Anything else keeps its traceback.
    user_errors = (TypeError, ValueError) if named else (TypeError,)
    try:
        model = build_named(*named, **kwargs) if named else _MODELS[arch](**kwargs)
    except user_errors as error:
        raise ConfigError(f"model_arch '{arch}': {error}") from error
    return _named(model, arch, kwargs)


def pretrained_model(arch: str) -> nn.Module:
    """``torchvision:NAME`` / ``timm:NAME`` with its published weights, read from the local cache only."""
    named = split_source(arch)
    if named is None:
        raise ConfigError(f"--load {arch}: pretrained weights by name are torchvision:NAME or timm:NAME")
    return _named(load_pretrained(*named), arch, {})


def _named(model: nn.Module, arch: str, kwargs: dict) -> nn.Module:
    model.rupq_arch = {"name": arch, "kwargs": dict(kwargs)}
    return model


def architecture_of(model: nn.Module) -> dict:
    """``{"name", "kwargs"}`` recorded by :func:`create_model`."""
    arch = getattr(model, "rupq_arch", None)
    if arch is None:
        raise ValueError("model was not built by rupq.models.create_model; its architecture is unknown")
    return arch


# Importing the modules registers their architectures.
from rupq.models import classification  # noqa: E402,F401
from rupq.models import edsr, srresnet  # noqa: E402,F401
from rupq.models import yolo  # noqa: E402,F401
