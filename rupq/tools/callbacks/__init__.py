"""Callback tags."""

from rupq.tools.callbacks.base import Callback
from rupq.tools.callbacks.benchmark_superresolution import BenchmarkSuperresolutionCallback
from rupq.tools.callbacks.model_saver import ModelSaver

__all__ = ["BenchmarkSuperresolutionCallback", "Callback", "ModelSaver"]
