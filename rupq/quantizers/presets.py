"""The paper's recipes as named presets for any model: ``rupq_w4a4``, ``lsqplus_w2a2``, ``lsq_w8a8`` …

Each is the ``model_parser`` of the seed's resnet18 recipes (``rupq/examples/quantized/
classification/resnet18``) with the layer names replaced by rules that hold on any model:

- *RUPQ*: ``StepOffsetQuantizer`` inputs with ``Standardization(momentum=0.9999, std_init=1.0)``,
  per-channel ``StepQuantizer`` weights standardized per output channel, ``MinErrorInitializer``;
- *LSQ+*: the same quantizers without standardization, ``MeanStdInitializer``;
- *LSQ*: a step only (no offset, no standardization, one weight step per layer), ``MeanStdInitializer``.

The first and the last layer (``<first>`` / ``<last>``: see :mod:`rupq.quantizers.parser`) stay at
8 bits. Inputs are quantized signed everywhere: the seed's ``half_wave: true`` assumes every
layer reads a ReLU output, which GELU, hardswish, LayerNorm and residual inputs are not; an
unsigned grid would clip their negative half. A config can still set ``half_wave`` per layer.
"""

from rupq.errors import ConfigError
from rupq.quantizers.initializers import MeanStdInitializer, MinErrorInitializer
from rupq.quantizers.modules import ModuleQuantizer, QuantConv2d, QuantLinear
from rupq.quantizers.parser import FIRST, LAST, ModelParser, _closest
from rupq.quantizers.quantizers import StepOffsetQuantizer, StepQuantizer
from rupq.quantizers.transformations import Standardization

METHODS = ("rupq", "lsqplus", "lsq")
BIT_WIDTHS = (2, 3, 4, 8)
FIRST_LAST_BITS = 8


def preset_names() -> list[str]:
    return [f"{method}_w{bits}a{bits}" for method in METHODS for bits in BIT_WIDTHS]


def _module_quantizer(method: str, weight_dims: list[int]) -> ModuleQuantizer:
    if method == "rupq":
        return ModuleQuantizer(
            StepOffsetQuantizer(MinErrorInitializer(), Standardization(momentum=0.9999, std_init=1.0)),
            StepQuantizer(MinErrorInitializer(), Standardization(dim=weight_dims), per_channel=True),
        )
    if method == "lsqplus":
        return ModuleQuantizer(StepOffsetQuantizer(MeanStdInitializer()), StepQuantizer(MeanStdInitializer(), per_channel=True))
    return ModuleQuantizer(StepQuantizer(MeanStdInitializer()), StepQuantizer(MeanStdInitializer()))


def preset(name: str) -> ModelParser:
    """A fresh :class:`ModelParser` for the preset ``name``."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset '{name}'{_closest(name, preset_names())} (rupq.presets() lists them)")
    method, bits = name.rsplit("_w", 1)[0], int(name.rsplit("a", 1)[1])
    bit_width = {"default": bits, "exceptions": {FIRST: FIRST_LAST_BITS, LAST: FIRST_LAST_BITS}}
    return ModelParser(
        wrappers={
            "Conv2d": QuantConv2d(_module_quantizer(method, [1, 2, 3])),
            "Linear": QuantLinear(_module_quantizer(method, [1])),
        },
        input_bit_width=bit_width,
        weight_bit_width=dict(bit_width),
        half_wave={"default": False},
    )
