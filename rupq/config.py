"""YAML configs → objects.

A tag ``!Name`` builds an object: a mapping node gives keyword arguments, a sequence node
positional ones, an empty node none. Anchors and aliases refer to the same object (PyYAML
constructs an anchored node once). Tags name classes through :mod:`rupq.tags`; reading the YAML
and ``--set`` overrides are :mod:`rupq.config_text`'s. Every error names the config file and line,
and each object built keeps the location of its node (:mod:`rupq.config_locations`) for the
errors found when it is used.
"""

import inspect
import types
import typing
from pathlib import Path

import yaml

from rupq.config_locations import remember
from rupq.config_text import ConfigLoader, compose, node_location, yaml_errors_as_config_errors
from rupq.errors import ConfigError, RupqError
from rupq.tags import resolve_tag


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


def _signature(cls: type) -> inspect.Signature | None:
    try:
        return inspect.signature(cls, eval_str=True)
    except Exception:  # unresolvable annotations, builtins without a signature
        try:
            return inspect.signature(cls)
        except (TypeError, ValueError):
            return None


def _check_arguments(signature: inspect.Signature, args: list, kwargs: dict, tag: str, where: str) -> None:
    """A ``ConfigError`` for arguments that ``signature`` does not take or lacks, or whose value
    does not match its annotation."""
    accepted = [p.name for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
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
            raise ConfigError(f"!{tag}: argument '{name}' should be {_describe(annotation)}, got {value!r}", where)


def _raised_by_constructor(error: BaseException, cls: type) -> bool:
    """Whether ``error``, caught in :func:`build`, was raised by the constructor of ``cls`` itself:
    in the body of an ``__init__`` of the object being built (its class's or a base's) or a
    ``__new__`` of ``cls``, or by a constructor written in C (no Python frame below build's),
    rather than in a function they called. Judged by the frame, not by the function's code: torch
    wraps ``nn.Module.__init__`` once dynamo is imported."""
    innermost = error.__traceback__
    if innermost.tb_next is None:
        return True
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    frame = innermost.tb_frame
    if frame.f_code.co_name == "__init__":
        return isinstance(frame.f_locals.get("self"), cls)
    if frame.f_code.co_name == "__new__":
        built = frame.f_locals.get("cls")
        return isinstance(built, type) and issubclass(built, cls)
    return False


def build(cls: type, args: list, kwargs: dict, tag: str, where: str):
    """``cls(*args, **kwargs)``, the user's mistakes reported as one-line config errors at ``where``.

    A mistake is: an argument the signature does not take, lacks or would get with a value of
    the wrong type (checked before the call), a :class:`RupqError` the constructor raises (it
    says what is wrong: ``MinErrorInitializer: p must be positive``), or a ValueError /
    TypeError raised by the constructor itself, which is how a class (torch's too) refuses an
    argument's value (``!Task: epochs must be at least 1, got 0``). Any other exception, and a
    ValueError raised in a function the constructor calls, is a bug: it propagates with its
    traceback.
    """
    signature = _signature(cls)
    if signature is not None:
        _check_arguments(signature, args, kwargs, tag, where)
    try:
        return cls(*args, **kwargs)
    except RupqError as error:
        raise error.at(where)
    except (TypeError, ValueError) as error:
        if not _raised_by_constructor(error, cls):
            raise
        raise ConfigError(f"!{tag}: {error}", where) from error


def _argument_locations(config_path: str, node) -> dict[str, str]:
    """``{"optimizers.sgd.name": "file:line", ...}`` for the keys of an object's mapping node.

    Plain (untagged) mappings are followed, so that values checked only when the object is
    used (an optimizer entry, its scheduler name) can still be reported at their own line.
    Tagged values are objects with locations of their own and are not entered.
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
            locations.setdefault(name, node_location(config_path, key_node))
            if isinstance(value_node, yaml.MappingNode) and value_node.tag == "tag:yaml.org,2002:map":
                walk(value_node, name + ".")

    walk(node, "")
    return locations


def _construct_tagged(loader: ConfigLoader, tag_suffix: str, node):
    where = node_location(loader.config_path, node)
    cls = resolve_tag(tag_suffix, where)
    arguments: dict[str, str] = {}
    if isinstance(node, yaml.MappingNode):
        kwargs = loader.construct_mapping(node, deep=True)
        bad = [k for k in kwargs if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"!{tag_suffix}: argument names must be strings, got {bad[0]!r}", where)
        obj = build(cls, [], kwargs, tag_suffix, where)
        arguments = _argument_locations(loader.config_path, node)
    elif isinstance(node, yaml.SequenceNode):
        obj = build(cls, loader.construct_sequence(node, deep=True), {}, tag_suffix, where)
    else:
        value = loader.construct_scalar(node)
        if value not in ("", None):
            raise ConfigError(
                f"!{tag_suffix}: expected a mapping of arguments or nothing, got the scalar {value!r}", where
            )
        obj = build(cls, [], {}, tag_suffix, where)
    remember(obj, where, arguments)
    return obj


class _ObjectLoader(ConfigLoader):
    """The config loader that builds tagged nodes."""


_ObjectLoader.add_multi_constructor("!", _construct_tagged)


def load_config(path, overrides=()) -> dict:
    """Read a config file and return its top-level objects as a dict.

    ``overrides`` are ``"KEY=VALUE"`` strings (``--set``), applied before any object is built.
    """
    path = Path(path)
    loader, root = compose(path, overrides, _ObjectLoader)
    try:
        config = None if root is None else yaml_errors_as_config_errors(path, lambda: loader.construct_document(root))
    finally:
        loader.dispose()
    if not isinstance(config, dict):
        raise ConfigError(f"a config must be a mapping of names to objects, got {type(config).__name__}", str(path))
    return config
