"""``rupq/examples/python_api/train.py``, the README's own-training-loop example, shortened: a few
steps per phase on a tiny Fashion-MNIST folder, as a user runs it (a fresh interpreter)."""

import re
import subprocess
import sys

from conftest import ONE_THREAD, REPO, write_tiny_fashion_mnist

EXAMPLE = REPO / "rupq" / "examples" / "python_api" / "train.py"


def test_example_trains_quantizes_evaluates_and_exports(tmp_path):
    root = write_tiny_fashion_mnist(tmp_path / "fashion", train=64, test=32)
    out = tmp_path / "resnet18_w4a4.onnx"
    result = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "2", "--root", str(root), "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**__import__("os").environ, **ONE_THREAD})
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^full precision: \d+\.\d\d % top-1$", result.stdout, re.M), result.stdout
    assert re.search(r"^RUPQ w4a4: \d+\.\d\d % top-1$", result.stdout, re.M), result.stdout
    assert re.search(r"^conv1 .* 8 .* 8", result.stdout, re.M) and re.search(r"^fc .* 8 .* 8", result.stdout, re.M), result.stdout
    assert "onnxruntime matches PyTorch layer by layer" in result.stdout and out.is_file()


def test_example_stays_short():
    assert len(EXAMPLE.read_text().splitlines()) <= 60
