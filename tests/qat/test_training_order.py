"""The order the Python API documents — quantize, optimizers, DistributedDataParallel — and a
quantized model under ``torch.compile`` and bf16 autocast."""

import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import rupq
from rupq.quantizers import Standardization

HERE = Path(__file__).resolve().parent


def test_quantize_then_optimizers_then_ddp_keeps_the_processes_identical(tmp_path):
    """Two CPU processes under torchrun, each calibrating and training on its own batches: DDP
    starts them from rank 0's quantizers and averages every gradient, quantizers' included."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(HERE / "ddp_user_loop.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    parameters = dict(rupq.quantize(torchvision.models.resnet18(num_classes=4), "rupq_w4a4", verbose=False)
                      .named_parameters())
    assert sum("quantizer" in name for name in parameters) == 2 * 21 + 21  # steps, and the inputs' offsets
    # Parameters are the same in both processes; buffers that a forward pass updates in each
    # process (BatchNorm statistics, σ EMAs) are DDP's to broadcast at the next forward.
    differing = [name for name in parameters if not torch.equal(first[name], second[name])]
    assert differing == []


def small_convnet() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    )


def test_compiled_and_bf16_quantized_model_trains_like_the_eager_fp32_one():
    torch.manual_seed(0)
    model = rupq.quantize(small_convnet(), "rupq_w4a4", verbose=False)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(4, (4,))
    for module in model.modules():
        if isinstance(module, Standardization) and module.momentum:
            # The EMA moves 1000 times faster than the paper's 0.9999: a backward pass that read
            # σ's EMA after the step had updated it would be off by percents, not by 1e-4.
            module.momentum = 0.9
    rupq.calibrate(model, [images])
    with torch.no_grad():
        # MinErrorInitializer may pick max|w| / p, which puts a weight exactly on the clip bound,
        # where the compiled division (an ulp away) and the eager one may disagree on the side.
        for name, parameter in model.named_parameters():
            if name.endswith("step"):
                parameter.mul_(1.0007)
    model.train()

    def loss_and_gradients(forward, autocast=False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(forward(images).float(), labels)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    eager_loss, eager_gradients = loss_and_gradients(model)
    model.load_state_dict(state)  # σ EMAs back to where the eager step found them
    compiled_loss, compiled_gradients = loss_and_gradients(torch.compile(model))
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-4, atol=1e-5)
    assert compiled_gradients.keys() == eager_gradients.keys()
    # A step's gradient is a sum of terms of both signs (q - t): reordered by the compiler, a small
    # one moves by more than its own 1e-3, so the absolute tolerance follows the largest gradient.
    largest = max(float(gradient.abs().max()) for gradient in eager_gradients.values())
    for name, gradient in eager_gradients.items():
        assert torch.allclose(compiled_gradients[name], gradient, rtol=1e-3, atol=1e-4 * largest), name
    model.load_state_dict(state)
    bf16_loss, bf16_gradients = loss_and_gradients(model, autocast=True)
    assert torch.isfinite(bf16_loss) and abs(bf16_loss - eager_loss) <= 0.05 * eager_loss
    assert all(torch.isfinite(gradient).all() for gradient in bf16_gradients.values())
    assert bf16_gradients.keys() == eager_gradients.keys()
