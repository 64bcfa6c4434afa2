"""``!Accuracy``: top-k classification accuracy in percent."""

import torch

from rupq.tools.metrics.base import Metric


class Accuracy(Metric):
    def __init__(self, top_k: int = 1):
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.top_k = top_k

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        k = min(self.top_k, preds.shape[1])
        top = preds.topk(k, dim=1).indices
        self._add("correct", (top == targets.unsqueeze(1)).any(dim=1).sum())
        self._add("total", targets.numel())

    def compute(self) -> float:
        total = self._sums.get("total")
        if total is None or total == 0:
            return float("nan")
        return float(100.0 * self._sums["correct"] / total)
