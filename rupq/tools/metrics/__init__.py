"""Metric tags (torchmetrics protocol: ``update``, ``compute``, ``reset``)."""

from rupq.tools.metrics.accuracy import Accuracy
from rupq.tools.metrics.base import Metric
from rupq.tools.metrics.map import MAP
from rupq.tools.metrics.psnr import PSNR

__all__ = ["Accuracy", "MAP", "Metric", "PSNR"]
