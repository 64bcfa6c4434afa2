"""Quantizers in data-parallel training: one global batch cut into equal shards.

Under ``torch.nn.DataParallel`` (one shard per GPU replica) and ``DistributedDataParallel``
(one shard per process) every replica quantizes its shard of the activations, and the
gradients of the shared parameters are added up (DataParallel) or averaged (DDP, whose
per-process losses are means over the local shard). Two things of an *activation* quantizer
depend on the whole batch and would silently change with the number of devices:

- LSQ's gradient scale ``g = 1 / sqrt(p · numel(x) / numel(s))``: computed from a shard,
  ``numel(x)`` is ``shards`` times too small and the step gradient ``sqrt(shards)`` times too
  large. :func:`shard_activation_quantizers` makes input quantizers count ``shards × numel``.
- RUPQ's activation ``Standardization`` (``σ_new = m · ema + (1 - m) · std(x)``): ``std(x)`` of
  one shard. With a process group (DDP) training steps use the std of the global batch
  (:func:`~rupq.quantizers.transformations.global_standard_deviation`), so every process
  computes the same σ and holds the same EMA, and the result equals one process on the global
  batch. DataParallel has no way to communicate inside a forward pass: there each replica uses
  its shard's std and the EMA kept is the first replica's (its buffers share storage with the
  wrapped model; the other replicas' updates are dropped, as for BatchNorm statistics).

Weights are not sharded (every replica quantizes the same weight), so weight quantizers are
left alone.
"""

from torch import nn

from rupq.quantizers.walk import quant_layers_of


def shard_activation_quantizers(model: nn.Module, shards: int, process_group=None) -> None:
    """Tell every input quantizer of ``model`` that it sees ``1 / shards`` of the global batch.

    ``process_group`` (DDP's group, e.g. ``torch.distributed.group.WORLD``) also makes their
    ``Standardization`` take σ over the global batch in training steps; ``None`` keeps it local.
    ``shards = 1`` without a group undoes both.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    for _, layer in quant_layers_of(model):
        layer.quantizer.input_quantizer.set_sharding(shards, process_group)
