"""Model factory: ``create_model(arch, **kwargs)`` over a small registry of architectures.

An architecture is a function decorated with :func:`register_model`; its name is the
``model_arch`` of a config. The built model remembers its name and arguments so that a
checkpoint can rebuild it (``model.ckpt`` stores them next to the state dict).
"""

import difflib
from typing import Callable

import torch.nn as nn

from rupq.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[factory.__name__] = factory
    return factory


def model_names() -> list[str]:
    return sorted(_MODELS)


def create_model(arch: str, **kwargs) -> nn.Module:
    if arch not in _MODELS:
        close = difflib.get_close_matches(arch, _MODELS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(model_names())}"
        raise ConfigError(f"unknown model_arch '{arch}'; {hint}")
    try:
        model = _MODELS[arch](**kwargs)
    except TypeError as error:
        raise ConfigError(f"model_arch '{arch}': {error}") from None
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
