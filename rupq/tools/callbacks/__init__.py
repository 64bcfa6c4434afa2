"""Callback tags."""

from rupq.tools.callbacks.base import Callback
from rupq.tools.callbacks.benchmark_superresolution import BenchmarkSuperresolutionCallback
from rupq.tools.callbacks.model_saver import ModelSaver
from rupq.tools.callbacks.validate_coco import ValidateCOCOCallback

__all__ = ["BenchmarkSuperresolutionCallback", "Callback", "ModelSaver", "ValidateCOCOCallback"]
