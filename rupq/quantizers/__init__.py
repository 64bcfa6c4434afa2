"""The method: LSQ grid, quantizers, standardization, initializers, quantized layers, model parser.

``__all__`` lists the config tags (classes) and the helper functions of the public API.
"""

from rupq.quantizers.initialization import initialize_quantizers
from rupq.quantizers.initializers import MeanStdInitializer, MinErrorInitializer
from rupq.quantizers.modules import ModuleQuantizer, QuantConv2d, QuantLinear
from rupq.quantizers.parser import ModelParser
from rupq.quantizers.quantizers import StepOffsetQuantizer, StepQuantizer
from rupq.quantizers.report import calibration_report
from rupq.quantizers.transformations import Standardization
from rupq.quantizers.walk import quantizers_of

__all__ = [
    "ModelParser",
    "QuantConv2d",
    "QuantLinear",
    "ModuleQuantizer",
    "StepQuantizer",
    "StepOffsetQuantizer",
    "Standardization",
    "MinErrorInitializer",
    "MeanStdInitializer",
    "initialize_quantizers",
    "calibration_report",
    "quantizers_of",
]
