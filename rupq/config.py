"""YAML configs → objects.

A tag ``!Name`` builds an object: a mapping node gives keyword arguments, a sequence node
positional ones, an empty node none. Anchors and aliases refer to the same object (PyYAML
constructs an anchored node once). Tags resolve, in order, to the project's classes (the
``__all__`` of the packages in :data:`PROJECT_PACKAGES`), then ``torch.nn``, ``torch.optim``
and ``torch.optim.lr_scheduler``. Every error names the config file and line.
"""

import difflib
import importlib
import inspect
import re
import types
import typing
from pathlib import Path

import yaml

from rupq.errors import ConfigError, RupqError

PROJECT_PACKAGES = (
    "rupq.dataloaders",
    "rupq.quantizers",
    "rupq.tools.training",
    "rupq.tools.callbacks",
    "rupq.tools.metrics",
    "rupq.tools.losses",
    "rupq.tools.utils",
)
TORCH_MODULES = ("torch.nn", "torch.optim", "torch.optim.lr_scheduler")

_registry: dict[str, type] | None = None


def tag_registry() -> dict[str, type]:
    """Name → class for every tag a config may use, project classes first."""
    global _registry
    if _registry is None:
        registry: dict[str, type] = {}
        for module_name in PROJECT_PACKAGES + TORCH_MODULES:
            module = importlib.import_module(module_name)
            names = getattr(module, "__all__", None) or dir(module)
            for name in names:
                obj = getattr(module, name, None)
                if inspect.isclass(obj) and not name.startswith("_"):
                    registry.setdefault(name, obj)
        _registry = registry
    return _registry


def resolve_tag(name: str, where: str | None = None) -> type:
    registry = tag_registry()
    if name in registry:
        return registry[name]
    # The seed's own configs spell one tag in lower case (`!psnr`).
    folded = [key for key in registry if key.lower() == name.lower()]
    if len(folded) == 1:
        return registry[folded[0]]
    close = difflib.get_close_matches(name, registry, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('!' + c for c in close)}?" if close else ""
    raise ConfigError(f"unknown tag !{name}{hint}", where)


def _location(loader_or_path, node) -> str:
    return f"{loader_or_path}:{node.start_mark.line + 1}"


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that builds tagged nodes and remembers the file name for messages."""

    config_path = "<config>"

    def construct_mapping(self, node, deep=False):
        # Complex keys (`? [a, b]`) would otherwise raise TypeError deep inside PyYAML.
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError("mapping keys must be plain names", _location(self.config_path, key_node))
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):
        # PyYAML's own constructors raise plain ValueError/TypeError/OverflowError for values
        # such as the impossible date `2020-13-45` or `!!float abc`; report them at their line.
        try:
            return super().construct_object(node, deep=deep)
        except (RupqError, yaml.YAMLError, RecursionError):
            raise
        except Exception as error:
            raise ConfigError(f"cannot read this value: {error}", _location(self.config_path, node)) from error


# YAML 1.1 reads `5e-4` (no dot) as a string; the seed configs write numbers that way.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_ConfigLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _type_matches(value, annotation) -> bool:
    """Loose check of a YAML value against a constructor annotation (unknowns pass)."""
    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (bool, str):
        return isinstance(value, annotation)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True


def _describe(annotation) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def build(cls: type, args: list, kwargs: dict, tag: str, where: str):
    """Call ``cls(*args, **kwargs)``, turning argument mistakes into config errors."""
    try:
        signature = inspect.signature(cls, eval_str=True)
    except Exception:  # unresolvable annotations, builtins without a signature
        try:
            signature = inspect.signature(cls)
        except (TypeError, ValueError):
            signature = None
    if signature is not None:
        accepted = [
            p.name for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            unexpected = [k for k in kwargs if k not in accepted]
            if unexpected and not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
                raise ConfigError(
                    f"!{tag}: unexpected argument '{unexpected[0]}'; accepted: {', '.join(accepted) or 'none'}", where
                ) from None
            raise ConfigError(f"!{tag}: {error}; accepted: {', '.join(accepted) or 'none'}", where) from None
        for name, value in bound.arguments.items():
            parameter = signature.parameters[name]
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            annotation = parameter.annotation
            if isinstance(annotation, str):
                continue
            if not _type_matches(value, annotation):
                raise ConfigError(
                    f"!{tag}: argument '{name}' should be {_describe(annotation)}, got {value!r}", where
                )
    try:
        obj = cls(*args, **kwargs)
    except RupqError as error:
        raise error.at(where)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ConfigError(f"!{tag}: {error}", where) from error
    except Exception as error:  # e.g. ZeroDivisionError or a torch RuntimeError caused by an argument
        raise ConfigError(f"!{tag}: {type(error).__name__}: {error}", where) from error
    if type(obj).__module__.startswith("rupq."):
        # Lets errors found later (when the object is used) point back at its config line.
        obj.config_location = where
    return obj


def location_of(obj) -> str | None:
    """``file:line`` of the config node that built ``obj``, when a config built it."""
    return getattr(obj, "config_location", None)


def _argument_locations(config_path: str, node) -> dict[str, str]:
    """``{"optimizers.sgd.name": "file:line", ...}`` for the keys of an object's mapping node.

    Plain (untagged) mappings are followed, so that values checked only when the object is
    used (an optimizer entry, its scheduler name) can still be reported at their own line.
    Tagged values are objects with their own ``config_location`` and are not entered.
    """
    locations: dict[str, str] = {}
    seen: set[int] = set()  # an alias may point back into its own mapping

    def walk(mapping, prefix: str) -> None:
        if id(mapping) in seen:
            return
        seen.add(id(mapping))
        for key_node, value_node in mapping.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            name = f"{prefix}{key_node.value}"
            locations.setdefault(name, _location(config_path, key_node))
            if isinstance(value_node, yaml.MappingNode) and value_node.tag == "tag:yaml.org,2002:map":
                walk(value_node, name + ".")

    walk(node, "")
    return locations


def argument_locations(obj, argument: str) -> dict[str, str]:
    """Locations under one argument of ``obj``, keyed relative to it; ``""`` is the argument itself.

    ``argument_locations(task, "optimizers")["sgd.name"]`` is the line of ``name:`` in the
    ``sgd`` entry of the task's optimizers mapping. Empty when no config built ``obj``.
    """
    found = {}
    for name, where in getattr(obj, "config_locations", {}).items():
        if name == argument:
            found[""] = where
        elif name.startswith(argument + "."):
            found[name[len(argument) + 1 :]] = where
    return found


def _construct_tagged(loader: _ConfigLoader, tag_suffix: str, node):
    where = _location(loader.config_path, node)
    cls = resolve_tag(tag_suffix, where)
    if isinstance(node, yaml.MappingNode):
        kwargs = loader.construct_mapping(node, deep=True)
        bad = [k for k in kwargs if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"!{tag_suffix}: argument names must be strings, got {bad[0]!r}", where)
        obj = build(cls, [], kwargs, tag_suffix, where)
        if location_of(obj) == where:
            obj.config_locations = _argument_locations(loader.config_path, node)
        return obj
    if isinstance(node, yaml.SequenceNode):
        return build(cls, loader.construct_sequence(node, deep=True), {}, tag_suffix, where)
    value = loader.construct_scalar(node)
    if value in ("", None):
        return build(cls, [], {}, tag_suffix, where)
    raise ConfigError(
        f"!{tag_suffix}: expected a mapping of arguments or nothing, got the scalar {value!r}", where
    )


_ConfigLoader.add_multi_constructor("!", _construct_tagged)


def load_config(path) -> dict:
    """Read a config file and return its top-level objects as a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" if not path.exists() else f"not a file: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from None
    loader = _ConfigLoader(text)
    loader.config_path = str(path)
    try:
        config = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark else ""
        context = error.context
        if context and error.context_mark and mark is not error.context_mark and error.context_mark.line != mark.line:
            context = f"{context} (from line {error.context_mark.line + 1})"
        problem = " ".join(str(part) for part in (context, error.problem) if part)
        raise ConfigError(f"YAML syntax error: {problem}", f"{path}{line}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"YAML error: {error}", str(path)) from None
    except RecursionError:
        raise ConfigError("config is nested too deeply", str(path)) from None
    except RupqError:
        raise
    except Exception as error:  # a last resort: whatever the input, the user gets one line
        raise ConfigError(f"cannot read config: {type(error).__name__}: {error}", str(path)) from error
    finally:
        loader.dispose()
    if not isinstance(config, dict):
        raise ConfigError(f"a config must be a mapping of names to objects, got {type(config).__name__}", str(path))
    return config
