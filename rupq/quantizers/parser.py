"""The wrapping pass: replace chosen layers of a model by quantized copies of a prototype."""

import copy
import difflib

from torch import nn

from rupq.errors import ConfigError
from rupq.quantizers.modules import QuantModule


def _closest(name: str, candidates) -> str:
    matches = difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.5)
    return f"; closest: {', '.join(matches)}" if matches else ""


class _PerLayerValue:
    """A ``{default: V, exceptions: {layer_name: V}}`` setting (a bare ``V`` means no exceptions)."""

    def __init__(self, setting, option: str):
        self.option = option
        if isinstance(setting, dict):
            unknown = set(setting) - {"default", "exceptions"}
            if unknown:
                raise ConfigError(f"model_parser.{option}: unknown key(s) {sorted(unknown)}; expected default, exceptions")
            if "default" not in setting:
                raise ConfigError(f"model_parser.{option}: missing 'default'")
            self.default = setting["default"]
            self.exceptions = dict(setting.get("exceptions") or {})
        else:
            self.default = setting
            self.exceptions = {}

    def __call__(self, layer_name: str):
        return self.exceptions.get(layer_name, self.default)

    def check_exceptions(self, wrapped_names) -> None:
        for name in self.exceptions:
            if name not in wrapped_names:
                raise ConfigError(
                    f"model_parser.{self.option}.exceptions: '{name}' is not a wrapped layer{_closest(name, wrapped_names)}"
                )


def _bit_width(value, layer_name: str, tensor: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value < 32:
        raise ConfigError(f"model_parser: {tensor} bit width of layer '{layer_name}' must be an integer in [2, 32), got {value!r}")
    return value


class ModelParser:
    """Wraps layers of a model in quantized copies of prototypes.

    Args:
        wrappers: module type name (``Conv2d``) or layer name (``layer4.1.conv2``) -> prototype
            (``QuantConv2d`` / ``QuantLinear``); a layer-name key wins over a type key.
        input_bit_width, weight_bit_width: ``{default: b, exceptions: {layer_name: b}}``.
        half_wave: ``{default: bool, exceptions: {...}}`` for the input quantizers (weights are
            always signed).
    """

    def __init__(self, wrappers: dict, input_bit_width: dict, weight_bit_width: dict, half_wave: dict):
        if not isinstance(wrappers, dict) or not wrappers:
            raise ConfigError("model_parser.wrappers must map module types or layer names to QuantConv2d/QuantLinear")
        for key, prototype in wrappers.items():
            if not isinstance(prototype, QuantModule):
                raise ConfigError(f"model_parser.wrappers.{key}: expected a QuantConv2d or QuantLinear, got {prototype!r}")
        self.wrappers = dict(wrappers)
        self.input_bit_width = _PerLayerValue(input_bit_width, "input_bit_width")
        self.weight_bit_width = _PerLayerValue(weight_bit_width, "weight_bit_width")
        self.half_wave = _PerLayerValue(half_wave, "half_wave")

    def _targets(self, model: nn.Module) -> dict[str, QuantModule]:
        """Layer name -> prototype for every layer to wrap (skipping layers already wrapped)."""
        inside_wrapped = set()
        named = dict(model.named_modules())
        for name, module in named.items():
            if isinstance(module, QuantModule):
                inside_wrapped.update(n for n in named if n.startswith(f"{name}.") or n == name)
        type_names = {type(module).__name__ for module in named.values()}
        for key in self.wrappers:
            if key not in named and key not in type_names:
                raise ConfigError(
                    f"model_parser.wrappers: '{key}' is neither a module type nor a layer name of the model"
                    f"{_closest(key, set(named) | type_names)}"
                )
        targets = {}
        for name, module in named.items():
            if not name or name in inside_wrapped:
                continue
            prototype = self.wrappers.get(name, self.wrappers.get(type(module).__name__))
            if prototype is not None:
                targets[name] = prototype
        return targets

    def parse(self, model: nn.Module) -> nn.Module:
        """Wrap the layers in place; returns ``model``."""
        targets = self._targets(model)
        for setting in (self.input_bit_width, self.weight_bit_width, self.half_wave):
            setting.check_exceptions(targets)
        named = dict(model.named_modules())
        for name, prototype in targets.items():
            half_wave = self.half_wave(name)
            if not isinstance(half_wave, bool):
                raise ConfigError(f"model_parser: half_wave of layer '{name}' must be true or false, got {half_wave!r}")
            wrapper = copy.deepcopy(prototype).attach(
                named[name],
                input_bit_width=_bit_width(self.input_bit_width(name), name, "input"),
                weight_bit_width=_bit_width(self.weight_bit_width(name), name, "weight"),
                half_wave=half_wave,
                layer_name=name,
            )
            parent_name, _, child_name = name.rpartition(".")
            setattr(named[parent_name] if parent_name else model, child_name, wrapper)
        return model
