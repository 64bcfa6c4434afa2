"""bench_qat on a model other than resnet18: the recipes' 8-bit first layer lands on that model's first layer."""

import torch

from bench.bench_qat import first_layer, recipe_parser
from rupq.models import create_model
from rupq.quantizers.modules import QuantModule


def test_recipes_keep_their_first_layer_rule_on_another_model():
    model = create_model("torchvision:mobilenet_v3_small")
    assert first_layer(model) == "features.0.0"
    recipe_parser("w4a4_rupq", model).parse(model)
    layers = [(name, layer) for name, layer in model.named_modules() if isinstance(layer, QuantModule)]
    assert layers[0][0] == "features.0.0"
    for name, layer in layers:
        bits = 8 if name == "features.0.0" else 4
        quantizers = layer.quantizer.input_quantizer, layer.quantizer.weight_quantizer
        assert [q.bit_width for q in quantizers] == [bits, bits], name
        assert layer.quantizer.input_quantizer.half_wave == (name != "features.0.0"), name
    assert first_layer(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(2, 2))) == "1"


def test_variants_time_only_the_models_asked_for():
    """``--variants lsqplus``: FP and LSQ+ side by side, nothing else (what a quick look at a big
    model needs: the full set compiles two whole models and takes many minutes)."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    command = [sys.executable, "-m", "bench.bench_qat", "--model", "torchvision:mobilenet_v3_small", "--batch", "2",
               "--size", "32", "--steps", "1", "--warmup", "1", "--variants", "lsqplus"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "RUPQ_COMPILE": "0", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("  ")[1] for line in result.stdout.splitlines() if line.startswith("  ") and " ms " in line]
    assert rows == ["FP eager", "LSQ+ w4a4 (compiled quantizers)"] * 2, result.stdout
