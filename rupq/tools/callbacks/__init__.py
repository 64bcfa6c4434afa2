"""Callback tags."""

from rupq.tools.callbacks.base import Callback
from rupq.tools.callbacks.model_saver import ModelSaver

__all__ = ["Callback", "ModelSaver"]
