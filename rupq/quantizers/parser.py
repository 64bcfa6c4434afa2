"""The wrapping pass: replace chosen layers of a model by quantized copies of a prototype.

Layer-name keys (of ``wrappers``, of the ``exceptions`` of each per-layer setting, of ``skip``
and of :func:`rupq.quantize`'s ``layers``) are exact module names, glob patterns over module
names (:func:`fnmatch.fnmatchcase`: ``features.0.*``, ``*``), or, in ``exceptions``,
``<first>`` / ``<last>``: the first and the last layer the wrappers match, in the model's
registration order (``named_modules``). That order, not a forward pass, decides them, because it
needs no example input and it is what the seed configs name: ``conv1`` / ``fc`` of resnet18,
``features.0.0`` / ``classifier.1`` of mobilenet_v2, ``conv1.0`` / ``conv3.0`` of srresnet,
``head.0`` / ``tail.1`` of edsr, ``module_list.0.conv_0`` of YOLO-v3 — the layer that reads
the input and the layer that produces the output. A model that registers its layers out of
running order (or has several outputs) names them explicitly instead.
"""

import copy
import difflib
import fnmatch

from torch import nn

from rupq.errors import ConfigError
from rupq.quantizers.modules import QuantModule
from rupq.quantizers.walk import replace_modules

FIRST, LAST = "<first>", "<last>"

#: Parent types whose forward reads a child's weight directly instead of calling the child:
#: wrapping that child would leave the parent computing with the float weight (or failing on
#: ``.weight`` of the wrapper), so the child stays in float.
READ_BY_PARENT = {nn.MultiheadAttention: ("out_proj",)}

#: The attribute of a parsed model that records why layers matched by the wrappers stayed in float.
FLOAT_REASONS = "rupq_float_layers"


def _closest(name: str, candidates) -> str:
    matches = difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.5)
    return f"; closest: {', '.join(matches)}" if matches else ""


def layers_read_by_parent(model: nn.Module) -> dict[str, str]:
    """``{layer name: reason}`` for the layers of :data:`READ_BY_PARENT`."""
    reasons = {}
    for name, module in model.named_modules():
        for parent_type, children in READ_BY_PARENT.items():
            if isinstance(module, parent_type):
                for child in children:
                    full = f"{name}.{child}" if name else child
                    reasons[full] = f"read directly by its parent {type(module).__name__} (its forward uses {child}.weight)"
    return reasons


def is_pattern(key: str) -> bool:
    return any(character in key for character in "*?[")


def matching_layers(key: str, names: list[str]) -> list[str]:
    """The names of ``names`` (in order) that the layer-name key selects."""
    if key == FIRST:
        return names[:1]
    if key == LAST:
        return names[-1:]
    if is_pattern(key):
        return [name for name in names if fnmatch.fnmatchcase(name, key)]
    return [key] if key in names else []


def resolve_keys(
    mapping: dict, names: list[str], where: str, missing: str | None = None, hints=None
) -> dict[str, object]:
    """``{layer name: value}`` for the layers of ``names`` that ``mapping``'s keys select.

    An exact name wins over ``<first>`` / ``<last>``, which win over glob patterns; of two
    patterns the later one wins. A key that selects no layer is an error naming the closest of
    ``hints`` (default: ``names``); ``<first>`` / ``<last>`` of no layer select nothing.
    """
    ranked = sorted(enumerate(mapping.items()), key=lambda item: (_rank(item[1][0]), item[0]))
    resolved = {}
    for _, (key, value) in ranked:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: layer keys must be names or patterns, got {key!r}")
        selected = matching_layers(key, names)
        if not selected and key not in (FIRST, LAST):
            what = missing or ("matches no wrapped layer" if is_pattern(key) else "is not a wrapped layer")
            raise ConfigError(f"{where}: '{key}' {what}{_closest(key, names if hints is None else hints)}")
        resolved.update(dict.fromkeys(selected, value))
    return resolved


def _rank(key) -> int:
    if not isinstance(key, str) or not (is_pattern(key) or key in (FIRST, LAST)):
        return 2
    return 1 if key in (FIRST, LAST) else 0


class _PerLayerValue:
    """A ``{default: V, exceptions: {layer key: V}}`` setting (a bare ``V`` means no exceptions),
    with later overrides (``rupq.quantize``'s ``layers``) that win over the exceptions."""

    def __init__(self, setting, option: str):
        self.option = option
        if isinstance(setting, dict):
            unknown = set(setting) - {"default", "exceptions"}
            if unknown:
                raise ConfigError(f"model_parser.{option}: unknown key(s) {sorted(unknown)}; expected default, exceptions")
            if "default" not in setting:
                raise ConfigError(f"model_parser.{option}: missing 'default'")
            self.default = setting["default"]
            exceptions = setting.get("exceptions") or {}
            if not isinstance(exceptions, dict):
                raise ConfigError(f"model_parser.{option}.exceptions must map layer names to values, got {exceptions!r}")
        else:
            self.default = setting
            exceptions = {}
        self.levels = [(f"model_parser.{option}.exceptions", dict(exceptions))]

    def override(self, mapping: dict, where: str) -> None:
        self.levels.append((where, dict(mapping)))

    def resolve(self, names: list[str]) -> dict[str, object]:
        values = dict.fromkeys(names, self.default)
        for where, mapping in self.levels:
            values.update(resolve_keys(mapping, names, where))
        return values


def _bit_width(value, layer_name: str, tensor: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value < 32:
        raise ConfigError(f"model_parser: {tensor} bit width of layer '{layer_name}' must be an integer in [2, 32), got {value!r}")
    return value


class ModelParser:
    """Wraps layers of a model in quantized copies of prototypes.

    Args:
        wrappers: module type name (``Conv2d``: that type and its subclasses) or layer name /
            pattern (``layer4.1.conv2``, ``features.*``) -> prototype (``QuantConv2d`` /
            ``QuantLinear``); a layer-name key wins over a type key, the most derived type key
            over a base one. A type key the model does not use wraps nothing; a layer key that
            matches nothing is an error.
        input_bit_width, weight_bit_width: ``{default: b, exceptions: {layer key: b}}`` (keys:
            names, patterns, ``<first>``, ``<last>``).
        half_wave: ``{default: bool, exceptions: {...}}`` for the input quantizers (weights are
            always signed).
        skip: layer names or patterns left in float.
    """

    def __init__(
        self, wrappers: dict, input_bit_width: dict, weight_bit_width: dict, half_wave: dict, skip: list | None = None
    ):
        if not isinstance(wrappers, dict) or not wrappers:
            raise ConfigError("model_parser.wrappers must map module types or layer names to QuantConv2d/QuantLinear")
        for key, prototype in wrappers.items():
            if not isinstance(prototype, QuantModule):
                raise ConfigError(f"model_parser.wrappers.{key}: expected a QuantConv2d or QuantLinear, got {prototype!r}")
        self.wrappers = dict(wrappers)
        self.input_bit_width = _PerLayerValue(input_bit_width, "input_bit_width")
        self.weight_bit_width = _PerLayerValue(weight_bit_width, "weight_bit_width")
        self.half_wave = _PerLayerValue(half_wave, "half_wave")
        if isinstance(skip, str):
            skip = [skip]
        if skip is not None and not (isinstance(skip, (list, tuple)) and all(isinstance(key, str) for key in skip)):
            raise ConfigError(f"model_parser.skip must be a list of layer names or patterns, got {skip!r}")
        self.skip = list(skip or [])

    def _candidates(self, model: nn.Module) -> dict[str, QuantModule]:
        """Layer name -> prototype for every layer the wrappers select, in registration order
        (skipping layers already wrapped and the layers inside them)."""
        named = dict(model.named_modules())
        inside_wrapped = set()
        for name, module in named.items():
            if isinstance(module, QuantModule):
                inside_wrapped.update(n for n in named if n.startswith(f"{name}.") or n == name)
        model_types = {cls.__name__ for module in named.values() for cls in type(module).__mro__}
        layer_names = [name for name in named if name]
        type_keys, layer_keys = {}, {}
        for key, prototype in self.wrappers.items():
            is_type = key in model_types or key == prototype.wrapped_type.__name__
            if is_type and not (key in named or is_pattern(key)):
                type_keys[key] = prototype
            else:
                layer_keys[key] = prototype
        hints = set(layer_names) | {type(module).__name__ for module in named.values()}
        by_name = resolve_keys(
            layer_keys, layer_names, "model_parser.wrappers", "is neither a module type nor a layer name of the model", hints
        )
        candidates = {}
        for name in layer_names:
            if name in inside_wrapped:
                continue
            prototype = by_name.get(name)
            if prototype is None:
                prototype = next((type_keys[c.__name__] for c in type(named[name]).__mro__ if c.__name__ in type_keys), None)
            if prototype is not None:
                candidates[name] = prototype
        return candidates

    def parse(self, model: nn.Module) -> nn.Module:
        """Wrap the layers in place; returns ``model``. Layers the wrappers select but that stay
        in float are recorded, with the reason, for :func:`rupq.quantizers.report.summary`."""
        candidates = self._candidates(model)
        candidate_names = list(candidates)
        skipped = resolve_keys({key: f"skipped by pattern '{key}'" for key in self.skip}, candidate_names, "model_parser.skip")
        read_by_parent = layers_read_by_parent(model)
        float_reasons = dict(getattr(model, FLOAT_REASONS, {}))
        for name in candidate_names:
            reason = skipped.get(name) or read_by_parent.get(name)
            if reason is None:
                continue
            if name in self.wrappers and name in read_by_parent:
                raise ConfigError(f"model_parser.wrappers: layer '{name}' cannot be quantized: {reason}")
            float_reasons[name] = reason
            del candidates[name]
        input_bits = self.input_bit_width.resolve(candidate_names)
        weight_bits = self.weight_bit_width.resolve(candidate_names)
        half_waves = self.half_wave.resolve(candidate_names)
        named = dict(model.named_modules())
        wrappers = {}
        for name, prototype in candidates.items():
            half_wave = half_waves[name]
            if not isinstance(half_wave, bool):
                raise ConfigError(f"model_parser: half_wave of layer '{name}' must be true or false, got {half_wave!r}")
            wrappers[name] = copy.deepcopy(prototype).attach(
                named[name],
                input_bit_width=_bit_width(input_bits[name], name, "input"),
                weight_bit_width=_bit_width(weight_bits[name], name, "weight"),
                half_wave=half_wave,
                layer_name=name,
            )
        replace_modules(model, wrappers)
        if not any(isinstance(module, QuantModule) for module in model.modules()):
            kinds = ", ".join(sorted(self.wrappers))
            raise ConfigError(
                f"model_parser wraps no layer of this {type(model).__name__}: the wrappers ({kinds}) match no "
                "layer that can be quantized (RUPQ quantizes Conv2d and Linear layers, subclasses included)"
            )
        setattr(model, FLOAT_REASONS, float_reasons)
        return model
