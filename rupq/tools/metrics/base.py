"""Metric protocol (as torchmetrics): ``update(preds, targets)``, ``compute()``, ``reset()``.

State is kept as running sums in tensors so that a distributed run can add them across
processes (:meth:`Metric.sync`) before ``compute()``.
"""

import torch
import torch.distributed as dist


class Metric:
    """Accumulates sums in ``self._sums`` (name -> float64 tensor); subclasses fill them."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self._sums = {}

    def _add(self, name: str, value) -> None:
        value = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
        self._sums[name] = self._sums.get(name, torch.zeros((), dtype=torch.float64)) + value

    def state_dict(self) -> dict:
        """The accumulated sums (for the checkpoint of an interrupted epoch)."""
        return {name: value.clone() for name, value in self._sums.items()}

    def load_state_dict(self, state: dict) -> None:
        self._sums = {name: value.clone() for name, value in state.items()}

    def sync(self) -> None:
        """Sum the accumulated state over all processes of a distributed run."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        names = sorted(self._sums)
        if not names:
            return
        packed = torch.stack([self._sums[n].reshape(()) for n in names])
        if dist.get_backend() == "nccl":
            packed = packed.cuda()
        dist.all_reduce(packed)
        self._sums = {n: v.cpu() for n, v in zip(names, packed)}

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError
