"""Callback tags."""

from rupq.tools.callbacks.base import Callback
from rupq.tools.callbacks.batchnorm import BatchNormReestimationCallback
from rupq.tools.callbacks.benchmark_superresolution import BenchmarkSuperresolutionCallback
from rupq.tools.callbacks.model_saver import ModelSaver
from rupq.tools.callbacks.quantization import QuantImagesCallback, QuantVarsCallback
from rupq.tools.callbacks.validate_coco import ValidateCOCOCallback

__all__ = [
    "BatchNormReestimationCallback",
    "BenchmarkSuperresolutionCallback",
    "Callback",
    "ModelSaver",
    "QuantImagesCallback",
    "QuantVarsCallback",
    "ValidateCOCOCallback",
]
