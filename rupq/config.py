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
import io
import re
import warnings
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


def resolve_tag(name: str, where: str | None = None, warn: bool = True) -> type:
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


class ConfigCaseWarning(UserWarning):
    """A tag written in another case than the class it names (``!QuantConv2D`` for ``!QuantConv2d``)."""


OVERRIDE_PREFIX = "--set "


def _location(loader_or_path, node) -> str:
    if node.start_mark.name.startswith(OVERRIDE_PREFIX):  # a value given on the command line
        return node.start_mark.name
    return f"{loader_or_path}:{node.start_mark.line + 1}"


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that builds tagged nodes and remembers the file name for messages."""

    config_path = "<config>"

    def compose_document(self):
        # As PyYAML's, but keeping the anchor names, so that the effective config written with
        # overrides applied says `&dataset` / `*dataset` as the file did.
        self.get_event()  # DocumentStartEvent
        node = self.compose_node(None, None)
        self.get_event()  # DocumentEndEvent
        self.anchor_names = {id(anchored): name for name, anchored in self.anchors.items()}
        self.anchors = {}
        return node

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


# YAML 1.1 reads `5e-4` (no dot) as a string; the original RUPQ configs write numbers that way.
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


class _ConfigDumper(yaml.SafeDumper):
    """Writes a node graph back as YAML with the loader's scalar rules and the file's anchor names."""

    anchor_names: dict[int, str] = {}

    def generate_anchor(self, node):
        return self.anchor_names.get(id(node)) or super().generate_anchor(node)


_ConfigDumper.yaml_implicit_resolvers = _ConfigLoader.yaml_implicit_resolvers


def parse_override(text: str) -> tuple[str, yaml.Node]:
    """``"task.epochs=1"`` → ``("task.epochs", <node of 1>)``; the value is read as YAML."""
    key, separator, value = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. task.epochs=1")
    if any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text}: '{key}' is not a dotted path such as dataset.batch_size")
    loader = _ConfigLoader(value)
    loader.name = f"{OVERRIDE_PREFIX}{text}"  # marks, and so error locations, name the override
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or error
        raise ConfigError(f"--set {text}: the value is not valid YAML ({problem})") from None
    finally:
        loader.dispose()
    if node is None:  # `key=` sets null, as `key:` does in a file
        node = yaml.ScalarNode("tag:yaml.org,2002:null", "", loader.get_mark(), loader.get_mark())
    return key, node


def _accepted_arguments(tag: str) -> list[str] | None:
    """Argument names of the class behind ``!tag`` (None: it takes any, or it is unknown here)."""
    try:
        parameters = inspect.signature(resolve_tag(tag, warn=False)).parameters.values()
    except (ConfigError, TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _replace_in_place(target: yaml.Node, value: yaml.Node) -> None:
    """Make ``target`` the new value: every alias of it (a shared anchor) sees the change."""
    target.__class__ = value.__class__
    target.__dict__.clear()
    target.__dict__.update(value.__dict__)


def apply_override(root: yaml.Node, key: str, value: yaml.Node, text: str) -> None:
    """Set ``key`` (dotted, through mappings and list indices) of the composed config ``root`` to ``value``.

    A mapping key may itself contain dots (a layer name such as ``layer4.1.conv2`` in
    ``exceptions``): the longest key that matches the rest of the path wins. A missing key may
    be added only to a tagged object whose class takes that argument (``task.seed``); anywhere
    else it is an error naming the closest keys, so that a typo never passes as a new key.
    """
    node, _ = _walk(root, key, text, create_from=value)
    if node is not None:  # None: added as a new argument
        _replace_in_place(node, value)


def _walk(root: yaml.Node, key: str, text: str, create_from: yaml.Node | None = None):
    """``(node at key, its dotted path)``; with ``create_from``, a missing last argument of a tagged
    object is added with that value (and ``(None, path)`` returned). List items are numbered from 0."""
    parts = key.split(".")
    node, walked, index = root, "", 0
    while index < len(parts):
        if isinstance(node, yaml.ScalarNode) and node.tag.startswith("!") and node.value == "":
            # `initializer: !MinErrorInitializer` (no arguments) gets its first argument.
            _replace_in_place(node, yaml.MappingNode(node.tag, [], node.start_mark, node.end_mark))
        part = parts[index]
        if isinstance(node, yaml.SequenceNode):
            if not (part.isdigit() and int(part) < len(node.value)):
                raise ConfigError(f"--set {text}: {walked} is a list of {len(node.value)}; '{part}' is not an index "
                                  f"in it (0 to {len(node.value) - 1}), or set the whole list: {walked}=[...]")
            node, walked, index = node.value[int(part)], f"{walked}.{part}", index + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"--set {text}: {walked} is a single value ({node.value}), not a mapping")
        keys = {key_node.value: value_node for key_node, value_node in node.value}
        end = next((end for end in range(len(parts), index, -1) if ".".join(parts[index:end]) in keys), None)
        if end is None:
            _add_argument(node, part, create_from, last=index == len(parts) - 1, walked=walked, text=text)
            return None, f"{walked}.{part}"
        matched = ".".join(parts[index:end])
        walked = f"{walked}.{matched}" if walked else matched
        node, index = keys[matched], end
    return node, walked


def _add_argument(node: yaml.MappingNode, name: str, value: yaml.Node | None, last: bool, walked: str, text: str) -> None:
    """Add ``name: value`` to a tagged object that takes it; otherwise say which keys there are."""
    tagged = node.tag.startswith("!")
    accepted = _accepted_arguments(node.tag[1:]) if tagged else []
    if value is not None and last and tagged and (accepted is None or name in accepted):
        node.value.append((yaml.ScalarNode("tag:yaml.org,2002:str", name, value.start_mark, value.end_mark), value))
        return
    existing = [key_node.value for key_node, _ in node.value]
    candidates = existing + [argument for argument in accepted or [] if argument not in existing]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"it has: {', '.join(candidates[:12]) or 'no keys'}"
    where = f"{walked} (a {node.tag})" if tagged else (walked or "the top level")
    raise ConfigError(f"--set {text}: no key '{name}' in {where}; {hint}")


def _read_config_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" if not path.exists() else f"not a file: {path}")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from None


def _yaml_errors_as_config_errors(path: Path, step):
    """Run ``step()`` (compose or construct), reporting any failure as one ``ConfigError`` line."""
    try:
        return step()
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


def _compose(path: Path, overrides) -> tuple[_ConfigLoader, yaml.Node | None]:
    """The loader (ready to construct) and the config's node graph with ``overrides`` applied."""
    parsed = [(parse_override(text), text) for text in overrides]
    loader = _ConfigLoader(_read_config_text(path))
    loader.config_path = str(path)
    root = _yaml_errors_as_config_errors(path, loader.get_single_node)
    if parsed and not isinstance(root, yaml.MappingNode):
        raise ConfigError("--set needs a config that is a mapping of names to objects", str(path))
    for (key, value), text in parsed:
        apply_override(root, key, value, text)
    return loader, root


def load_config(path, overrides=()) -> dict:
    """Read a config file and return its top-level objects as a dict.

    ``overrides`` are ``"KEY=VALUE"`` strings (``--set``), applied before any object is built.
    """
    path = Path(path)
    loader, root = _compose(path, overrides)
    try:
        config = None if root is None else _yaml_errors_as_config_errors(path, lambda: loader.construct_document(root))
    finally:
        loader.dispose()
    if not isinstance(config, dict):
        raise ConfigError(f"a config must be a mapping of names to objects, got {type(config).__name__}", str(path))
    return config


def _write_empty_objects_as_flow_mappings(node: yaml.Node, seen: set[int]) -> None:
    """``!Accuracy`` without arguments would be written ``!Accuracy ''``; ``!Accuracy {}`` reads the same."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode) and node.tag.startswith("!") and node.value == "":
        _replace_in_place(node, yaml.MappingNode(node.tag, [], node.start_mark, node.end_mark, flow_style=True))
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            _write_empty_objects_as_flow_mappings(value_node, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _write_empty_objects_as_flow_mappings(item, seen)


def _dump(node: yaml.Node, anchor_names: dict[int, str], flow: bool) -> str:
    stream = io.StringIO()
    dumper = _ConfigDumper(stream, default_flow_style=flow, sort_keys=False, allow_unicode=True,
                           width=10**6 if flow else 100)
    dumper.anchor_names = anchor_names
    dumper.open()
    dumper.serialize(node)
    dumper.close()
    return stream.getvalue()


def config_value_text(path, key: str) -> str:
    """The YAML of the value at dotted ``key`` on one line, ready to be part of a ``--set`` value
    (``config_value_text(cfg, "task.callbacks.0")`` → ``!BenchmarkSuperresolutionCallback {scale: 2, …}``)."""
    path = Path(path)
    loader, root = _compose(path, ())
    loader.dispose()
    node, _ = _walk(root, key, f"{key}=… (reading {path})")

    def flow_copy(node):  # every alias written out in full, on one line
        if isinstance(node, yaml.MappingNode):
            items = [(key_node, flow_copy(value_node)) for key_node, value_node in node.value]
            return yaml.MappingNode(node.tag, items, node.start_mark, node.end_mark, flow_style=True)
        if isinstance(node, yaml.SequenceNode):
            return yaml.SequenceNode(node.tag, [flow_copy(item) for item in node.value], node.start_mark,
                                     node.end_mark, flow_style=True)
        if node.tag.startswith("!") and node.value == "":
            return yaml.MappingNode(node.tag, [], node.start_mark, node.end_mark, flow_style=True)
        return yaml.ScalarNode(node.tag, node.value, node.start_mark, node.end_mark, style=node.style)

    return _dump(flow_copy(node), {}, flow=True).strip().removesuffix("...").strip()


def config_tree(path, overrides=()):
    """The config as plain data, no object built: a tagged object is the mapping of its arguments
    (``{}`` when it has none), with ``overrides`` (``--set`` texts) applied. For scripts that derive
    configs from a config's values."""
    path = Path(path)
    loader, root = _compose(path, overrides)
    built: dict[int, object] = {}

    def plain(node):
        if id(node) in built:
            return built[id(node)]
        if isinstance(node, yaml.MappingNode):
            built[id(node)] = result = {}
            result.update((key_node.value, plain(value_node)) for key_node, value_node in node.value)
            return result
        if isinstance(node, yaml.SequenceNode):
            built[id(node)] = result = []
            result.extend(plain(item) for item in node.value)
            return result
        if node.tag.startswith("!"):
            return {} if node.value == "" else node.value
        return loader.construct_object(node)

    try:
        return None if root is None else plain(root)
    finally:
        loader.dispose()


def effective_config_text(path, overrides=()) -> str:
    """The config as it runs: the file itself without overrides, else the YAML with them applied.

    Written to ``version_N/config.yaml``; loading it gives the same objects as ``load_config(path,
    overrides)``. With overrides the file's comments are lost, so a header names the source and them.
    """
    path = Path(path)
    if not overrides:
        return _read_config_text(path)
    loader, root = _compose(path, overrides)
    loader.dispose()
    _write_empty_objects_as_flow_mappings(root, set())
    header = f"# {path} with\n" + "".join(f"#   --set {text}\n" for text in overrides)
    return header + _dump(root, loader.anchor_names, flow=False)
