import math

import torch

from rupq.tools.metrics import Accuracy


def test_top1_and_top5_accumulate_over_batches():
    top1, top5 = Accuracy(), Accuracy(top_k=5)
    scores = torch.arange(10, 0, -1, dtype=torch.float).repeat(4, 1)  # ranks classes 0, 1, 2, …
    for metric in (top1, top5):
        metric.update(scores, torch.tensor([0, 4, 5, 9]))
        metric.update(scores[:2], torch.tensor([1, 0]))
    assert top1.compute() == 100.0 * 2 / 6
    assert top5.compute() == 100.0 * 4 / 6
    top1.reset()
    assert math.isnan(top1.compute())
