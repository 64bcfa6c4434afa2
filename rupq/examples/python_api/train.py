"""RUPQ in your own training loop: a torchvision ResNet-18 trained on Fashion-MNIST in full
precision, quantized to 4 bits with the paper's recipe, trained on, evaluated, exported to ONNX.

    python rupq/examples/python_api/train.py [--steps 900] [--out resnet18_w4a4.onnx] [--root FOLDER]
"""

import argparse

import torch
import torch.nn.functional as F
import torchvision

import rupq
from rupq.dataloaders import FashionMNISTDataloader


def train(model, data, optimizers, steps):
    model.train()
    for _, (images, labels) in zip(range(steps), data.train_dataloader()):
        loss = F.cross_entropy(model(images), labels)
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()


@torch.no_grad()
def accuracy(model, data) -> float:
    model.eval()
    results = [(model(images).argmax(1) == labels).float() for images, labels in data.val_dataloader()]
    return 100 * torch.cat(results).mean().item()


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=900, help="training steps of each phase (batch 64)")
parser.add_argument("--out", default="resnet18_w4a4.onnx", help="the ONNX file to write")
parser.add_argument("--root", help="Fashion-MNIST folder (default: the Debian package's)")
args = parser.parse_args()

torch.manual_seed(0)
data = FashionMNISTDataloader(batch_size=64, root=args.root)
model = torchvision.models.resnet18(num_classes=10)
model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # grey images
train(model, data, [torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)], args.steps)
print(f"full precision: {accuracy(model, data):.2f} % top-1")

model = rupq.quantize(model, "rupq_w4a4")  # in place: 8-bit first and last layers, 4-bit elsewhere
groups = rupq.param_groups(model)  # the paper's optimizers: SGD for weights, Adam for quantizers
optimizers = [torch.optim.SGD(groups["weight"], lr=0.01, momentum=0.9),
              torch.optim.Adam(groups["quant_weight"], lr=1e-5),
              torch.optim.Adam(groups["quant_input"], lr=1e-3)]
rupq.calibrate(model, [next(iter(data.train_dataloader()))[0]])  # steps from data, before training
train(model, data, optimizers, args.steps)
print(f"RUPQ w4a4: {accuracy(model, data):.2f} % top-1")

example_inputs = next(iter(data.val_dataloader()))[0][:16]
rupq.export(model, args.out, example_inputs)  # checked in onnxruntime layer by layer
