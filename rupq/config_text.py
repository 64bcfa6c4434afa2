"""The config as YAML, before any object is built: reading it, ``--set`` overrides, and writing it back.

The loader's rules (``5e-4`` is a number, anchors keep their names, errors name the file and
line) are shared with :mod:`rupq.config`, which adds the construction of tagged objects.
``--set KEY=VALUE`` overrides change the composed node graph (:func:`apply_override`), so that
every alias of an anchored node sees them; :func:`effective_config_text` writes the result back
(``version_N/config.yaml``), :func:`config_tree` and :func:`config_value_text` read it as plain
data or one line of YAML.
"""

import difflib
import inspect
import io
import re
from pathlib import Path

import yaml

from rupq.errors import ConfigError, RupqError
from rupq.tags import resolve_tag

OVERRIDE_PREFIX = "--set "


def node_location(config_path: str, node) -> str:
    """``file:line`` of ``node``, or the ``--set`` text that gave it."""
    if node.start_mark.name.startswith(OVERRIDE_PREFIX):  # a value given on the command line
        return node.start_mark.name
    return f"{config_path}:{node.start_mark.line + 1}"


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader with the config's scalar rules that remembers the file name for messages.

    It builds no tagged object (:mod:`rupq.config` adds that); composing, overrides and plain
    values need none."""

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
                raise ConfigError("mapping keys must be plain names", node_location(self.config_path, key_node))
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):
        # PyYAML's own scalar constructors raise plain ValueError/TypeError/OverflowError for
        # values such as the impossible date `2020-13-45` or `!!float abc`; report them at their
        # line. A tagged object's constructor is not PyYAML's: what it raises is left to
        # rupq.config.build (a scalar has no children, so nothing else can be raised inside it).
        if not isinstance(node, yaml.ScalarNode) or node.tag.startswith("!"):
            return super().construct_object(node, deep=deep)
        try:
            return super().construct_object(node, deep=deep)
        except (RupqError, yaml.YAMLError, RecursionError):
            raise
        except Exception as error:
            raise ConfigError(f"cannot read this value: {error}", node_location(self.config_path, node)) from error


# YAML 1.1 reads `5e-4` (no dot) as a string; the original RUPQ configs write numbers that way.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
ConfigLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


class ConfigDumper(yaml.SafeDumper):
    """Writes a node graph back as YAML with the loader's scalar rules and the file's anchor names."""

    anchor_names: dict[int, str] = {}

    def generate_anchor(self, node):
        return self.anchor_names.get(id(node)) or super().generate_anchor(node)


ConfigDumper.yaml_implicit_resolvers = ConfigLoader.yaml_implicit_resolvers


def parse_override(text: str) -> tuple[str, yaml.Node]:
    """``"task.epochs=1"`` → ``("task.epochs", <node of 1>)``; the value is read as YAML."""
    key, separator, value = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. task.epochs=1")
    if any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text}: '{key}' is not a dotted path such as dataset.batch_size")
    loader = ConfigLoader(value)
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


def read_config_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" if not path.exists() else f"not a file: {path}")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from None


def yaml_errors_as_config_errors(path: Path, step):
    """Run ``step()`` (compose or construct), reporting YAML's errors as one ``ConfigError`` line."""
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


def _compose_text(path: Path, loader: ConfigLoader) -> yaml.Node | None:
    try:
        return yaml_errors_as_config_errors(path, loader.get_single_node)
    except RupqError:
        raise
    except Exception as error:  # a last resort: only the file's text is read here, the user gets one line
        raise ConfigError(f"cannot read config: {type(error).__name__}: {error}", str(path)) from error


def compose(path: Path, overrides, loader_class: type[ConfigLoader] = ConfigLoader):
    """``(loader, root)``: a ``loader_class`` ready to construct, and the config's node graph (None
    for an empty file) with ``overrides`` applied."""
    parsed = [(parse_override(text), text) for text in overrides]
    loader = loader_class(read_config_text(path))
    loader.config_path = str(path)
    root = _compose_text(path, loader)
    if parsed and not isinstance(root, yaml.MappingNode):
        raise ConfigError("--set needs a config that is a mapping of names to objects", str(path))
    for (key, value), text in parsed:
        apply_override(root, key, value, text)
    return loader, root


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
    dumper = ConfigDumper(stream, default_flow_style=flow, sort_keys=False, allow_unicode=True,
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
    loader, root = compose(path, ())
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
    loader, root = compose(path, overrides)
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
        return read_config_text(path)
    loader, root = compose(path, overrides)
    loader.dispose()
    _write_empty_objects_as_flow_mappings(root, set())
    header = f"# {path} with\n" + "".join(f"#   --set {text}\n" for text in overrides)
    return header + _dump(root, loader.anchor_names, flow=False)
