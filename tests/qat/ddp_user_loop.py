"""A user's own training loop under ``torchrun``, in the documented order: ``rupq.quantize`` →
``rupq.calibrate`` → the optimizers over ``rupq.param_groups`` → ``DistributedDataParallel``.

    torchrun --standalone --nproc_per_node 2 ddp_user_loop.py OUT_DIR

Each process trains on its own batches (seeded by its rank) and writes its final state dict to
``OUT_DIR/rank{RANK}.pt``; the test checks that the processes end identical.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch.nn.parallel import DistributedDataParallel

import rupq

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)  # the same float model in every process
model = rupq.quantize(torchvision.models.resnet18(num_classes=4), "rupq_w4a4", verbose=False)
data = torch.Generator().manual_seed(rank)  # but each process its own data
rupq.calibrate(model, [torch.randn(4, 3, 32, 32, generator=data)])
groups = rupq.param_groups(model)
optimizers = [
    torch.optim.SGD(groups["weight"], lr=0.01, momentum=0.9),
    torch.optim.Adam([{"params": groups["quant_weight"], "lr": 1e-5}, {"params": groups["quant_input"], "lr": 1e-3}]),
]
model = DistributedDataParallel(model)
model.train()
for step in range(3):
    images, labels = torch.randn(4, 3, 32, 32, generator=data), torch.randint(4, (4,), generator=data)
    loss = F.cross_entropy(model(images), labels)
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
torch.save(model.module.state_dict(), Path(sys.argv[1]) / f"rank{rank}.pt")
dist.destroy_process_group()
