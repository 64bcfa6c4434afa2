"""Config tags → classes: ``!Task``, ``!QuantConv2d``, ``!CrossEntropyLoss`` …

A tag names a class in the ``__all__`` of the packages of :data:`TAG_PACKAGES` (the project's
first, then ``torch.nn``, ``torch.optim`` and ``torch.optim.lr_scheduler``). This module is the
one place that knows those packages and imports them, on the first lookup: :mod:`rupq.config`
(which builds the objects, and which ``rupq.tools`` imports for config locations) and
:mod:`rupq.config_text` (``--set`` overrides) only ask it for a class by name.
"""

import difflib
import importlib
import inspect
import warnings

from rupq.errors import ConfigError

#: Modules whose classes tags name, in lookup order; a new class becomes a tag by its name in
#: one of their ``__all__`` lists.
TAG_PACKAGES = (
    "rupq.dataloaders",
    "rupq.quantizers",
    "rupq.tools.training",
    "rupq.tools.callbacks",
    "rupq.tools.metrics",
    "rupq.tools.losses",
    "rupq.tools.utils",
    "torch.nn",
    "torch.optim",
    "torch.optim.lr_scheduler",
)

_registry: dict[str, type] | None = None


class ConfigCaseWarning(UserWarning):
    """A tag written in another case than the class it names (``!QuantConv2D`` for ``!QuantConv2d``)."""


def tag_registry() -> dict[str, type]:
    """Name → class for every tag a config may use, project classes first."""
    global _registry
    if _registry is None:
        registry: dict[str, type] = {}
        for module_name in TAG_PACKAGES:
            module = importlib.import_module(module_name)
            names = getattr(module, "__all__", None) or dir(module)
            for name in names:
                obj = getattr(module, name, None)
                if inspect.isclass(obj) and not name.startswith("_"):
                    registry.setdefault(name, obj)
        _registry = registry
    return _registry


def resolve_tag(name: str, where: str | None = None, warn: bool = True) -> type:
    """The class of ``!name``; a ``ConfigError`` naming the closest tags when there is none."""
    registry = tag_registry()
    if name in registry:
        return registry[name]
    # The original RUPQ code's configs spell one tag in lower case (`!psnr`): accept a tag
    # written in another case, but say which tag it is, so that a typo does not pass unseen.
    folded = [key for key in registry if key.lower() == name.lower()]
    if len(folded) == 1:
        if warn:
            warnings.warn(f"{where or '<config>'}: tag !{name} read as !{folded[0]}", ConfigCaseWarning, stacklevel=2)
        return registry[folded[0]]
    close = difflib.get_close_matches(name, registry, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('!' + c for c in close)}?" if close else ""
    raise ConfigError(f"unknown tag !{name}{hint}", where)
